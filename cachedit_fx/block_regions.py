"""Trace each kind of repeated block once (``trace_blocks_once``), by swapping same-named
subclasses onto live objects (``same_named_subclass``, also used by ``cachedit_fx.compile``).

Invariants:
  * repeated blocks are the members of every ``nn.ModuleList`` of at least two modules of one
    class that is not inside another repeated block;
  * a marked block's class is a same-named subclass whose ``forward`` is a
    ``torch.compiler.nested_compile_region`` (one per block class): Dynamo traces one block of
    each kind, and the backend's ``inline_block_regions`` pass inlines the regions again;
  * a swapped object keeps its identity and ``isinstance``, pickles as its original class, and
    ``copy.deepcopy`` keeps the swap; ``restore_block_classes`` undoes the marking;
  * outside ``torch.compile`` a marked block runs the original forward unchanged; traced, its
    tensor inputs and outputs pass through ``cachedit_fx::region_copy`` (a region may neither
    take nor return aliasing tensors), copies the inline pass drops;
  * a block whose instance overrides ``forward`` (a hook) is left unmarked.
"""

from __future__ import annotations

import copy
import copyreg
import logging
from typing import Any, Callable, Optional, TypeVar

import torch
from torch.utils._pytree import tree_map_only

__all__ = ["find_repeated_blocks", "restore_block_classes", "trace_blocks_once"]

log = logging.getLogger("cachedit_fx")
Model = TypeVar("Model", bound=torch.nn.Module)
REGION_ATTR = "_cachedit_fx_block_region"
MAX_REUSE_ENTRIES = 32
"""Input layouts one block class may be traced for before Dynamo gives up reusing it."""
_SUBCLASSES: dict[tuple[type, str], type] = {}
_ORIGINAL_ATTR = "_cachedit_fx_original_class"


def same_named_subclass(cls: type, role: str, make_namespace: Callable[[], dict[str, Any]],
                        pickled_state: Optional[Callable[[dict[str, Any]], dict[str, Any]]] = None) -> type:
    """The subclass of ``cls`` (same name, module and qualname) adding the attributes
    ``make_namespace()`` returns, made once per ``(cls, role)``. ``pickled_state(state)``
    may rewrite the state that is pickled."""
    key = (cls, role)
    if key not in _SUBCLASSES:

        def __reduce_ex__(self: Any, protocol: int) -> Any:
            swapped = type(self)
            self.__class__ = cls
            try:
                reduced = self.__reduce_ex__(protocol)
            finally:
                self.__class__ = swapped
            if not isinstance(reduced, tuple) or len(reduced) < 2:
                return reduced
            if reduced[0] is copyreg.__newobj__ and reduced[1] == (cls,):
                reduced = (object.__new__, *reduced[1:])  # pickle checks __newobj__'s class against the swap
            if pickled_state is None or len(reduced) < 3:
                return reduced
            return (*reduced[:2], pickled_state(dict(reduced[2] or {})), *reduced[3:])

        def __deepcopy__(self: Any, memo: dict[int, Any]) -> Any:
            swapped = type(self)
            self.__class__ = cls
            try:
                twin = copy.deepcopy(self, memo)
            finally:
                self.__class__ = swapped
            twin.__class__ = swapped
            return twin

        _SUBCLASSES[key] = type(cls.__name__, (cls,), {
            **make_namespace(), "__reduce_ex__": __reduce_ex__, "__deepcopy__": __deepcopy__, _ORIGINAL_ATTR: cls,
            "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__,
        })
    return _SUBCLASSES[key]


def original_class(obj: Any) -> type:
    """The class ``obj`` had before any swap made here (for a module: before ``trace_blocks_once``)."""
    return type(obj).__dict__.get(_ORIGINAL_ATTR, type(obj))


@torch.library.custom_op("cachedit_fx::region_copy", mutates_args=())
def region_copy(value: torch.Tensor) -> torch.Tensor:
    """A copy of ``value`` at a block region's boundary (dropped by ``inline_block_regions``)."""
    return value.clone()


@region_copy.register_fake
def _region_copy_fake(value: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(value)


REGION_COPY = torch.ops.cachedit_fx.region_copy.default


def find_repeated_blocks(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(path, module) of every repeated block of ``model``, in module order."""
    found: list[tuple[str, torch.nn.Module]] = []
    for path, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) < 2:
            continue
        if len({original_class(m) for m in module}) != 1:
            continue
        if any(path.startswith(block_path + ".") for block_path, _ in found):
            continue
        found.extend((f"{path}.{i}" if path else str(i), m) for i, m in enumerate(module))
    return found


def trace_blocks_once(model: Model) -> Model:
    """Mark every repeated block of ``model`` so Dynamo traces each block kind once; returns
    ``model`` (the same object). Idempotent."""
    blocks = find_repeated_blocks(model)
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no repeated blocks (no nn.ModuleList of >= 2 modules "
                         "of one class)")
    marked = 0
    for path, block in blocks:
        if getattr(type(block), REGION_ATTR, False):
            continue
        if "forward" in vars(block):
            log.info("cachedit_fx: %s overrides forward on the instance (a hook?); traced inline", path)
            continue
        block.__class__ = _marked_class(type(block))
        marked += 1
    log.info("cachedit_fx: %d of %d repeated blocks marked to be traced once per kind", marked, len(blocks))
    return model


def restore_block_classes(model: Model) -> Model:
    """Undo ``trace_blocks_once``; returns ``model``."""
    for module in model.modules():
        unmarked = original_class(module)
        if unmarked is not type(module):
            module.__class__ = unmarked
    return model


def _marked_class(cls: type) -> type:
    def namespace() -> dict[str, Any]:
        forward = cls.forward

        def run_block(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            return tree_map_only(torch.Tensor, region_copy, forward(module, *args, **kwargs))

        region: Callable[..., Any] = torch.compiler.nested_compile_region(
            run_block, max_reuse_entries=MAX_REUSE_ENTRIES)

        def marked_forward(module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
            if not torch.compiler.is_compiling():
                return forward(module, *args, **kwargs)
            args, kwargs = tree_map_only(torch.Tensor, region_copy, (args, kwargs))
            return region(module, *args, **kwargs)

        return {"forward": marked_forward, REGION_ATTR: True}

    return same_named_subclass(cls, "trace_blocks_once", namespace)
