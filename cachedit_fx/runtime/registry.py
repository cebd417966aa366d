"""Find the ``ModelCache`` of a model from the model object or from a compiled graph.

Dynamo hands the backend the model's parameters as graph inputs but not the module, so a
cache is registered under every parameter of its model (held weakly) and found again by
identity: from ``model.parameters()`` (public API) or from the lifted parameters among a
graph's example inputs (backend). Every graph Dynamo compiles for one model (e.g. after a
shape change) therefore shares one cache, and a cache created before the first compile
(``cache_context``, ``cachedit_fx.compile``) is the one the backend binds.
"""

from __future__ import annotations

import weakref
from typing import Iterable, Optional

import torch

from cachedit_fx.runtime.contexts import ModelCache

_CACHES: dict[int, tuple[weakref.ref, ModelCache]] = {}


def _register(params: Iterable[torch.Tensor], cache: ModelCache) -> None:
    for param in params:
        key = id(param)
        _CACHES[key] = (weakref.ref(param, lambda _, key=key, caches=_CACHES: caches.pop(key, None)), cache)


def cache_of_param(param: torch.Tensor) -> Optional[ModelCache]:
    """The cache registered under ``param``, if any."""
    entry = _CACHES.get(id(param))
    return entry[1] if entry is not None and entry[0]() is param else None


def cache_for_params(params: list[torch.Tensor]) -> ModelCache:
    """The cache of the model owning ``params`` (a graph's lifted parameters), created and
    registered under them if none of them has one."""
    for param in params:
        cache = cache_of_param(param)
        if cache is not None:
            _register([p for p in params if cache_of_param(p) is None], cache)
            return cache
    cache = ModelCache()
    _register(params, cache)
    return cache


def cache_for_model(model: torch.nn.Module, create: bool = False) -> ModelCache:
    """The cache of ``model`` (the compiled wrapper or the original module). With ``create``,
    a new cache is registered under its parameters if it has none yet."""
    module = getattr(model, "_orig_mod", model)
    params = list(module.parameters())
    for param in params:
        cache = cache_of_param(param)
        if cache is not None:
            return cache
    if create:
        if not params:
            raise ValueError(f"{type(module).__name__} has no parameters, so it cannot hold a cachedit cache")
        cache = ModelCache()
        _register(params, cache)
        return cache
    raise ValueError(
        f"{type(module).__name__} has no cachedit state: compile it with backend='cachedit' and run it first"
    )


def forget_model(model: torch.nn.Module) -> None:
    """Unregister ``model``'s cache (``cachedit_fx.disable``)."""
    module = getattr(model, "_orig_mod", model)
    for param in module.parameters():
        if cache_of_param(param) is not None:
            del _CACHES[id(param)]
