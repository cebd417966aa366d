"""Trace each kind of repeated block once: ``trace_blocks_once(model)``.

Dynamo spends most of a warm compile tracing the forward, and a DiT's forward is mostly its
block chain. Marking every block as a ``torch.compiler.nested_compile_region`` lets Dynamo
trace one block of each kind and stamp the traced region out for the others (one
``invoke_subgraph`` call per block); the backend's first pass, ``inline_block_regions``,
turns the calls back into the graph an unmarked trace gives.

Invariants:
  * repeated blocks are the members of every ``nn.ModuleList`` holding at least two modules,
    all of one class, that is not inside another repeated block; no per-model list;
  * a block is marked by swapping its class for a subclass (same name) whose ``forward`` is
    the region, so ``copy.deepcopy`` and ``state_dict`` are unaffected and
    ``restore_block_classes`` undoes it; one region function per block class;
  * outside ``torch.compile`` a marked block runs the original forward unchanged; while Dynamo
    traces it, its tensor inputs and outputs pass through ``cachedit_fx::region_copy`` (a
    copy: a region may neither take nor return tensors aliasing each other), copies the
    inline pass drops again;
  * a block whose instance overrides ``forward`` (a hook) is left unmarked.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, TypeVar

import torch
from torch.utils._pytree import tree_map_only

from cachedit_fx.class_swap import original_class, same_named_subclass

__all__ = ["find_repeated_blocks", "restore_block_classes", "trace_blocks_once"]

log = logging.getLogger("cachedit_fx")
Model = TypeVar("Model", bound=torch.nn.Module)
REGION_ATTR = "_cachedit_fx_block_region"
MAX_REUSE_ENTRIES = 32
"""Input layouts one block class may be traced for before Dynamo gives up reusing it."""


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
        if len({_unmarked_class(m) for m in module}) != 1:
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
        unmarked = _unmarked_class(module)
        if unmarked is not type(module):
            module.__class__ = unmarked
    return model


def _unmarked_class(module: torch.nn.Module) -> type:
    return original_class(module) if getattr(type(module), REGION_ATTR, False) else type(module)


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
