"""cachedit_fx: DBCache for Diffusion Transformers as a ``torch.compile`` backend.

    import torch, cachedit_fx
    model = torch.compile(model, backend="cachedit", options={"Fn_compute_blocks": 1})
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from cachedit_fx.backend import CacheditFallbackWarning, cachedit_backend
from cachedit_fx.config import (
    BackendSettings,
    DBCacheConfig,
    DBPruneConfig,
    FoCaCalibratorConfig,
    TaylorSeerCalibratorConfig,
    parse_options,
)
from cachedit_fx.passes.errors import UnsupportedGraph
from cachedit_fx.runtime.registry import state_for_model
from cachedit_fx.runtime.stats import CacheSummary
from cachedit_fx.runtime.step_masks import steps_mask

__all__ = [
    "BackendSettings", "CacheSummary", "CacheditFallbackWarning", "DBCacheConfig", "DBPruneConfig", "UnsupportedGraph",
    "FoCaCalibratorConfig", "TaylorSeerCalibratorConfig", "cachedit_backend", "parse_options", "refresh", "steps_mask", "summary",
]

BACKEND_NAME = "cachedit"


def summary(model: torch.nn.Module, stream: str = "default") -> CacheSummary:
    """Cache statistics of ``model``'s latest generation (compiled wrapper or original module).

    ``stream``: "default", or "uncond" for the unconditional calls of a separate-CFG run."""
    return state_for_model(model).summary(stream)


def refresh(model: torch.nn.Module, num_inference_steps: Optional[int] = None, **config: Any) -> None:
    """Start a new generation now, optionally changing ``num_inference_steps`` or cache options."""
    state_for_model(model).refresh(num_inference_steps=num_inference_steps, **config)


def _register() -> None:
    """Register the backend unless torch already has it, or is loading it through the
    ``torch_dynamo_backends`` entry point (then torch registers it itself)."""
    from torch._dynamo.backends import registry

    if BACKEND_NAME in registry._COMPILER_FNS or registry._BACKENDS.get(BACKEND_NAME) is not None:
        return
    registry.register_backend(cachedit_backend, name=BACKEND_NAME)


_register()
