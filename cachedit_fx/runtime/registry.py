"""Find the cache state of a model from the model object.

Dynamo hands the backend the model's parameters as graph inputs but not the module, so a
state is keyed by its model's first lifted parameter (held weakly) and found again by
identity among ``model.parameters()``. Every graph Dynamo compiles for one model (e.g.
after a shape change) therefore shares one state.
"""

from __future__ import annotations

import weakref
from typing import Optional

import torch

from cachedit_fx.runtime.state import ModelCacheState

_STATES: dict[int, tuple[weakref.ref, ModelCacheState]] = {}


def register_state(anchor: torch.Tensor, state: ModelCacheState) -> None:
    key = id(anchor)
    _STATES[key] = (weakref.ref(anchor, lambda _: _STATES.pop(key, None)), state)


def state_for_anchor(anchor: torch.Tensor) -> Optional[ModelCacheState]:
    entry = _STATES.get(id(anchor))
    return entry[1] if entry is not None and entry[0]() is anchor else None


def state_for_model(model: torch.nn.Module) -> ModelCacheState:
    """The state of ``model`` (the compiled wrapper or the original module)."""
    module = getattr(model, "_orig_mod", model)
    for param in module.parameters():
        state = state_for_anchor(param)
        if state is not None:
            return state
    raise ValueError(
        f"{type(module).__name__} has no cachedit state: compile it with backend='cachedit' and run it first"
    )
