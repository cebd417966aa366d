"""Regional compilation of the one program: every chain block (in the head, the tail and the
regions the steps' branches run) becomes a call of a custom op running that block compiled
apart (``runtime/region_op.py``), each distinct block graph compiled once; everything else
(embedders, the work between blocks, the decision, the state updates) stays in the program.
Compiling the program then traces each block as one opaque call.

Runs with ``regional_compile=True`` after ``insert_in_graph_step`` / ``insert_prune_steps``.
Assumes: the pieces of the program (``split_pieces.piece_modules``: the parent's pieces and
each step's ``region``), their nodes named as in the Dynamo graph, and ``meta[CHAIN_META_KEY]``.
Guarantees: a piece holding a block is replaced by a ``GraphModule`` with the same inputs and
outputs whose block sub-pieces are ``RegionCall``s (a piece that is one block becomes one);
equal block graphs share one compiled callable (``lower.compile_units``) and one op;
``meta[COMPILE_REPORT_META_KEY]`` counts the blocks and their distinct compiles (``lower``
adds the program).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Hashable, Optional

import torch
import torch.fx as fx
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import CHAIN_META_KEY, COMPILE_REPORT_META_KEY, compile_handles
from cachedit_fx.passes.inner_compile import example_value
from cachedit_fx.passes.lower import CompileReport, compile_units, graph_signature
from cachedit_fx.passes.split_pieces import PieceRange, piece_modules, split_into_pieces
from cachedit_fx.runtime.region_op import RegionCall, region_key

log = logging.getLogger("cachedit_fx")


class _Compiled(torch.nn.Module):
    """Receives a block's compiled callable from ``compile_units``."""

    def __init__(self, block: fx.GraphModule) -> None:
        super().__init__()
        self.block = block


def compile_regions(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    block_of = {name: block.chain_index for block in parent.meta[CHAIN_META_KEY].blocks for name in block.node_names}
    dynamo_inputs = compile_handles(parent).dynamo_inputs
    compiled: dict[Hashable, Callable[..., Any]] = {}
    blocks = 0
    for owner, attribute, piece in piece_modules(parent):
        ranges = block_ranges(piece, block_of)
        if not any(r.name.startswith("block_") for r in ranges):
            continue
        if len(ranges) == 1:
            units = [(owner, attribute, piece)]
        else:
            blockwise = split_into_pieces(piece, ranges)
            setattr(owner, attribute, blockwise)
            units = [u for u in piece_modules(blockwise) if u[1].startswith("block_")]
        for unit_owner, unit_name, block in units:
            reason = _no_region_reason(block)
            if reason is not None:
                log.info("cachedit: block piece %s stays in the program: %s", unit_name, reason)
                continue
            holder = _Compiled(block)
            compile_units([(holder, "block", block)], settings, dynamo_inputs, compiled)
            key = region_key((graph_signature(block), [type(example_value(n)).__qualname__
                                                       for n in block.graph.find_nodes(op="placeholder")]))
            setattr(unit_owner, unit_name, RegionCall(block, holder.block, key))
            blocks += 1
    parent.meta[COMPILE_REPORT_META_KEY] = CompileReport(blocks, len(compiled))
    return parent


def _no_region_reason(block: fx.GraphModule) -> Optional[str]:
    """Why ``block`` cannot run as a custom op, or None: an op returns tensors only, and its
    fake implementation cannot make a data-dependent size (FramePack's text length) anew."""
    output = next(iter(block.graph.find_nodes(op="output")))
    returned: list[fx.Node] = []
    fx.node.map_arg(output.args, returned.append)
    if not all(isinstance(example_value(n), torch.Tensor) for n in returned):
        return "it hands on a size"
    for node in (*block.graph.find_nodes(op="placeholder"), *returned):
        value = example_value(node)
        if free_unbacked_symbols(value.shape if isinstance(value, torch.Tensor) else value):
            return f"{node.name} has a data-dependent size"
    return None


def block_ranges(piece: fx.GraphModule, block_of: dict[str, int]) -> list[PieceRange]:
    """Consecutive runs of ``piece``'s nodes by the chain block they belong to (None: a span)."""
    nodes = list(piece.graph.nodes)
    ranges: list[PieceRange] = []
    label, start = None, None
    for position, node in enumerate(nodes):
        if node.op in ("placeholder", "output"):
            continue
        owner = block_of.get(node.name)
        if start is None or owner != label:
            if start is not None:
                ranges.append(_range(label, len(ranges), start, position))
            label, start = owner, position
    if start is not None:
        ranges.append(_range(label, len(ranges), start, len(nodes) - 1))
    return ranges


def _range(block: int | None, count: int, start: int, stop: int) -> PieceRange:
    return PieceRange(f"span_{count}" if block is None else f"block_{block}", start, stop)
