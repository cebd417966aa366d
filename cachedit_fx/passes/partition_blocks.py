"""DBPrune partition: every prunable block becomes its own piece.

For a ``DBPruneConfig``. Assumes: ``meta[CHAIN_META_KEY]`` from ``find_block_chain``.
Guarantees: pieces in program order, ``block_<i>`` for each prunable chain block i (not in
the first Fn, the last Bn or ``non_prune_block_ids``) and ``span_<k>`` for everything between
them; for each prunable block the values it hands on are matched by dataflow to the block
inputs they continue (same shape and dtype, ``StreamGraph.continued_input``), and the hidden
stream's input is identified: the largest input continued by an output the chain's hidden output
reads (the image stream of FLUX.2's double-stream blocks, whose text and image are joined later).
Result in ``meta[PARTITION_META_KEY]`` as a ``BlockPartition``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from cachedit_fx.config import BackendSettings, DBPruneConfig
from cachedit_fx.passes import CHAIN_META_KEY, PARTITION_META_KEY
from cachedit_fx.passes.dataflow import live_across, node_positions, tensor_meta
from cachedit_fx.passes.errors import UnsupportedGraph
from cachedit_fx.passes.find_block_chain import BlockChain
from cachedit_fx.passes.split_pieces import PieceRange, split_into_pieces
from cachedit_fx.passes.compute import numel_hint
from cachedit_fx.passes.streams import StreamGraph, StreamPair, expr_leaves, hidden_exit


@dataclass(frozen=True)
class PrunableBlock:
    """``streams[k]``: block output k (``middle_output``) continues block input ``head_value``;
    ``hidden_input``: the node the block's diff is taken on."""

    index: int
    piece: str
    streams: tuple[StreamPair, ...]
    hidden_input: str


@dataclass(frozen=True)
class BlockPartition:
    num_blocks: int
    prunable: tuple[PrunableBlock, ...]
    piece_sizes: dict[str, int]


def partition_blocks(gm: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    chain: BlockChain = gm.meta[CHAIN_META_KEY]
    settings.cache.check_against_chain(len(chain))
    plan, ranges = plan_block_partition(gm, chain, settings.cache)
    parent = split_into_pieces(gm, ranges)
    parent.meta[PARTITION_META_KEY] = plan
    return parent


def plan_block_partition(
    gm: fx.GraphModule, chain: BlockChain, config: DBPruneConfig
) -> tuple[BlockPartition, list[PieceRange]]:
    nodes = list(gm.graph.nodes)
    pos = node_positions(gm.graph)
    by_name = {n.name: n for n in nodes}
    bounds = [(pos[by_name[b.node_names[0]]], pos[by_name[b.node_names[-1]]]) for b in chain.blocks]
    n = len(bounds)
    indices = [i for i in range(n) if not config.is_protected(i, n)]
    if not indices:
        raise ValueError(f"DBPrune: all {n} blocks are protected (Fn, Bn, non_prune_block_ids); nothing to prune")
    streams = StreamGraph(nodes, bounds)
    exit_value = hidden_exit(nodes, pos, bounds[0][0], bounds[-1][1] + 1)

    ranges: list[PieceRange] = []
    prunable: list[PrunableBlock] = []
    cursor = 0
    for i in indices:
        first, last = bounds[i]
        if first > cursor:
            ranges.append(PieceRange(f"span_{len(ranges)}", cursor, first))
        piece = f"block_{i}"
        ranges.append(PieceRange(piece, first, last + 1))
        cursor = last + 1
        pairs = []
        for value in [v for v in live_across(nodes, pos, last + 1) if pos[v] >= first]:
            partner = streams.continued_input(value) if tensor_meta(value) is not None else None
            if partner is None:
                raise UnsupportedGraph(f"block {i}: {value.name} continues no block input of its shape and dtype")
            pairs.append(StreamPair(value.name, partner.name))
        partners = [p.head_value for p in pairs]
        if len(set(partners)) != len(partners):
            raise UnsupportedGraph(f"block {i}: two values handed on continue the same input: {partners}")
        on_path = [by_name[p.head_value] for p in pairs
                   if by_name[p.middle_output] in expr_leaves(streams.source(exit_value, last + 1))]
        if not on_path:
            raise UnsupportedGraph(f"block {i} does not continue the hidden stream")
        hidden = max(on_path, key=lambda node: (numel_hint(tensor_meta(node)), pos[node]))
        prunable.append(PrunableBlock(i, piece, tuple(pairs), hidden.name))
    ranges.append(PieceRange(f"span_{len(ranges)}", cursor, len(nodes)))
    sizes = {r.name: sum(1 for node in nodes[r.start:r.stop] if node.op not in ("placeholder", "output"))
             for r in ranges}
    return BlockPartition(n, tuple(prunable), sizes), ranges
