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

from collections import deque
from dataclasses import dataclass

import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import CHAIN_META_KEY, PARTITION_META_KEY
from cachedit_fx.passes.dataflow import is_module_state, live_across, nearest_ancestors, node_positions, same_layout, tensor_meta
from cachedit_fx.passes.errors import UnsupportedGraph
from cachedit_fx.passes.find_block_chain import BlockChain
from cachedit_fx.passes.split_pieces import PieceRange, split_into_pieces


@dataclass(frozen=True)
class StreamPair:
    """A value the middle hands on (``middle_output``) and the head value it continues."""

    middle_output: str
    head_value: str


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

    def live_at(boundary: int) -> list[fx.Node]:
        return [n for n in nodes[:boundary] if not is_module_state(n) and any(pos[u] >= boundary for u in n.users)]

    middle_boundaries = [blocks[j].first for j in range(len(blocks) - Bn - 1, Fn, -1)] + [cut_head]
    streams = []
    for value in handed_on:
        if tensor_meta(value) is None:
            raise UnsupportedGraph(f"the cached blocks hand on a non-tensor value {value.name}")
        partner = _trace_stream(value, middle_boundaries, live_at, pos)
        if partner not in carried:
            raise UnsupportedGraph(f"{value.name} does not continue a value carried into the cached blocks")
        if not same_layout(value, partner):
            raise UnsupportedGraph(f"stream {partner.name} -> {value.name} changes shape or dtype in the cached blocks")
        streams.append(StreamPair(value.name, partner.name))
    partners = [s.head_value for s in streams]
    if len(set(partners)) != len(partners):
        raise UnsupportedGraph(f"two values handed on by the cached blocks continue the same stream: {partners}")

    hidden_exit = _hidden_exit(nodes, pos, chain_start, chain_stop)
    hidden_cut = _trace_stream(
        hidden_exit, [blocks[j].first for j in range(len(blocks) - 1, Fn, -1)] + [cut_head], live_at, pos
    )
    if hidden_cut not in carried:
        raise UnsupportedGraph(f"the hidden stream at the first cut ({hidden_cut.name}) is not a block output")
    hidden_entry = _trace_stream(hidden_cut, [blocks[j].first for j in range(Fn - 1, -1, -1)], live_at, pos)
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


def _trace_stream(value: fx.Node, boundaries: list[int], live_at, pos: dict[fx.Node, int]) -> fx.Node:
    """Follow ``value`` backwards one block at a time: at each boundary (descending positions)
    it continues the nearest value live across that boundary (shape breaks ties)."""
    for boundary in boundaries:
        if pos[value] < boundary:
            continue
        candidates = live_at(boundary)
        found = nearest_ancestors(value, candidates, lambda n: pos[n] >= boundary)
        matching = [n for n in found if same_layout(n, value)] if len(found) > 1 else found
        if len(matching) != 1:
            raise UnsupportedGraph(
                f"cannot tell which value live at node {boundary} continues into {value.name}: "
                f"candidates {[n.name for n in found]}"
            )
        value = matching[0]
    return value


def _hidden_exit(nodes: list[fx.Node], pos: dict[fx.Node, int], chain_start: int, chain_stop: int) -> fx.Node:
    """The chain-defined tensor used after the chain that is fewest uses away from the output."""
    exits = [
        n for n in nodes[chain_start:chain_stop]
        if tensor_meta(n) is not None and any(pos[u] >= chain_stop for u in n.users)
    ]
    if not exits:
        raise UnsupportedGraph("no tensor leaves the block chain")
    distance = {n: _uses_to_output(n, nodes[-1]) for n in exits}
    best = min(distance.values())
    nearest = [n for n in exits if distance[n] == best]
    if len(nearest) != 1:
        raise UnsupportedGraph(f"cannot tell the hidden stream among chain outputs {[n.name for n in nearest]}")
    return nearest[0]


def _uses_to_output(start: fx.Node, output: fx.Node) -> float:
    queue, seen = deque([(start, 0)]), {start}
    while queue:
        node, depth = queue.popleft()
        if node is output:
            return depth
        for user in node.users:
            if user not in seen:
                seen.add(user)
                queue.append((user, depth + 1))
    return float("inf")
