"""The callable the backend returns for a program with the in-graph step: it picks the cache
context's state tensors for this graph and calls the compiled program with them.

Per call on the host: the ``CacheSelector`` (grad check, the model by its anchor parameter,
the active context) and one dict lookup; no tensor is read (so a GPU never waits for the host)
unless INFO logging is on, when the small counters are read to write the generation-done line.
A call that raises requests a new generation of that state (nothing half-updated is reused).
"""

from __future__ import annotations

from typing import Any, Callable

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
    key = object()

    def run(*args: Any) -> Any:
        state = selector(args[anchor])
        tensors = state.in_graph_tensors(key, layout, device)
        try:
            outputs = compiled(*args, *tensors)
        except BaseException:
            state.restart_in_graph(key)
            raise
        state.in_graph_call_done(key)
        return outputs

    return run
