"""DBPrune partition: every prunable block becomes its own piece.

For a ``DBPruneConfig``. Assumes: ``meta[CHAIN_META_KEY]`` from ``find_block_chain``.
Guarantees: pieces in program order, ``block_<i>`` for each prunable chain block i (not in
the first Fn, the last Bn or ``non_prune_block_ids``) and ``span_<k>`` for everything between
them; for each prunable block the values it hands on are matched by dataflow to the block
inputs they continue (``StreamGraph.continued_input``), and the hidden stream's input is the
largest input continued by an output the chain's hidden output reads (the image stream of
FLUX.2's double-stream blocks, whose text and image are joined later).
Result in ``meta[PARTITION_META_KEY]`` as a ``BlockPartition``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from cachedit_fx.config import BackendSettings, DBPruneConfig
from cachedit_fx.passes import CHAIN_META_KEY, PARTITION_META_KEY
from cachedit_fx.passes.compute import largest_tensor
from cachedit_fx.passes.dataflow import live_across, tensor_meta
from cachedit_fx.passes.errors import UnsupportedGraph
from cachedit_fx.passes.find_block_chain import BlockChain
from cachedit_fx.passes.split_pieces import PieceRange, split_into_pieces
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
    streams = StreamGraph(gm.graph.nodes, chain.block_ranges(gm.graph))
    nodes, pos, bounds = streams.nodes, streams.pos, streams.block_ranges
    n = len(bounds)
    indices = [i for i in range(n) if not config.is_protected(i, n)]
    if not indices:
        raise ValueError(f"DBPrune: all {n} blocks are protected (Fn, Bn, non_prune_block_ids); nothing to prune")
    exit_value = hidden_exit(nodes, pos, streams.chain_start, streams.chain_stop)

    ranges: list[PieceRange] = []
    prunable: list[PrunableBlock] = []
    cursor = 0
    for i in indices:
        first, last = bounds[i]
        if first > cursor:
            ranges.append(PieceRange(f"span_{len(ranges)}", cursor, first))
        ranges.append(PieceRange(f"block_{i}", first, last + 1))
        cursor = last + 1
        pairs: dict[fx.Node, fx.Node] = {}
        for value in live_across(nodes, pos, last + 1, first):
            partner = streams.continued_input(value) if tensor_meta(value) is not None else None
            if partner is None:
                raise UnsupportedGraph(f"block {i}: {value.name} continues no block input of its shape and dtype")
            pairs[value] = partner
        if len(set(pairs.values())) != len(pairs):
            raise UnsupportedGraph(f"block {i}: two values handed on continue the same input: "
                                   f"{[p.name for p in pairs.values()]}")
        on_path = [p for v, p in pairs.items() if v in expr_leaves(streams.source(exit_value, last + 1))]
        if not on_path:
            raise UnsupportedGraph(f"block {i} does not continue the hidden stream")
        prunable.append(PrunableBlock(i, f"block_{i}", tuple(StreamPair(v.name, p.name) for v, p in pairs.items()),
                                      largest_tensor(on_path, pos).name))
    ranges.append(PieceRange(f"span_{len(ranges)}", cursor, len(nodes)))
    sizes = {r.name: sum(1 for node in nodes[r.start:r.stop] if node.op not in ("placeholder", "output"))
             for r in ranges}
    return BlockPartition(n, tuple(prunable), sizes), ranges
