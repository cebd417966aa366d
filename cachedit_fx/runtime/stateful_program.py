"""The callable the backend returns for a program with the in-graph step: it picks the cache
context's state tensors for this graph and calls the compiled program with them.

Per call on the host: the ``CacheSelector`` (grad check, the model by its anchor parameter,
the active context), one dict lookup and, for a dynamic-shape graph, the call's sizes (state
tensors of other sizes are made anew: a new generation); no tensor is read (so a GPU never waits for the host)
unless INFO logging is on, when the small counters are read to write the generation-done line.
A call that raises requests a new generation of that state (nothing half-updated is reused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch

from cachedit_fx.runtime.cache_selector import CacheSelector
from cachedit_fx.runtime.dbcache_step import StepLayout

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
    selector = CacheSelector(*binding)
    latest: list[Any] = [None, layout]
    """The sizes of the latest call of a dynamic-shape graph and its layout (made again only
    when the sizes change)."""

    def run(*args: Any) -> Any:
        state = selector(args[anchor])
        if sources:
            sizes = call_sizes(sources, args)
            if sizes != latest[0]:
                latest[:] = [sizes, layout.sized(sized_by(sources, sizes))]
        tensors = state.in_graph_tensors(latest[1], device)
        try:
            outputs = compiled(*args, *tensors)
        except BaseException:
            state.restart_in_graph()
            raise
        state.in_graph_call_done()
        return outputs

    return run


def call_sizes(sources: tuple[SymbolSource, ...], args: tuple[Any, ...]) -> tuple[int, ...]:
    """Each symbol's value in the call with ``args``, in ``sources`` order."""
    return tuple(int(args[index] if dim is None else args[index].shape[dim]) for _, index, dim in sources)


def sized_by(sources: tuple[SymbolSource, ...], sizes: tuple[int, ...]) -> Callable[[torch.SymInt], int]:
    """The size of a symbolic dimension given each symbol's value (``call_sizes``)."""
    bindings = {symbol: value for (symbol, _, _), value in zip(sources, sizes)}

    def size(dimension: torch.SymInt) -> int:
        return int(dimension.node.expr.xreplace(bindings))

    return size
