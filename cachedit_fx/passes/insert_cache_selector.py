"""Insert the ``CacheSelector`` call that every guarded branch takes its cache state from.

Assumes: a piecewise program from ``partition`` or ``partition_blocks`` and a bound
``ModelCache`` in ``compile_handles(parent).model_cache``.
Guarantees: one node named ``CACHE_STATE`` right after the placeholders, computed from the
first lifted parameter (the anchor) of this call, so a reused graph serves the cache of the
model whose parameters it receives (``runtime/cache_selector.py``).
"""

from __future__ import annotations

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import compile_handles
from cachedit_fx.runtime.cache_selector import CacheSelector

CACHE_STATE = "cachedit_cache_state"


def insert_cache_selector(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    placeholders = [n for n in parent.graph.nodes if n.op == "placeholder"]
    anchor = next(n for n in placeholders if isinstance(getattr(n.meta.get("grapharg"), "example", None),
                                                         torch.nn.Parameter))
    parent.add_submodule("cache_selector", CacheSelector(*compile_handles(parent).model_cache.bound))
    with parent.graph.inserting_after(placeholders[-1]):
        parent.graph.create_node("call_module", "cache_selector", (anchor,), name=CACHE_STATE)
    parent.recompile()
    return parent


def cache_state_node(parent: fx.GraphModule) -> fx.Node:
    """The node ``insert_cache_selector`` added."""
    return next(n for n in parent.graph.nodes if n.name == CACHE_STATE)
