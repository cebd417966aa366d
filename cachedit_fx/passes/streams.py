"""Stream analysis over a block chain: which value continues which across block boundaries.

A stream is a value carried from block to block (hidden states, encoder hidden states).
Matching is by dataflow, one block boundary at a time: the value that continues ``v`` across
a boundary is its nearest ancestor live there; shape and dtype only break ties.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterable

import torch.fx as fx

from cachedit_fx.passes.dataflow import is_module_state, nearest_ancestors, same_layout, tensor_meta
from cachedit_fx.passes.errors import UnsupportedGraph


@dataclass(frozen=True)
class StreamPair:
    """A value a region hands on (``middle_output``) and the region input it continues
    (``head_value``)."""

    middle_output: str
    head_value: str


def match_streams(
    handed_on: Iterable[fx.Node], boundaries: list[int], live_at: Callable[[int], list[fx.Node]],
    pos: dict[fx.Node, int], where: str,
) -> list[StreamPair]:
    """Pair each value a region hands on with the region input it continues (traced back
    across ``boundaries``, descending); each must keep its shape and dtype, and no input may
    be continued twice."""
    pairs = []
    for value in handed_on:
        if tensor_meta(value) is None:
            raise UnsupportedGraph(f"{where} hands on a non-tensor value {value.name}")
        partner = trace_stream(value, boundaries, live_at, pos)
        if not same_layout(value, partner):
            raise UnsupportedGraph(f"{where}: stream {partner.name} -> {value.name} changes shape or dtype")
        pairs.append(StreamPair(value.name, partner.name))
    partners = [p.head_value for p in pairs]
    if len(set(partners)) != len(partners):
        raise UnsupportedGraph(f"{where}: two values handed on continue the same input: {partners}")
    return pairs


def live_values(nodes: list[fx.Node], pos: dict[fx.Node, int]) -> Callable[[int], list[fx.Node]]:
    """``live_at(boundary)``: values (module state excluded) defined before ``boundary`` and
    used at or after it."""

    def live_at(boundary: int) -> list[fx.Node]:
        return [n for n in nodes[:boundary] if not is_module_state(n) and any(pos[u] >= boundary for u in n.users)]

    return live_at


def trace_stream(value: fx.Node, boundaries: list[int], live_at, pos: dict[fx.Node, int]) -> fx.Node:
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


def hidden_exit(nodes: list[fx.Node], pos: dict[fx.Node, int], chain_start: int, chain_stop: int) -> fx.Node:
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
