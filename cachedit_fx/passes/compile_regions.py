"""Regional compilation of the one program: the region each step's compute branch runs (the
DBCache middle, each DBPrune block) is split per chain block, each distinct block graph is
compiled once, and the branch calls the compiled region through a custom op
(``runtime/region_op.py``), so compiling the program compiles everything but the regions.

Runs with ``regional_compile=True`` after ``insert_in_graph_step`` / ``insert_prune_steps``.
Assumes: every ``DBCacheStep`` / ``PrunedBlockStep`` holds its region graph as ``region``, its
nodes named as in the Dynamo graph, and ``meta[CHAIN_META_KEY]``. Guarantees: each step's
``region`` is a ``RegionCall`` with the region's inputs and outputs; equal block graphs across
all regions share one compiled callable (``lower.compile_units``); ``meta[COMPILE_REPORT_META_KEY]``
counts the regions' units and distinct compiles (``lower`` adds the program).
"""

from __future__ import annotations

from typing import Any, Callable, Hashable

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import CHAIN_META_KEY, COMPILE_REPORT_META_KEY, IN_GRAPH_META_KEY, compile_handles
from cachedit_fx.passes.inner_compile import example_value
from cachedit_fx.passes.lower import CompileReport, compile_units, graph_signature
from cachedit_fx.passes.split_blocks import block_ranges, split_blocks
from cachedit_fx.passes.split_pieces import piece_modules, split_into_pieces
from cachedit_fx.runtime.dbcache_step import DBCacheStep
from cachedit_fx.runtime.dbprune_step import PrunedBlockStep
from cachedit_fx.runtime.region_op import RegionCall, region_key


class _Holder(torch.nn.Module):
    """Owns a region compiled whole (a single-block region)."""

    def __init__(self, region: fx.GraphModule) -> None:
        super().__init__()
        self.region = region

    def forward(self, *inputs: Any) -> Any:
        return self.region(*inputs)


def compile_regions(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    """A program the host decides (a graph the steps could not take) is split by
    ``split_blocks`` instead, for ``lower``."""
    if IN_GRAPH_META_KEY not in parent.meta:
        return split_blocks(parent, settings)
    block_of = {name: block.chain_index for block in parent.meta[CHAIN_META_KEY].blocks for name in block.node_names}
    dynamo_inputs = compile_handles(parent).dynamo_inputs
    compiled: dict[Hashable, Callable[..., Any]] = {}
    pieces = compiles = 0
    for step in [m for m in parent.modules() if isinstance(m, (DBCacheStep, PrunedBlockStep))]:
        region: fx.GraphModule = step.region
        key = region_key((graph_signature(region), [type(example_value(n)).__qualname__
                                                    for n in region.graph.find_nodes(op="placeholder")]))
        ranges = block_ranges(region, block_of)
        if len(ranges) > 1:
            runner: torch.nn.Module = split_into_pieces(region, ranges)
            units = piece_modules(runner)
        else:
            runner = _Holder(region)
            units = [(runner, "region", region)]
        report = compile_units(units, settings, dynamo_inputs, compiled)
        pieces, compiles = pieces + report.pieces, compiles + report.compiles
        step.region = RegionCall(region, runner, key)
    parent.meta[COMPILE_REPORT_META_KEY] = CompileReport(pieces, compiles)
    return parent
