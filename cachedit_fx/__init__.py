"""cachedit_fx: DBCache for Diffusion Transformers as a ``torch.compile`` backend.

    import torch, cachedit_fx
    model = torch.compile(model, backend="cachedit", options={"Fn_compute_blocks": 1})
"""

from __future__ import annotations

from typing import Any, Optional

from cachedit_fx.backend import CacheditFallbackWarning, cachedit_backend
from cachedit_fx.block_regions import trace_blocks_once
from cachedit_fx.runtime.weight_fetch import fetched_bytes
from cachedit_fx.stored_weights import adopt_stored_weights
from cachedit_fx.config import (
    BackendSettings,
    DBCacheConfig,
    DBPruneConfig,
    FoCaCalibratorConfig,
    TaylorSeerCalibratorConfig,
    parse_options,
)
from cachedit_fx.export import RESET_INPUT, cache_state, export, exported_summary, package
from cachedit_fx.inspection import InspectReport, inspect_model as inspect
from cachedit_fx.parallelism import ParallelismConfig
from cachedit_fx.passes.errors import ParallelismError, UnsupportedGraph
from cachedit_fx.passes.shard_propagation import ShardingReport
from cachedit_fx.passes.pass_list import add_pass, build_pass_list
from cachedit_fx.pipelines import cached_modules, compile, disable
from cachedit_fx.quantization import quantize
from cachedit_fx.runtime.contexts import CacheContext, ModelCache
from cachedit_fx.runtime.registry import cache_for_model
from cachedit_fx.runtime.stats import CacheSummary
from cachedit_fx.runtime.step_masks import steps_mask

__all__ = [
    "BackendSettings", "CacheContext", "ParallelismConfig", "ParallelismError", "ShardingReport", "sharding_report", "CacheSummary", "InspectReport", "compile", "disable", "inspect", "quantize", "CacheditFallbackWarning", "DBCacheConfig", "DBPruneConfig", "UnsupportedGraph",
    "FoCaCalibratorConfig", "TaylorSeerCalibratorConfig", "cachedit_backend", "cache_context", "parse_options", "refresh", "steps_mask", "summary",
    "trace_blocks_once", "adopt_stored_weights", "fetched_bytes", "export", "package", "cache_state", "RESET_INPUT", "add_pass", "build_pass_list",
]

BACKEND_NAME = "cachedit"


def summary(model: Any, stream: str = "default", context: Optional[str] = None) -> CacheSummary:
    """Cache statistics of the latest generation of ``model`` (a compiled transformer, its
    original module, a pipeline with one transformer, or an exported program: the
    ``ExportedProgram``, its ``module()``, or the ``cache_state`` a package runs on).

    ``stream``: "default", or "uncond" for the unconditional calls of a separate-CFG run;
    ``context``: a ``cache_context`` name (None: the active one, else "default")."""
    if _is_exported(model):
        return exported_summary(model, stream)
    cache = _only_cache(model, " (e.g. cachedit_fx.summary(pipe.transformer_2))")
    return cache.summary(context or cache.active_name(), stream)


def _only_cache(model: Any, example: str = "") -> ModelCache:
    """The cache of ``model``'s one transformer (refused for a pipeline with several)."""
    modules = cached_modules(model)
    if len(modules) != 1:
        raise ValueError(f"{type(model).__name__} has {len(modules)} transformers; ask for one of them{example}")
    return cache_for_model(modules[0])


def _is_exported(model: Any) -> bool:
    import torch

    from cachedit_fx.export import STATE_PREFIX

    if isinstance(model, (torch.export.ExportedProgram, dict)):
        return True
    return isinstance(model, torch.nn.Module) and any(
        name.startswith(STATE_PREFIX) for name, _ in model.named_buffers())


def sharding_report(model: Any) -> Optional[ShardingReport]:
    """What the tensor- or context-parallel pass did in the latest parallel compile of
    ``model`` (sharded linears, collectives, weight bytes per rank); None if it ran unsharded."""
    return _only_cache(model).sharding


def refresh(model: Any, num_inference_steps: Optional[int] = None, context: Optional[str] = None,
            **config: Any) -> None:
    """Start a new generation now in the active (or the named) context of ``model`` (a
    transformer, or every transformer of a pipeline), optionally changing
    ``num_inference_steps`` or cache options. Before the first call, the options are
    remembered and applied when the model is compiled."""
    for module in cached_modules(model):
        cache = cache_for_model(module, create=True)
        cache.refresh(context or cache.active_name(), num_inference_steps, **config)


def cache_context(model: Any, name: str) -> CacheContext:
    """Handle of the named cache context of ``model`` (a transformer, or every transformer of
    a pipeline): ``with cache_context(pipe, "req-1"):`` runs the calls inside against that
    context's own buffers, counters and statistics (per thread / asyncio task). Re-enter it
    for every step of the request; ``close()`` frees it."""
    return CacheContext([cache_for_model(m, create=True) for m in cached_modules(model)], name)


def _register() -> None:
    """Register the backend unless torch already has it, or is loading it through the
    ``torch_dynamo_backends`` entry point (then torch registers it itself)."""
    from torch._dynamo.backends import registry

    if BACKEND_NAME in registry._COMPILER_FNS or registry._BACKENDS.get(BACKEND_NAME) is not None:
        return
    registry.register_backend(cachedit_backend, name=BACKEND_NAME)


_register()
