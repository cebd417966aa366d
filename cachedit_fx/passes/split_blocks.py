"""Regional compilation: split every piece into one sub-piece per chain block (and the spans
between blocks), so ``lower`` compiles each distinct block graph once and reuses the compiled
block with every block's weights (parameters are graph inputs, so equal graphs with equal
input layouts are interchangeable).

Runs only with ``regional_compile=True``. Assumes: the pieces of ``partition`` /
``partition_blocks`` (``split_pieces.piece_modules``), their nodes named as in the Dynamo graph,
and ``meta[CHAIN_META_KEY]``.
Guarantees: a piece holding a chain block and anything else (more blocks, or the prologue or
epilogue) is replaced by a ``GraphModule`` with the same inputs and outputs whose submodules
are its sub-pieces in node order (``block_<i>`` for chain block i, ``span_<k>`` for the nodes
between), marked ``meta[BLOCKWISE_META_KEY]``; other pieces (no block, or exactly one block:
DBPrune's block pieces) are left as they are. Values cross sub-piece boundaries unchanged.
"""

from __future__ import annotations

import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import BLOCKWISE_META_KEY, CHAIN_META_KEY
from cachedit_fx.passes.split_pieces import PieceRange, piece_modules, split_into_pieces


def split_blocks(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    block_of = {name: block.chain_index for block in parent.meta[CHAIN_META_KEY].blocks for name in block.node_names}
    for owner, attribute, piece in piece_modules(parent):
        ranges = block_ranges(piece, block_of)
        if len(ranges) < 2 or not any(r.name.startswith("block_") for r in ranges):
            continue
        blockwise = split_into_pieces(piece, ranges)
        blockwise.meta[BLOCKWISE_META_KEY] = True
        setattr(owner, attribute, blockwise)
    return parent


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
