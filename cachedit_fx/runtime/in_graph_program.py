"""The callable the backend returns for a program with the in-graph step: it picks the cache
context's state tensors for this graph and calls the compiled program with them.

Per call on the host: the ``CacheSelector`` (grad check, the model by its anchor parameter,
the active context), one dict lookup and, for a dynamic-shape graph, the call's sizes (state
tensors of other sizes are made anew: a new generation); no tensor is read (so a GPU never waits for the host)
unless INFO logging is on, when the small counters are read to write the generation-done line.
A call that raises requests a new generation of that state (nothing half-updated is reused).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
import torch.fx as fx

from cachedit_fx.passes import IN_GRAPH_META_KEY, ONE_PROGRAM_META_KEY
from cachedit_fx.passes.dataflow import tensor_meta
from cachedit_fx.runtime.cache_selector import CacheSelector


def in_graph_program(parent: fx.GraphModule, binding: tuple) -> Callable[..., Any]:
    layout = parent.meta[IN_GRAPH_META_KEY]
    compiled = parent.meta[ONE_PROGRAM_META_KEY]
    placeholders = list(parent.graph.find_nodes(op="placeholder"))
    num_dynamo_inputs = len(placeholders) - len(layout.names)
    anchor = next(k for k, n in enumerate(placeholders[:num_dynamo_inputs])
                  if isinstance(getattr(n.meta.get("grapharg"), "example", None), torch.nn.Parameter))
    device = tensor_meta(placeholders[-1]).device
    selector = CacheSelector(*binding)
    sources = symbol_sources(placeholders[:num_dynamo_inputs])
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


SymbolSource = tuple[Any, int, Optional[int]]


def symbol_sources(placeholders: list[fx.Node]) -> list[SymbolSource]:
    """Where each size symbol of a dynamic-shape graph is read from a call's arguments:
    (symbol, argument index, dimension, or None for an integer argument)."""
    sources: list[SymbolSource] = []
    for index, node in enumerate(placeholders):
        value = node.meta.get("example_value")
        if isinstance(value, torch.SymInt) and value.node.expr.is_Symbol:
            sources.append((value.node.expr, index, None))
        elif isinstance(value, torch.Tensor):
            sources.extend((d.node.expr, index, dim) for dim, d in enumerate(value.shape)
                           if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol)
    return sources


def call_sizes(sources: list[SymbolSource], args: tuple[Any, ...]) -> tuple[int, ...]:
    """Each symbol's value in the call with ``args``, in ``sources`` order."""
    return tuple(int(args[index] if dim is None else args[index].shape[dim]) for _, index, dim in sources)


def sized_by(sources: list[SymbolSource], sizes: tuple[int, ...]) -> Callable[[torch.SymInt], int]:
    """The size of a symbolic dimension given each symbol's value (``call_sizes``)."""
    bindings = {symbol: value for (symbol, _, _), value in zip(sources, sizes)}

    def size(dimension: torch.SymInt) -> int:
        return int(dimension.node.expr.xreplace(bindings))

    return size
