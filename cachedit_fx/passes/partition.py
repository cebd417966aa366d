"""Cut the graph before block Fn and before block N-Bn into head | middle | tail.

The glue after a block belongs with the block: the head ends where block Fn starts, the middle
where block N-Bn starts (with Bn = 0, where the last block ends).

Assumes: ``gm.meta[CHAIN_META_KEY]`` holds the ``BlockChain`` and ``Fn + Bn < N``.
Guarantees (else ``UnsupportedGraph``):
  * every value the middle hands on (used by the tail or returned) is a tensor whose source at
    the first cut (``StreamGraph.source``) is computed by the head: a head value, or glue ops
    copied into the end of the head (FLUX.2's ``cat(text, image)`` before its single-stream blocks);
  * ``hidden_cut`` (hF) is the largest head value the chain's output that reaches the graph
    output continues (else the largest value the first blocks hand on, where that stream starts
    later: Motif's decoder blocks); ``hidden_entry`` (x0), its source at the chain entry, has
    its shape and dtype;
  * the head returns x0, hF, every handed-on value's source and everything later pieces use.
Returns the piecewise parent graph (``head``, ``middle``, ``tail``), ``Partition`` in
``meta[PARTITION_META_KEY]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import CHAIN_META_KEY, PARTITION_META_KEY
from cachedit_fx.passes.compute import largest_tensor, numel_hint
from cachedit_fx.passes.dataflow import live_across, node_positions, same_layout, tensor_meta
from cachedit_fx.passes.errors import UnsupportedGraph
from cachedit_fx.passes.find_block_chain import BlockChain
from cachedit_fx.passes.split_pieces import PieceRange, split_into_pieces
from cachedit_fx.passes.streams import Expr, Replay, StreamGraph, StreamPair, expr_leaves, hidden_exit, materialize


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
    hidden_position: int
    """Index in ``streams`` of the hidden stream."""
    replayed: tuple[str, ...]
    """Head nodes that re-apply glue between blocks (sources that are not plain head values)."""
    piece_sizes: dict[str, int]


def partition(gm: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    chain: BlockChain = gm.meta[CHAIN_META_KEY]
    cache = settings.cache
    cache.check_against_chain(len(chain))
    plan = plan_partition(gm, chain, cache.Fn_compute_blocks, cache.Bn_compute_blocks)
    part = plan.partition
    parent = split_into_pieces(
        gm,
        [PieceRange("head", 0, plan.cut_head), PieceRange("middle", plan.cut_head, plan.cut_tail),
         PieceRange("tail", plan.cut_tail, len(gm.graph.nodes))],
        extra_outputs={"head": [part.hidden_entry, part.hidden_cut, *(s.head_value for s in part.streams)]},
    )
    parent.meta[PARTITION_META_KEY] = part
    return parent


@dataclass(frozen=True)
class _Plan:
    partition: Partition
    cut_head: int
    cut_tail: int


def plan_partition(gm: fx.GraphModule, chain: BlockChain, Fn: int, Bn: int) -> _Plan:
    """Plan the cut; sources that are not plain head values are inserted into ``gm``'s graph at
    the end of the head (the only change to ``gm``)."""
    streams = StreamGraph(gm.graph.nodes, chain.block_ranges(gm.graph))
    nodes, pos, blocks = streams.nodes, streams.pos, streams.block_ranges
    chain_start, chain_stop = streams.chain_start, streams.chain_stop
    cut_head = blocks[Fn][0]
    cut_tail = blocks[len(blocks) - Bn][0] if Bn else chain_stop
    first_middle, first_tail = nodes[cut_head], nodes[cut_tail]

    handed_on = live_across(nodes, pos, cut_tail, cut_head)
    sources: list[Expr] = []
    for value in handed_on:
        if tensor_meta(value) is None:
            raise UnsupportedGraph(f"the cached blocks hand on a non-tensor value {value.name}")
        sources.append(streams.source(value, cut_head))
    plain = [s for s in sources if not isinstance(s, Replay)]
    if len(set(plain)) != len(plain):
        raise UnsupportedGraph(f"the cached blocks: two values handed on continue the same input: "
                               f"{[s.name for s in plain]}")

    exit_source = streams.source(hidden_exit(nodes, pos, chain_start, chain_stop), cut_head)
    on_path = [n for n in expr_leaves(exit_source) if chain_start <= pos[n] < cut_head and tensor_meta(n) is not None]
    if not on_path:  # the output's stream starts after the first blocks (Motif's decoder blocks)
        on_path = [n for n in live_across(nodes, pos, cut_head, chain_start) if tensor_meta(n) is not None]
    if not on_path:
        raise UnsupportedGraph("the first blocks hand on no tensor")
    hidden_cut = largest_tensor(on_path, pos)
    hidden_position = _hidden_position(sources, handed_on, hidden_cut)

    made: dict[Replay, fx.Node] = {}
    hidden_entry = materialize(gm.graph, streams.source(hidden_cut, chain_start), first_middle, made)
    partners = [materialize(gm.graph, s, first_middle, made) for s in sources]
    if not same_layout(hidden_entry, hidden_cut):
        raise UnsupportedGraph(f"hidden stream {hidden_entry.name} -> {hidden_cut.name} changes shape or dtype")

    nodes = list(gm.graph.nodes)
    pos = node_positions(gm.graph)
    cut_head, cut_tail = pos[first_middle], pos[first_tail]  # the copies went in after the chain start
    live_head = live_across(nodes, pos, cut_head)
    partition_info = Partition(
        Fn=Fn, Bn=Bn, num_blocks=len(blocks),
        carried=tuple(n.name for n in live_head if pos[n] >= chain_start),
        shared=tuple(n.name for n in live_head if pos[n] < chain_start),
        streams=tuple(StreamPair(v.name, p.name) for v, p in zip(handed_on, partners)),
        hidden_entry=hidden_entry.name, hidden_cut=hidden_cut.name, hidden_position=hidden_position,
        replayed=tuple(n.name for n in made.values()),
        piece_sizes={"head": sum(1 for n in nodes[:cut_head] if n.op != "placeholder"),
                     "middle": cut_tail - cut_head, "tail": len(nodes) - 1 - cut_tail},
    )
    return _Plan(partition_info, cut_head, cut_tail)


def _hidden_position(sources: list[Expr], handed_on: list[fx.Node], hidden_cut: fx.Node) -> int:
    """The handed-on value on the hidden stream: the one whose source is hF, else the largest
    whose source reads hF, else the largest."""
    if hidden_cut in sources:
        return sources.index(hidden_cut)
    reading = [k for k, source in enumerate(sources) if hidden_cut in expr_leaves(source)] or list(range(len(sources)))
    if not reading:
        raise UnsupportedGraph("the cached blocks hand on nothing")
    return max(reading, key=lambda k: (numel_hint(tensor_meta(handed_on[k])), -k))
