"""Cut the graph after block Fn-1 and before block N-Bn into head | middle | tail.

Assumes: ``gm.meta[CHAIN_META_KEY]`` holds the ``BlockChain`` and ``Fn + Bn < N``.
Guarantees (else ``UnsupportedGraph``):
  * every value the middle hands on (used by the tail or returned) is a tensor stream:
    it continues exactly one value carried in at the first cut, found by dataflow (the
    nearest ancestor through the middle, shape only breaking ties), with equal shape and dtype;
  * ``hidden_entry`` (x0, the chain input) and ``hidden_cut`` (hF, block Fn-1's output) lie
    on the stream that reaches the graph output after the chain;
  * the head returns x0 and hF as well as everything later pieces use.
Returns the piecewise parent graph (submodules ``head``, ``middle``, ``tail``) with the
``Partition`` recorded in ``meta[PARTITION_META_KEY]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from cachedit_fx.config import BackendSettings, DBPruneConfig
from cachedit_fx.passes import CHAIN_META_KEY, PARTITION_META_KEY
from cachedit_fx.passes.dataflow import live_across, node_positions, same_layout
from cachedit_fx.passes.errors import UnsupportedGraph
from cachedit_fx.passes.find_block_chain import BlockChain
from cachedit_fx.passes.split_pieces import PieceRange, split_into_pieces
from cachedit_fx.passes.streams import StreamPair, hidden_exit, live_values, match_streams, trace_stream


@dataclass(frozen=True)
class Partition:
    Fn: int
    Bn: int
    num_blocks: int
    carried: tuple[str, ...]
    shared: tuple[str, ...]
    streams: tuple[StreamPair, ...]
    hidden_entry: str
    hidden_cut: str
    piece_sizes: dict[str, int]


def partition(gm: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    if isinstance(settings.cache, DBPruneConfig):
        return gm
    chain: BlockChain = gm.meta[CHAIN_META_KEY]
    cache = settings.cache
    cache.check_against_chain(len(chain))
    plan = plan_partition(gm, chain, cache.Fn_compute_blocks, cache.Bn_compute_blocks)
    parent = split_into_pieces(
        gm,
        [PieceRange("head", 0, plan.cut_head), PieceRange("middle", plan.cut_head, plan.cut_tail),
         PieceRange("tail", plan.cut_tail, plan.num_nodes)],
        extra_outputs={"head": [n for n in (plan.partition.hidden_entry, plan.partition.hidden_cut)
                                if n not in plan.placeholder_names]},
    )
    parent.meta[PARTITION_META_KEY] = plan.partition
    return parent


@dataclass(frozen=True)
class _Plan:
    partition: Partition
    cut_head: int
    cut_tail: int
    num_nodes: int
    placeholder_names: frozenset[str]


def plan_partition(gm: fx.GraphModule, chain: BlockChain, Fn: int, Bn: int) -> _Plan:
    nodes = list(gm.graph.nodes)
    pos = node_positions(gm.graph)
    blocks = chain.blocks
    chain_start, chain_stop = blocks[0].first, blocks[-1].last + 1
    cut_head = blocks[Fn - 1].last + 1
    cut_tail = blocks[len(blocks) - Bn].first if Bn else chain_stop

    live_head = live_across(nodes, pos, cut_head)
    carried = [n for n in live_head if pos[n] >= chain_start]
    shared = [n for n in live_head if pos[n] < chain_start]
    handed_on = [n for n in live_across(nodes, pos, cut_tail) if pos[n] >= cut_head]

    live_at = live_values(nodes, pos)
    middle_boundaries = [blocks[j].first for j in range(len(blocks) - Bn - 1, Fn, -1)] + [cut_head]
    streams = match_streams(handed_on, middle_boundaries, live_at, pos, "the cached blocks")
    for stream in streams:
        if stream.head_value not in {n.name for n in carried}:
            raise UnsupportedGraph(f"{stream.middle_output} does not continue a value carried into the cached blocks")

    exit_value = hidden_exit(nodes, pos, chain_start, chain_stop)
    hidden_cut = trace_stream(
        exit_value, [blocks[j].first for j in range(len(blocks) - 1, Fn, -1)] + [cut_head], live_at, pos
    )
    if hidden_cut not in carried:
        raise UnsupportedGraph(f"the hidden stream at the first cut ({hidden_cut.name}) is not a block output")
    hidden_entry = trace_stream(hidden_cut, [blocks[j].first for j in range(Fn - 1, -1, -1)], live_at, pos)
    if not same_layout(hidden_entry, hidden_cut):
        raise UnsupportedGraph(f"hidden stream {hidden_entry.name} -> {hidden_cut.name} changes shape or dtype")

    partition_info = Partition(
        Fn=Fn, Bn=Bn, num_blocks=len(blocks),
        carried=tuple(n.name for n in carried), shared=tuple(n.name for n in shared),
        streams=tuple(streams), hidden_entry=hidden_entry.name, hidden_cut=hidden_cut.name,
        piece_sizes={
            "head": sum(1 for n in nodes[:cut_head] if n.op != "placeholder"),
            "middle": cut_tail - cut_head,
            "tail": len(nodes) - 1 - cut_tail,
        },
    )
    return _Plan(partition_info, cut_head, cut_tail, len(nodes),
                 frozenset(n.name for n in nodes if n.op == "placeholder"))
