"""Per-request cache contexts of one compiled model.

A ``ModelCache`` is what the graphs compiled for one model share: the compiled options and
one ``ModelCacheState`` per named context. Each context has its own state tensors (streams,
residuals, counters, CFG schedule and statistics), so requests interleaved step by step on
one compiled model (a serving loop) never see each other's residuals. The active context is chosen per
thread / asyncio task with ``cache_context`` (a ``contextvars`` variable); outside any, it is
``"default"`` on the main thread and one of their own for every other thread and asyncio task
(``caller_context``), dropped when that thread or task ends.

Invariants:
  * a context is created lazily, from the compiled options, at its first use; options given
    to ``refresh`` before the model was compiled are applied when its context is created;
  * two callers share a context only when they name it: concurrent threads or tasks without
    ``cache_context`` never mix their generations;
  * at most ``MAX_CONTEXTS`` contexts per model; reading statistics never creates one;
  * binding a new graph (a recompile) rebinds every context (``ModelCacheState.rebind``);
  * choosing the context costs a few ``ContextVar.get`` calls and one dict lookup per call.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import threading
import weakref
from typing import Any, Optional

from cachedit_fx.config import DBCacheConfig, check_refresh_changes
from cachedit_fx.runtime.calibration import Calibrator
from cachedit_fx.runtime.dbcache_step import check_stream_name
from cachedit_fx.runtime.stats import CacheSummary, GenerationStats
from cachedit_fx.runtime.state import ChainShape, ModelCacheState

log = logging.getLogger("cachedit_fx")

DEFAULT_CONTEXT = "default"
MAX_GRAPH_RECORDS = 16
MAX_CONTEXTS = 64
"""Open contexts kept per model; the least recently used beyond it is dropped."""
CALLER_PREFIX = "caller-"
ONE_CALL_CALLERS_WARNING = 3
"""Caller contexts ended after a single call each before the model warns that nothing caches."""

_ACTIVE: contextvars.ContextVar[dict[int, str]] = contextvars.ContextVar("cachedit_fx_active_contexts", default={})
"""id(ModelCache) -> the name of its active context (copied on every change, never mutated)."""


class ModelCache:
    """The compiled options of one model and its named contexts."""

    def __init__(self) -> None:
        _MODEL_CACHES.add(self)
        self.bound: Optional[tuple[DBCacheConfig, ChainShape, Optional[Calibrator]]] = None
        self.contexts: dict[str, ModelCacheState] = {}
        self.pending: dict[str, dict[str, Any]] = {}
        """Context name -> ``refresh`` arguments given before the model was compiled."""
        self.sharding: Optional[Any] = None
        """The ``ShardingReport`` of the latest parallel compile of this model."""
        self.main_list: Optional[str] = None
        """The model's main block list, when the cache was made from the model (``compile``,
        ``cache_context``, ``refresh``): a graph whose chain lacks it is not cached."""
        self.chain_lists: Optional[tuple[str, ...]] = None
        """The block lists of the chain this model caches: one chain per model."""
        self.graphs: list[tuple[bool, str]] = []
        """(cached, chain or fallback reason) of the latest graphs compiled for this model."""
        self.one_call_callers = 0
        """Caller contexts (``caller_context``) that ended after one call."""

    def record_graph(self, cached: bool, detail: str) -> None:
        """One graph of this model was compiled, with the cache or without it (``detail``: the
        chain, or the reason); the last ``MAX_GRAPH_RECORDS`` are kept."""
        self.graphs = [*self.graphs, (cached, detail)][-MAX_GRAPH_RECORDS:]

    @property
    def fallback_reason(self) -> Optional[str]:
        """Why this model runs without cache: the reasons of its graphs, when none of them is
        cached (None if one is, or none was compiled)."""
        if not self.graphs or any(cached for cached, _ in self.graphs):
            return None
        return "; ".join(dict.fromkeys(detail for _, detail in self.graphs))

    def _require_compiled(self) -> None:
        reason = self.fallback_reason
        if reason is not None:
            raise ValueError(f"the model was compiled without cache (plain compilation, no caching): {reason}")
        raise ValueError("the model has not been compiled with backend='cachedit' and run yet")

    def bind(self, config: DBCacheConfig, chain: ChainShape, calibrator: Optional[Calibrator]) -> None:
        """A graph of this model was compiled with these options."""
        self.bound = (config, chain, calibrator)
        for state in self.contexts.values():
            state.rebind(config, chain, calibrator)

    def active_name(self) -> str:
        return _ACTIVE.get().get(id(self)) or caller_context()

    def active(self) -> ModelCacheState:
        """The state of the context the current call runs in (created at its first use)."""
        name = self.active_name()
        state = self.contexts.get(name)
        return state if state is not None else self.context(name)

    def for_call(self) -> ModelCacheState:
        """``active()`` for a call of the compiled model (counted)."""
        state = self.active()
        state.calls_made += 1
        return state

    def context(self, name: str) -> ModelCacheState:
        """The state of context ``name``, created at its first use; beyond ``MAX_CONTEXTS`` the
        least recently used context is dropped (logged): a request that comes back to it starts a
        new generation, never a stale one."""
        if name not in self.contexts:
            if self.bound is None:
                self._require_compiled()
            config, chain, calibrator = self.bound
            state = ModelCacheState(config, chain, calibrator, context=name)
            pending = self.pending.pop(name, None)
            if pending is not None:
                state.refresh(**pending)
            self.contexts[name] = state
            while len(self.contexts) > MAX_CONTEXTS:
                oldest = next(iter(self.contexts))
                log.warning("cachedit_fx: more than %d cache contexts are open; dropping the least recently used, "
                            "%r (close contexts when their request ends)", MAX_CONTEXTS, oldest)
                self.drop(oldest)
        else:
            self.contexts[name] = self.contexts.pop(name)
        return self.contexts[name]

    def refresh(self, name: str, num_inference_steps: Optional[int] = None, **config_changes: Any) -> None:
        """Start a new generation in context ``name``; before the first compile, remembered.
        Bad keys or values raise here (``config.check_refresh_changes``), nothing is stored."""
        changes = dict(config_changes)
        if num_inference_steps is not None:
            changes["num_inference_steps"] = num_inference_steps
        if name in self.contexts or self.bound is not None or self.fallback_reason is not None:
            self.context(name).refresh(**changes)
            return
        merged = dict(self.pending.get(name, {}), **changes)
        check_refresh_changes(merged)
        self.pending[name] = merged

    def summary(self, name: str, stream: str) -> CacheSummary:
        """Statistics of context ``name``; reading never creates a context (one not used yet
        reports an empty generation)."""
        check_stream_name(stream)
        state = self.contexts.get(name)
        if state is not None:
            return state.summary(stream)
        if self.bound is None:
            self._require_compiled()
        chain = self.bound[1]
        return GenerationStats(chain.num_blocks, chain.Fn + chain.Bn).summary()

    def drop(self, name: str) -> None:
        """Forget context ``name`` and free its buffers. Caller contexts that keep ending after a
        single call (``asyncio.to_thread`` runs each call in a copy of the task's context) are
        warned about once: no generation can span them."""
        state = self.contexts.pop(name, None)
        self.pending.pop(name, None)
        if state is None or not name.startswith(CALLER_PREFIX) or state.calls_made != 1:
            return
        self.one_call_callers += 1
        if self.one_call_callers == ONE_CALL_CALLERS_WARNING:
            log.warning(
                "cachedit_fx: %d calls each ran in a cache context of their own that ended with the call, so no "
                "step could reuse a cached residual. asyncio.to_thread and loop.run_in_executor run every call in a "
                "fresh copy of the task's context: enter `with cachedit_fx.cache_context(model, name):` in the task "
                "around its steps (the copies carry it), or call the model from the task itself",
                self.one_call_callers)


class _Caller:
    """Token of one thread or asyncio task that called without a ``cache_context``; when the
    thread or task ends it is collected and its context dropped from every model."""

    def __init__(self) -> None:
        self.name = f"{CALLER_PREFIX}{next(_CALLER_IDS)}"
        weakref.finalize(self, _drop_everywhere, self.name)


_CALLER: contextvars.ContextVar[Optional[_Caller]] = contextvars.ContextVar("cachedit_fx_caller", default=None)
_CALLER_IDS = itertools.count(1)
_MODEL_CACHES: "weakref.WeakSet[ModelCache]" = weakref.WeakSet()


def caller_context() -> str:
    """The context of a call outside any ``cache_context``: ``"default"`` on the main thread
    outside asyncio tasks, else one of the calling thread's or task's own, so concurrent callers
    never share cache state by accident."""
    if threading.current_thread() is threading.main_thread() and _current_task() is None:
        return DEFAULT_CONTEXT
    caller = _CALLER.get()
    if caller is None:
        caller = _Caller()
        _CALLER.set(caller)
    return caller.name


def _current_task() -> Optional[object]:
    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _drop_everywhere(name: str) -> None:
    for cache in list(_MODEL_CACHES):
        cache.drop(name)


class CacheContext:
    """Handle of one named context of one or more models (a pipeline's transformers).
    ``with handle:`` makes it their active context for the calls inside (re-entrant,
    nestable, per thread/task); ``close()`` frees its buffers."""

    def __init__(self, caches: list[ModelCache], name: str) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a cache context needs a non-empty string name, got {name!r}")
        self.caches = caches
        self.name = name
        self._tokens: list[contextvars.Token] = []

    def __enter__(self) -> "CacheContext":
        active = dict(_ACTIVE.get())
        active.update((id(cache), self.name) for cache in self.caches)
        self._tokens.append(_ACTIVE.set(active))
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE.reset(self._tokens.pop())

    def refresh(self, num_inference_steps: Optional[int] = None, **config_changes: Any) -> None:
        for cache in self.caches:
            cache.refresh(self.name, num_inference_steps, **config_changes)

    def summary(self, stream: str = "default") -> CacheSummary:
        """Statistics of this context (for a handle of one model; else use
        ``cachedit_fx.summary(model, context=name)``)."""
        if len(self.caches) != 1:
            raise ValueError(f"context {self.name!r} spans {len(self.caches)} models; "
                             "call cachedit_fx.summary(model, context=name) for one of them")
        return self.caches[0].summary(self.name, stream)

    def close(self) -> None:
        for cache in self.caches:
            cache.drop(self.name)
