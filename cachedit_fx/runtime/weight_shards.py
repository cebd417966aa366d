"""This rank's shards of sharded parameters, kept for the life of the parameter.

A shard is cut once from the full parameter and reused by every later compile of the same
model (a recompile sees the parameter after its full storage may have been released).
Invariant: a shard is a contiguous copy (``torch.cat`` always allocates) of rank ``rank``'s chunks of ``(dim, segments)``.
"""

from __future__ import annotations

import weakref
from typing import Sequence

import torch

from cachedit_fx.shard_layout import local_pieces

_SHARDS: "weakref.WeakKeyDictionary[torch.Tensor, dict[tuple, torch.Tensor]]" = weakref.WeakKeyDictionary()
_RELEASED: "weakref.WeakSet[torch.Tensor]" = weakref.WeakSet()


def weight_shard(param: torch.Tensor, dim: int, segments: Sequence[int], world: int, rank: int) -> torch.Tensor:
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
