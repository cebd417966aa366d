"""Dataflow queries over a graph in program order (liveness, nearest ancestors, example values).

All positions index ``list(graph.nodes)``; the output node counts as a use at its position.
"""

from __future__ import annotations

import re
from typing import Callable, Iterable

import torch
import torch.fx as fx


def node_positions(graph: fx.Graph) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(graph.nodes)}


def live_across(nodes: list[fx.Node], pos: dict[fx.Node, int], cut: int, start: int = 0) -> list[fx.Node]:
    """Values defined at positions ``start..cut-1`` (placeholders excluded) with a use at or after ``cut``."""
    return [n for n in nodes[start:cut] if n.op != "placeholder" and any(pos[u] >= cut for u in n.users)]


def nearest_ancestors(
    start: fx.Node, candidates: Iterable[fx.Node], may_cross: Callable[[fx.Node], bool]
) -> list[fx.Node]:
    """All candidates at the first depth holding any of a backward breadth-first walk from
    ``start`` that passes only through nodes for which ``may_cross`` holds."""
    wanted = set(candidates)
    frontier, seen = [start], {start}
    while frontier:
        following = []
        for node in frontier:
            for arg in node.all_input_nodes:
                if arg not in seen and (arg in wanted or may_cross(arg)):
                    following.append(arg)
                seen.add(arg)
        found = [n for n in following if n in wanted]
        if found:
            return found
        frontier = following
    return []


def tensor_meta(node: fx.Node) -> torch.Tensor | None:
    value = node.meta.get("example_value", node.meta.get("val"))
    return value if isinstance(value, torch.Tensor) else None


def same_layout(a: fx.Node, b: fx.Node) -> bool:
    """Same shape (symbolically, by expression) and dtype."""
    ta, tb = tensor_meta(a), tensor_meta(b)
    return (ta is not None and tb is not None and ta.dtype == tb.dtype
            and [str(s) for s in ta.shape] == [str(s) for s in tb.shape])


def is_module_state(node: fx.Node) -> bool:
    """A placeholder lifted from the module itself (parameter or buffer), not a call input: a
    parameter, or an attribute of the traced forward's module (``L['self'].…``, or
    ``L['module'].…`` when a hook wrapper such as accelerate's calls the forward)."""
    if node.op != "placeholder":
        return False
    grapharg = node.meta.get("grapharg")
    if isinstance(getattr(grapharg, "example", None), torch.nn.Parameter):
        return True
    source = getattr(grapharg, "source", None)
    return source is not None and re.match(r"L\['[^']+'\]\.", source.name) is not None
