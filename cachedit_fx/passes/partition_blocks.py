"""DBPrune partition: every prunable block becomes its own piece.

Runs only with a ``DBPruneConfig``. Assumes: ``meta[CHAIN_META_KEY]`` from ``find_block_chain``.
Guarantees: pieces in program order, ``block_<i>`` for each prunable chain block i (not in
the first Fn, the last Bn or ``non_prune_block_ids``) and ``span_<k>`` for everything between
them; for each prunable block the values it hands on are matched by dataflow to the block
inputs they continue (same shape and dtype), and the hidden stream's input is identified.
Result in ``meta[PARTITION_META_KEY]`` as a ``BlockPartition``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from cachedit_fx.config import BackendSettings, DBPruneConfig
from cachedit_fx.passes import CHAIN_META_KEY, PARTITION_META_KEY
from cachedit_fx.passes.dataflow import live_across, node_positions
from cachedit_fx.passes.errors import UnsupportedGraph
from cachedit_fx.passes.find_block_chain import BlockChain
from cachedit_fx.passes.split_pieces import PieceRange, split_into_pieces
from cachedit_fx.passes.streams import StreamPair, hidden_exit, live_values, match_streams, trace_stream


@dataclass(frozen=True)
class PrunableBlock:
    """``streams[k]``: block output k (``middle_output``) continues block input ``head_value``."""

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
    if not isinstance(settings.cache, DBPruneConfig):
        return gm
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
    blocks = chain.blocks
    n = len(blocks)
    indices = [i for i in range(n) if not config.is_protected(i, n)]
    if not indices:
        raise ValueError(f"DBPrune: all {n} blocks are protected (Fn, Bn, non_prune_block_ids); nothing to prune")
    live_at = live_values(nodes, pos)
    exit_value = hidden_exit(nodes, pos, blocks[0].first, blocks[-1].last + 1)

    ranges: list[PieceRange] = []
    prunable: list[PrunableBlock] = []
    cursor = 0
    for i in indices:
        block = blocks[i]
        if block.first > cursor:
            ranges.append(PieceRange(f"span_{len(ranges)}", cursor, block.first))
        piece = f"block_{i}"
        ranges.append(PieceRange(piece, block.first, block.last + 1))
        cursor = block.last + 1
        handed_on = [v for v in live_across(nodes, pos, block.last + 1) if pos[v] >= block.first]
        streams = match_streams(handed_on, [block.first], live_at, pos, f"block {i}")
        partners = [s.head_value for s in streams]
        hidden = trace_stream(exit_value, [blocks[j].first for j in range(n - 1, i - 1, -1)], live_at, pos)
        if hidden.name not in partners:
            raise UnsupportedGraph(f"block {i}: the hidden stream input {hidden.name} is not continued by the block")
        prunable.append(PrunableBlock(i, piece, tuple(streams), hidden.name))
    ranges.append(PieceRange(f"span_{len(ranges)}", cursor, len(nodes)))
    sizes = {r.name: sum(1 for node in nodes[r.start:r.stop] if node.op not in ("placeholder", "output"))
             for r in ranges}
    return BlockPartition(n, tuple(prunable), sizes), ranges
