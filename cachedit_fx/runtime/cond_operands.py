"""The operands a ``torch.cond`` branch receives for a list of arguments, and the arguments
rebuilt from them inside the branch. ``torch.cond`` refuses an operand passed twice and tensor
subclasses (torchao's quantized weights): each distinct argument is passed once, a wrapper
subclass as its inner tensors (``__tensor_flatten__``, recursively), rebuilt in the branch.

Invariants: ``arguments(operands)`` returns the original arguments (the same objects for plain
tensors, equal subclasses rebuilt on the same inner tensors); the layout is fixed when the
operands are built, so both branches rebuild the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

import torch
from torch.utils._python_dispatch import is_traceable_wrapper_subclass


@dataclass(frozen=True)
class Rebuilt:
    """A subclass argument: its type, flatten context, outer size and stride, and one entry per
    inner tensor (an operand index, or a nested ``Rebuilt``)."""

    kind: type
    context: Any
    size: tuple[Any, ...]
    stride: tuple[Any, ...]
    inner: tuple[tuple[str, "Slot"], ...]


Slot = Union[int, Rebuilt]


class CondOperands:
    """``operands``: the plain tensors to hand to ``torch.cond``; ``arguments(operands)``: the
    arguments they stand for."""

    def __init__(self, arguments: Sequence[torch.Tensor]) -> None:
        self.operands: list[torch.Tensor] = []
        self._index: dict[int, int] = {}
        self.slots: tuple[Slot, ...] = tuple(self._slot(value) for value in arguments)
        self._identity = self.slots == tuple(range(len(self.operands)))

    def _slot(self, value: torch.Tensor) -> Slot:
        if is_traceable_wrapper_subclass(value):
            names, context = value.__tensor_flatten__()
            inner = tuple((name, self._slot(getattr(value, name))) for name in names)
            return Rebuilt(type(value), context, tuple(value.shape), tuple(value.stride()), inner)
        if id(value) not in self._index:
            self._index[id(value)] = len(self.operands)
            self.operands.append(value)
        return self._index[id(value)]

    def arguments(self, operands: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self._identity:  # distinct plain tensors: the operands are the arguments
            return list(operands)
        return [_rebuild(slot, operands) for slot in self.slots]


def _rebuild(slot: Slot, operands: Sequence[torch.Tensor]) -> torch.Tensor:
    if isinstance(slot, int):
        return operands[slot]
    inner = {name: _rebuild(entry, operands) for name, entry in slot.inner}
    return slot.kind.__tensor_unflatten__(inner, slot.context, slot.size, slot.stride)
