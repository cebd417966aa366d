"""``CacheSelector``: the first call of every rewritten program; picks the cache state the
call runs against from the model parameter it receives, not from the model it was compiled
for.

Dynamo lifts parameters as graph inputs, so it may serve a second instance of the same
model class (Wan 2.2's two experts, compiled with equal options) with the graph compiled
for the first one. Selecting by the parameter passed at call time keeps every instance on
its own cache: the one registered under that parameter, else a new one bound to this
graph's options. When another compile of the same module bound other options since (two
``torch.compile`` wrappers of one module), the cache is bound back to this graph's options,
which restarts every context's generation: each compile keeps its own options and no
residual crosses from one to the other. Then the active ``cache_context`` is returned.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch

from cachedit_fx.config import DBCacheConfig
from cachedit_fx.runtime.arithmetic import CacheArithmetic
from cachedit_fx.runtime.histories import Calibrator
from cachedit_fx.runtime.registry import cache_for_params, cache_of_param
from cachedit_fx.runtime.state import ModelCacheState
from cachedit_fx.runtime.stream_state import ChainShape

log = logging.getLogger("cachedit_fx")


class CacheSelector(torch.nn.Module):
    """``forward(anchor)`` -> the active ``ModelCacheState`` of the model owning ``anchor``."""

    def __init__(self, config: DBCacheConfig, chain: ChainShape, arithmetic: CacheArithmetic,
                 calibrator: Optional[Calibrator]) -> None:
        super().__init__()
        self.binding = (config, chain, arithmetic, calibrator)

    def forward(self, anchor: torch.Tensor) -> ModelCacheState:
        refuse_gradients((anchor,))
        cache = cache_of_param(anchor)
        if cache is None:
            cache = cache_for_params([anchor])
        if cache.bound is None:
            cache.bind(*self.binding)
        elif not same_binding(cache.bound, self.binding):
            log.warning("cachedit: the model was compiled again with other options; this compiled graph runs "
                        "with its own (every context starts a new generation)")
            cache.bind(*self.binding)
        return cache.for_call()


def refuse_gradients(tensors: Sequence[object]) -> None:
    """Raise when autograd is on and a tensor among ``tensors`` requires grad: the cache runs
    its pieces without autograd, so a gradient would be dropped silently."""
    if torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad for t in tensors):
        raise RuntimeError(
            "cachedit_fx caches for inference only: gradients cannot flow through skipped blocks, and this call "
            "needs them (autograd is on and a weight or an input requires grad). Call the compiled model under "
            "torch.no_grad() or torch.inference_mode() (diffusers pipelines do), freeze it with "
            "model.requires_grad_(False) and pass inputs that do not require grad")


def same_binding(a: tuple, b: tuple) -> bool:
    """Two bindings ``(config, chain, arithmetic, calibrator)`` give the same caching (the
    arithmetic objects may differ; their kind may not)."""
    return a[0] == b[0] and a[1] == b[1] and a[3] == b[3] and type(a[2]) is type(b[2])
