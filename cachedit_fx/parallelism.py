"""``ParallelismConfig``: tensor- or context-parallel execution over ``torch.distributed``.

``ParallelRun`` binds a config to the live process group when a graph is compiled: the
rank, the group's name for the functional collectives in the graph, and the all-reduce that
makes every rank's cache decision identical. ``weight_shard`` keeps this rank's parameter
shards for the life of each parameter: every later compile of the model reuses them (it may
see the parameter after its full storage was released).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from cachedit_fx.passes.errors import ParallelismError
from cachedit_fx.shard_layout import local_pieces


@dataclass(frozen=True)
class ParallelismConfig:
    """``tp_size``: ranks sharing each block's attention heads and MLP (tensor parallel);
    ``ulysses_size``: ranks sharing the sequence (Ulysses context parallel). One of them may
    exceed 1, and it must equal the world size. ``release_full_weights``: after the first
    compile, free the storage of parameters that every rank now holds only as shards (the
    module then cannot run outside the compiled program)."""

    tp_size: int = 1
    ulysses_size: int = 1
    release_full_weights: bool = True

    def __post_init__(self) -> None:
        for name in ("tp_size", "ulysses_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if not isinstance(self.release_full_weights, bool):
            raise ValueError(f"release_full_weights must be a bool, got {self.release_full_weights!r}")
        if self.tp_size > 1 and self.ulysses_size > 1:
            raise ValueError("tp_size and ulysses_size > 1 together (a 2-D mesh) are not supported yet; use one")

    @property
    def enabled(self) -> bool:
        return self.tp_size > 1 or self.ulysses_size > 1

    @property
    def kind(self) -> str:
        return "tp" if self.tp_size > 1 else "cp"

    @property
    def size(self) -> int:
        return max(self.tp_size, self.ulysses_size)


@dataclass
class ParallelRun:
    """One compile's binding of a ``ParallelismConfig`` to the default process group."""

    config: ParallelismConfig
    rank: int
    world: int
    group_name: str
    inputs: dict[str, Any] = field(default_factory=dict)
    """Placeholder name -> the real tensor Dynamo passed (parameters are sharded from these)."""
    shard_inputs: list[torch.Tensor] = field(default_factory=list)
    """Weight shards the rewritten graph takes after Dynamo's inputs, in placeholder order."""
    releasable: list[torch.Tensor] = field(default_factory=list)
    """Parameters the rewritten graph no longer reads (only their shards)."""


FOREIGN_PARALLELISM_REMEDY = (
    "cachedit_fx shards the compiled graph itself and keeps every rank's cache decisions equal: compile the "
    "unparallelised transformer with parallelism_config=cachedit_fx.ParallelismConfig(ulysses_size=N) (or "
    "tp_size=N) instead")


def check_no_foreign_parallelism(module: Optional[torch.nn.Module] = None, graph: Any = None,
                                 example_inputs: Any = ()) -> None:
    """``ParallelismError`` for a model parallelised by something else (diffusers'
    ``enable_parallelism`` or a ``parallel_config`` load, DTensor weights, collectives in the
    graph): ranks deciding apart could hand on different residuals or wait on each other."""
    if module is not None and getattr(module, "_parallel_config", None) is not None:
        raise ParallelismError(f"{type(module).__name__} was parallelised by diffusers (enable_parallelism or "
                               f"from_pretrained(parallel_config=...)); {FOREIGN_PARALLELISM_REMEDY}")
    from torch.distributed.tensor import DTensor

    if any(isinstance(value, DTensor) for value in example_inputs):
        raise ParallelismError(f"the graph takes DTensor weights or inputs; {FOREIGN_PARALLELISM_REMEDY}")
    collectives = [n for n in (graph.nodes if graph is not None else ()) if n.op == "call_function" and (
        str(n.target).startswith(("_c10d_functional.", "c10d.", "_dtensor."))
        or str(getattr(n.target, "__module__", "")).startswith("torch.distributed"))]
    if collectives:
        raise ParallelismError(f"the graph holds collectives ({collectives[0].target}) of another parallelism; "
                               f"{FOREIGN_PARALLELISM_REMEDY}")


def bind_parallel_run(config: Optional[ParallelismConfig]) -> Optional[ParallelRun]:
    """``None`` when the config asks for no parallelism; else the run on the default group."""
    if config is None or not config.enabled:
        return None
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ParallelismError(f"{config.kind} size {config.size} needs torch.distributed initialised "
                               "(run under torchrun and call torch.distributed.init_process_group)")
    world = dist.get_world_size()
    if world != config.size:
        raise ParallelismError(f"{'tp_size' if config.kind == 'tp' else 'ulysses_size'}={config.size} "
                               f"must equal the world size {world}")
    return ParallelRun(config, dist.get_rank(), world, dist.group.WORLD.group_name)


_SHARDS: "weakref.WeakKeyDictionary[torch.Tensor, dict[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()
_RELEASED: "weakref.WeakSet[torch.Tensor]" = weakref.WeakSet()


def weight_shard(param: torch.Tensor, dim: int, segments: Sequence[int], world: int, rank: int) -> torch.Tensor:
    """Rank ``rank``'s chunks of ``(dim, segments)`` of ``param``, as one contiguous copy cut once."""
    key = (dim, tuple(segments), world, rank)
    shards = _SHARDS.setdefault(param, {})
    if key not in shards:
        if param in _RELEASED:
            raise RuntimeError("a parameter whose full storage was released is asked for a new shard layout "
                               f"{key}; compile with release_full_weights=False")
        with torch.no_grad():
            parts = [param.detach().narrow(dim, start, size) for start, size in local_pieces(segments, world, rank)]
            shards[key] = torch.cat(parts, dim)
    return shards[key]


def release_full_storage(param: torch.Tensor) -> int:
    """Free ``param``'s storage (its shape and strides stay, so Dynamo's guards still hold);
    returns the bytes freed."""
    if param in _RELEASED:
        return 0
    freed = param.untyped_storage().nbytes()
    param.untyped_storage().resize_(0)
    _RELEASED.add(param)
    return freed
