"""Find the ``ModelCache`` of a model from the model object or from a compiled graph.

Dynamo hands the backend the model's parameters, not the module, so a cache is registered
under every parameter of its model (held weakly) and found by identity from
``model.parameters()`` or a graph's lifted parameters. So every graph Dynamo compiles for one
model shares one cache, and a cache created before the first compile is the one bound to it.
"""

from __future__ import annotations

import weakref
from typing import Iterable, Optional

import torch

from cachedit_fx.runtime.contexts import ModelCache

_CACHES: dict[int, tuple[weakref.ref, ModelCache]] = {}


def _register(params: Iterable[torch.Tensor], cache: ModelCache) -> None:
    """Register ``cache`` under those of ``params`` that have none yet."""
    for param in params:
        if cache_of_param(param) is None:
            key = id(param)
            _CACHES[key] = (weakref.ref(param, lambda _, key=key, caches=_CACHES: caches.pop(key, None)), cache)


def cache_of_param(param: torch.Tensor) -> Optional[ModelCache]:
    """The cache registered under ``param``, if any."""
    entry = _CACHES.get(id(param))
    return entry[1] if entry is not None and entry[0]() is param else None


def cache_for_params(params: list[torch.Tensor]) -> ModelCache:
    """The cache of the model owning ``params`` (a graph's lifted parameters), created and
    registered under them if none of them has one."""
    cache = next((c for c in map(cache_of_param, params) if c is not None), None) or ModelCache()
    _register(params, cache)
    return cache


def cache_for_model(model: torch.nn.Module, create: bool = False) -> ModelCache:
    """The cache of ``model`` (the compiled wrapper or the original module): where graph breaks
    gave its graphs disjoint parameters and so several caches, the one that caches a chain.
    With ``create``, the model's parameters without a cache are registered under it (a new cache
    if none has one), and it learns the model's main block list."""
    module = getattr(model, "_orig_mod", model)
    params = list(module.parameters())
    found = [c for c in map(cache_of_param, params) if c is not None]
    cache = next((c for c in found if c.bound is not None), found[0] if found else None)
    if not create:
        if cache is None:
            raise ValueError(f"{type(module).__name__} has no cachedit state: compile it with backend='cachedit' "
                             "and run it first")
        return cache
    if not params:
        raise ValueError(f"{type(module).__name__} has no parameters, so it cannot hold a cachedit cache")
    cache = cache or ModelCache()
    _register(params, cache)
    cache.main_list = main_block_list(module)
    return cache


def main_block_list(module: torch.nn.Module) -> Optional[str]:
    """Path of the model's block list that holds the most parameters (lists inside another
    block list's members not counted), or None. A block list, as ``passes/find_block_chain.py``
    reads the graph: a ``ModuleList`` of two or more modules of one class, or of one module with
    submodules of its own (one block: FLUX with one double-stream block)."""
    best: tuple[int, str] | None = None
    inside: list[str] = []
    for path, child in module.named_modules():
        if any(path.startswith(prefix) for prefix in inside):
            continue
        if type(child) is torch.nn.ModuleList and len(child) >= 1:
            classes = [type(m) for m in child]
            if max(classes.count(c) for c in classes) >= 2 or (len(child) == 1 and any(True for _ in child[0].children())):
                inside.append(f"{path}.")
                size = sum(p.numel() for p in child.parameters())
                if best is None or size > best[0]:
                    best = (size, path)
    return best[1] if best is not None else None


def forget_model(model: torch.nn.Module) -> None:
    """Unregister ``model``'s cache (``cachedit_fx.disable``)."""
    module = getattr(model, "_orig_mod", model)
    for param in module.parameters():
        if cache_of_param(param) is not None:
            del _CACHES[id(param)]
