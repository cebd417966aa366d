"""Cut the graph before block Fn and before block N-Bn into head | middle | tail.

The glue after a block (between it and the next) belongs with the block: the head ends where
block Fn starts, the middle where block N-Bn starts (with Bn = 0, where the last block ends).

Assumes: ``gm.meta[CHAIN_META_KEY]`` holds the ``BlockChain`` and ``Fn + Bn < N``.
Guarantees (else ``UnsupportedGraph``):
  * every value the middle hands on (used by the tail or returned) is a tensor whose source at
    the first cut (``StreamGraph.source``: the middle's blocks read as the identity, the glue
    between them re-applied) is computed by the head: a head value, or glue ops copied into the
    end of the head (FLUX.2's ``cat(text, image)`` before its single-stream blocks);
  * ``hidden_cut`` (hF) is the largest head value the chain's output that reaches the graph
    output continues (the image stream where text and image are joined later; the largest value
    the first blocks hand on where that stream starts later, as in Motif's decoder blocks), and
    ``hidden_entry`` (x0) its source at the chain entry (the first blocks read as the identity,
    glue re-applied), same shape and dtype;
  * the head returns x0, hF and every handed-on value's source, as well as everything later
    pieces use.
Returns the piecewise parent graph (submodules ``head``, ``middle``, ``tail``) with the
``Partition`` recorded in ``meta[PARTITION_META_KEY]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import CHAIN_META_KEY, PARTITION_META_KEY
from cachedit_fx.passes.compute import numel_hint
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
    head_exports = [part.hidden_entry, part.hidden_cut, *(s.head_value for s in part.streams)]
    parent = split_into_pieces(
        gm,
        [PieceRange("head", 0, plan.cut_head), PieceRange("middle", plan.cut_head, plan.cut_tail),
         PieceRange("tail", plan.cut_tail, plan.num_nodes)],
        extra_outputs={"head": [n for n in dict.fromkeys(head_exports) if n not in plan.placeholder_names]},
    )
    parent.meta[PARTITION_META_KEY] = part
    return parent


@dataclass(frozen=True)
class _Plan:
    partition: Partition
    cut_head: int
    cut_tail: int
    num_nodes: int
    placeholder_names: frozenset[str]


def plan_partition(gm: fx.GraphModule, chain: BlockChain, Fn: int, Bn: int) -> _Plan:
    """Plan the cut; sources that are not plain head values are inserted into ``gm``'s graph at
    the end of the head (the only change to ``gm``)."""
    nodes = list(gm.graph.nodes)
    pos = node_positions(gm.graph)
    by_name = {n.name: n for n in nodes}
    blocks = [(pos[by_name[b.node_names[0]]], pos[by_name[b.node_names[-1]]]) for b in chain.blocks]
    streams = StreamGraph(nodes, blocks)
    chain_start, chain_stop = blocks[0][0], blocks[-1][1] + 1
    cut_head = blocks[Fn][0]
    cut_tail = blocks[len(blocks) - Bn][0] if Bn else chain_stop
    first_middle, first_tail = nodes[cut_head], nodes[cut_tail]

    handed_on = [n for n in live_across(nodes, pos, cut_tail) if pos[n] >= cut_head]
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
        on_path = [n for n in live_across(nodes, pos, cut_head) if pos[n] >= chain_start and tensor_meta(n) is not None]
    if not on_path:
        raise UnsupportedGraph("the first blocks hand on no tensor")
    hidden_cut = max(on_path, key=lambda n: (numel_hint(tensor_meta(n)), pos[n]))
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
    carried = [n for n in live_head if pos[n] >= chain_start]
    shared = [n for n in live_head if pos[n] < chain_start]
    partition_info = Partition(
        Fn=Fn, Bn=Bn, num_blocks=len(blocks),
        carried=tuple(n.name for n in carried), shared=tuple(n.name for n in shared),
        streams=tuple(StreamPair(v.name, p.name) for v, p in zip(handed_on, partners)),
        hidden_entry=hidden_entry.name, hidden_cut=hidden_cut.name, hidden_position=hidden_position,
        replayed=tuple(n.name for n in made.values()),
        piece_sizes={
            "head": sum(1 for n in nodes[:cut_head] if n.op != "placeholder"),
            "middle": cut_tail - cut_head,
            "tail": len(nodes) - 1 - cut_tail,
        },
    )
    return _Plan(partition_info, cut_head, cut_tail, len(nodes),
                 frozenset(n.name for n in nodes if n.op == "placeholder"))


def _hidden_position(sources: list[Expr], handed_on: list[fx.Node], hidden_cut: fx.Node) -> int:
    """The handed-on value on the hidden stream: the one whose source is hF, else the largest
    whose source reads hF, else the largest."""
    if hidden_cut in sources:
        return sources.index(hidden_cut)
    reading = [k for k, source in enumerate(sources) if hidden_cut in expr_leaves(source)] or list(range(len(sources)))
    if not reading:
        raise UnsupportedGraph("the cached blocks hand on nothing")
    return max(reading, key=lambda k: (numel_hint(tensor_meta(handed_on[k])), -k))
