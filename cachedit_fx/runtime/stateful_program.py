"""The callable the backend returns: it picks the cache context's state tensors for this
graph and calls the compiled program with them.

Per call on the host: the grad check, the model's cache found by the anchor parameter the call
receives, the active context, one dict lookup and, for a dynamic-shape graph, the call's sizes
(state tensors of other sizes are made anew: a new generation). No tensor is read (a GPU never
waits for the host) unless INFO logging is on (the generation-done line). A call that raises
requests a new generation of that state.

The state follows the parameter passed at call time, not the model the graph was compiled for:
Dynamo may serve a second instance of the model class (Wan 2.2's two experts) with the first
one's graph, and each instance keeps its own cache. A cache another compile bound to other
options (two ``torch.compile`` wrappers of one module) is bound back to this graph's, which
restarts every context's generation: no residual crosses from one compile's options to another's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch

from cachedit_fx.runtime.dbcache_step import StepLayout
from cachedit_fx.runtime.registry import cache_for_params
from cachedit_fx.runtime.state import ModelCacheState

log = logging.getLogger("cachedit_fx")

SymbolSource = tuple[Any, int, Optional[int]]
"""Where a size symbol of a dynamic-shape graph is read from a call's arguments: (symbol,
argument index, dimension, or None for an integer argument)."""


@dataclass(frozen=True)
class StepProgram:
    """What the shim needs of a compiled program holding the in-graph step: the compiled
    callable (Dynamo's inputs, then the state tensors), the step's layout, the index of the
    anchor parameter among Dynamo's inputs, the state's device and the size symbols' sources."""

    compiled: Callable[..., Any]
    layout: StepLayout
    anchor: int
    device: torch.device
    sources: tuple[SymbolSource, ...]


def program_with_state(program: StepProgram, binding: tuple) -> Callable[..., Any]:
    compiled, layout, anchor, device, sources = (program.compiled, program.layout, program.anchor, program.device,
                                                 program.sources)
    latest: list[Any] = [None, layout]  # the latest call's sizes and their layout (remade when they change)

    def run(*args: Any) -> Any:
        state = cache_state(args[anchor], binding)
        if sources:
            sizes = call_sizes(sources, args)
            if sizes != latest[0]:
                latest[:] = [sizes, layout.sized(sized_by(sources, sizes))]
        tensors = state.tensors_for(latest[1], device)
        try:
            outputs = compiled(*args, *tensors)
        except BaseException:
            state.restart()
            raise
        state.call_done()
        return outputs

    return run


def cache_state(anchor: torch.Tensor, binding: tuple) -> ModelCacheState:
    """The active context's state of the model owning ``anchor``, its cache bound to
    ``binding`` (``ModelCache.bind``'s arguments; module docstring)."""
    refuse_gradients((anchor,))
    cache = cache_for_params([anchor])
    if cache.bound != binding:
        if cache.bound is not None:
            log.warning("cachedit: the model was compiled again with other options; this compiled graph runs "
                        "with its own (every context starts a new generation)")
        cache.bind(*binding)
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


def call_sizes(sources: tuple[SymbolSource, ...], args: tuple[Any, ...]) -> tuple[int, ...]:
    """Each symbol's value in the call with ``args``, in ``sources`` order."""
    return tuple(int(args[index] if dim is None else args[index].shape[dim]) for _, index, dim in sources)


def sized_by(sources: tuple[SymbolSource, ...], sizes: tuple[int, ...]) -> Callable[[torch.SymInt], int]:
    """The size of a symbolic dimension given each symbol's value (``call_sizes``)."""
    bindings = {symbol: value for (symbol, _, _), value in zip(sources, sizes)}
    return lambda dimension: int(dimension.node.expr.xreplace(bindings))
