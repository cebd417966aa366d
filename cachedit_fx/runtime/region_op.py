"""A region of the program compiled apart (regional compilation), called from the program as a
custom op, so the compiler that traces the program sees one opaque call in the branch.

The op ``cachedit_fx_regions::region_<key>`` takes the region's tensor inputs (a tensor
subclass as its inner tensors, ``CondOperands``) and its integer (or symbolic size) inputs and returns the region's outputs; its real implementation runs the
region compiled block by block, its fake implementation runs the region's graph on fake
tensors (shapes, dtypes, symbolic sizes). ``key`` is a digest of the region's graph, so equal
regions share an op and Inductor's caches never hand one region's code to another.

Invariants: the op's outputs are fresh, contiguous tensors (an output sharing storage with an
input or another output, or not contiguous, is copied), in the real and the fake implementation alike; the op mutates
nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Hashable, Optional, Sequence

import torch

from cachedit_fx.runtime.cond_operands import CondOperands

NAMESPACE = "cachedit_fx_regions"
_REGIONS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {}
"""op name -> (the region's graph, the region compiled block by block): the latest of each."""
_LAYOUTS: dict[str, CondOperands] = {}
"""op name -> how its tensor arguments were flattened (the latest call; equal for every call of
one region, whose inputs' types are part of its key)."""
_FAKE_OUTPUTS: dict[str, dict[Hashable, list[tuple[Any, ...]]]] = {}
"""op name -> input metadata (``_static_key``) -> its outputs' shapes, strides, dtypes and
devices: a region is traced on fake tensors once per input metadata, not at every trace of the
program (a deep model's program traces each region op several times)."""
_ALIASED: dict[str, tuple[bool, ...]] = {}
"""op name -> which outputs of its compiled region share storage with an input or an earlier
output, found on its first real call: a compiled graph returns a view always or never, since
its operands are distinct tensors (``CondOperands``). Contiguity is checked at every call."""


def region_key(signature: Hashable) -> str:
    """A digest of ``signature`` that is the same in every process (functions by their
    qualified names, not their addresses), so Inductor's on-disk caches serve a later process."""
    return hashlib.sha256(_stable(signature).encode()).hexdigest()[:20]


def _stable(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ",".join(_stable(v) for v in value) + ")"
    if callable(value) and hasattr(value, "__qualname__"):
        return f"{getattr(value, '__module__', None)}.{value.__qualname__}"
    return repr(value)


class RegionCall(torch.nn.Module):
    """``forward(*inputs)`` -> the region's outputs (a tuple), through its custom op; ``inputs``:
    tensors and integers in the region's order."""

    def __init__(self, graph: Callable[..., Any], compiled: Callable[..., Any], key: str) -> None:
        super().__init__()
        self.name = f"region_{key}"
        _REGIONS[self.name] = (graph, compiled)
        _ALIASED.pop(self.name, None)
        _FAKE_OUTPUTS.pop(self.name, None)
        if not hasattr(getattr(torch.ops, NAMESPACE, None), self.name):
            _define(self.name)
        self.op = getattr(getattr(torch.ops, NAMESPACE), self.name)

    def forward(self, *inputs: Any) -> tuple[torch.Tensor, ...]:
        operands = CondOperands([v for v in inputs if isinstance(v, torch.Tensor)])
        _LAYOUTS[self.name] = operands
        sizes = [v for v in inputs if not isinstance(v, torch.Tensor)]
        kinds = "".join("t" if isinstance(v, torch.Tensor) else "s" for v in inputs)
        return tuple(self.op(operands.operands, sizes, kinds))


def _define(name: str) -> None:
    @torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=())
    def run(tensors: list[torch.Tensor], sizes: list[int], kinds: str) -> list[torch.Tensor]:
        outputs = _REGIONS[name][1](*_arguments(name, tensors, sizes, kinds))
        aliased = _ALIASED.get(name)
        if aliased is None:
            aliased = _ALIASED[name] = tuple(_aliases(outputs, tensors))
        return _fresh(outputs, aliased)

    @run.register_fake
    def _(tensors: list[torch.Tensor], sizes: list[int], kinds: str) -> list[torch.Tensor]:
        key = _static_key(tensors, sizes)
        known = _FAKE_OUTPUTS.get(name, {}).get(key) if key is not None else None
        if known is not None:
            return [tensors[0].new_empty_strided(shape, stride, dtype=dtype, device=device)
                    for shape, stride, dtype, device in known]
        outputs = _REGIONS[name][0](*_arguments(name, tensors, sizes, kinds))
        outputs = _fresh(outputs, _aliases(outputs, tensors))
        if key is not None:
            _FAKE_OUTPUTS.setdefault(name, {})[key] = [
                (tuple(t.shape), t.stride(), t.dtype, t.device) for t in outputs]
        return outputs


def _static_key(tensors: Sequence[torch.Tensor], sizes: Sequence[Any]) -> Optional[Hashable]:
    """The metadata a region's fake outputs depend on, when every size and stride is an
    integer (a symbolic shape is traced every time: its outputs' symbols are the call's own)."""
    key = (tuple((tuple(t.shape), t.stride(), t.dtype, t.device) for t in tensors), tuple(sizes))
    plain = all(isinstance(d, int) for t in tensors for d in (*t.shape, *t.stride()))
    return key if plain and all(isinstance(s, int) for s in sizes) else None


def _arguments(name: str, tensors: Sequence[torch.Tensor], sizes: Sequence[int], kinds: str) -> list[Any]:
    """The region's arguments: tensor subclasses (quantized weights) rebuilt from their inner
    tensors as ``RegionCall`` flattened them, sizes in place."""
    if not sizes:
        return _LAYOUTS[name].arguments(tensors)
    tensor_values, size_values = iter(_LAYOUTS[name].arguments(tensors)), iter(sizes)
    return [next(tensor_values) if kind == "t" else next(size_values) for kind in kinds]


def _aliases(outputs: Sequence[torch.Tensor], inputs: Sequence[torch.Tensor]) -> list[bool]:
    """For each output: whether it shares storage with an input or an earlier output (slices of
    one joined tensor)."""
    return [any(torch._C._is_alias_of(value, t) for t in (*inputs, *outputs[:k])) for k, value in enumerate(outputs)]


def _fresh(outputs: Sequence[torch.Tensor], aliased: Sequence[bool]) -> list[torch.Tensor]:
    """``outputs`` with each one that is aliased (``_aliases``) or not contiguous replaced by a
    contiguous copy."""
    return [value.clone(memory_format=torch.contiguous_format) if alias or not value.is_contiguous() else value
            for value, alias in zip(outputs, aliased)]
