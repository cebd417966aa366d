"""The host decision's rewrite: the cache selector, the guarded branch around the middle piece
and, with ``cache_kernels="inductor-fused"``, the diff sums moved into the head piece; for
DBPrune the selector and a guarded branch around every prunable block.

Assumes: the piecewise program from ``partition``. Guarantees: what ``insert_cache_selector``,
``insert_cache_branch`` and ``fuse_diff_into_head`` guarantee, applied in that order.
"""

from __future__ import annotations

import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import compile_handles
from cachedit_fx.passes.fuse_diff_into_head import fuse_diff_into_head
from cachedit_fx.passes.insert_cache_branch import insert_cache_branch
from cachedit_fx.passes.insert_cache_selector import insert_cache_selector
from cachedit_fx.passes.insert_prune_branches import insert_prune_branches
from cachedit_fx.passes.pass_manager import Pass, PassManager


def host_step_passes(settings: BackendSettings) -> list[Pass]:
    passes: list[Pass] = [insert_cache_selector, insert_cache_branch]
    if settings.cache_kernels == "inductor-fused":
        passes.append(fuse_diff_into_head)
    return passes


def host_prune_passes() -> list[Pass]:
    return [insert_cache_selector, insert_prune_branches]


def insert_host_prune_branches(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    """``host_prune_passes`` applied to ``parent`` (DBPrune's host decision)."""
    return PassManager(host_prune_passes()).run(parent, settings, compile_handles(parent).dump)


def insert_host_step(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    """``host_step_passes`` applied to ``parent`` (each dumped as the compile's own passes are)."""
    return PassManager(host_step_passes(settings)).run(parent, settings, compile_handles(parent).dump)
