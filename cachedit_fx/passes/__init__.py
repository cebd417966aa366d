"""Pure graph analyses and rewrites, each ``(GraphModule, BackendSettings) -> GraphModule``.

Analyses record their typed results in ``gm.meta`` under the keys below; no pass keeps
runtime state. What one compile binds besides the frozen options (the model's cache, the
parallel run, Dynamo's input metadata) travels with the graph as ``CompileHandles``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.fx as fx

CHAIN_META_KEY = "cachedit_fx.block_chain"
PARTITION_META_KEY = "cachedit_fx.partition"
COMPILE_REPORT_META_KEY = "cachedit_fx.compile_report"
SHARDING_META_KEY = "cachedit_fx.sharding"
IN_GRAPH_META_KEY = "cachedit_fx.in_graph_step"
ONE_PROGRAM_META_KEY = "cachedit_fx.one_program"
HANDLES_META_KEY = "cachedit_fx.compile_handles"


@dataclass
class CompileHandles:
    """Per-compile handles (never options): the model's ``ModelCache`` once bound, the
    ``ParallelRun`` of a tensor- or context-parallel compile, Dynamo's ``DynamoInputs`` and the
    compile's ``GraphDumper`` (None: nothing dumped)."""

    model_cache: Any = None
    parallel_run: Any = None
    dynamo_inputs: Any = None
    dump: Any = None

    def __deepcopy__(self, memo: dict) -> "CompileHandles":
        return self  # a copied graph belongs to the same compile

    def __reduce__(self) -> tuple:
        return (CompileHandles, ())  # compiler caches pickle graph meta: handles are no part of a graph's key


def compile_handles(gm: fx.GraphModule) -> CompileHandles:
    """The handles the backend attached to ``gm`` (empty ones for a graph compiled elsewhere:
    ``export``, a test calling a pass directly)."""
    return gm.meta.get(HANDLES_META_KEY) or CompileHandles()
