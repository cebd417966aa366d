"""Split a graph into consecutive pieces, each its own ``GraphModule``.

Assumes: placeholders come first; ``ranges`` cover every call node in order.
Guarantees: original node order inside each piece; a piece's inputs are the values it uses
that it does not define (in order of first use), its outputs are the values later pieces or
the graph output use, or that ``extra_outputs`` names, in definition order, always as a tuple.
The returned parent graph has the original placeholders (same names and meta), calls
``self.<piece>`` for each piece, and names each piece-output ``getitem`` after the original
node it carries, so later passes can find values by their original names.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.fx as fx


@dataclass(frozen=True)
class PieceRange:
    name: str
    start: int
    stop: int


def subgraph_module(owner: fx.GraphModule, inputs: Iterable[fx.Node], members: Iterable[fx.Node],
                    outputs: Callable[[dict[fx.Node, fx.Node]], object], names: dict[fx.Node, str] | None = None,
                    class_name: str = "GraphModule") -> fx.GraphModule:
    """A graph of ``members`` (in order) reading ``inputs`` as placeholders (meta kept, named by
    ``names`` or as the node) and returning ``outputs(env)``; ``get_attr`` constants it reads
    are copied in."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for node in inputs:
        env[node] = graph.placeholder((names or {}).get(node, node.name))
        env[node].meta = dict(node.meta)

    def look_up(node: fx.Node) -> fx.Node:
        if node not in env and node.op == "get_attr":
            env[node] = graph.node_copy(node)
        return env[node]

    for node in members:
        env[node] = graph.node_copy(node, look_up)
    graph.output(outputs(env))
    return fx.GraphModule(owner, graph, class_name=class_name)


def split_into_pieces(
    gm: fx.GraphModule, ranges: list[PieceRange], extra_outputs: dict[str, list[str]] | None = None
) -> fx.GraphModule:
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if nodes[: len(placeholders)] != placeholders:
        raise AssertionError("placeholders must precede all other nodes")
    output_node = nodes[-1]
    parent = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for ph in placeholders:
        env[ph] = parent.placeholder(ph.name, type_expr=ph.type)
        env[ph].meta = dict(ph.meta)

    root = fx.GraphModule(gm, fx.Graph())
    for piece in ranges:
        members = [n for n in nodes[piece.start : piece.stop] if n.op not in ("placeholder", "output")]
        member_set = set(members)
        inputs = list(dict.fromkeys(a for n in members for a in n.all_input_nodes if a not in member_set))
        extra = set((extra_outputs or {}).get(piece.name, ()))
        outputs = [n for n in members
                   if n.name in extra or any(pos[u] >= piece.stop or u is output_node for u in n.users)]
        root.add_submodule(piece.name, subgraph_module(
            gm, inputs, members, lambda made: tuple(made[o] for o in outputs), class_name=f"Piece_{piece.name}"))
        call = parent.create_node(
            "call_module", piece.name, tuple(env[a] for a in inputs), name=f"cachedit_call_{piece.name}"
        )
        for i, out in enumerate(outputs):
            item = parent.create_node("call_function", operator.getitem, (call, i), name=out.name)
            if item.name != out.name:
                raise AssertionError(f"value name {out.name!r} clashes in the piecewise program")
            item.meta = dict(out.meta)
            env[out] = item
    parent.output(fx.map_arg(output_node.args[0], lambda a: env[a]))
    result = fx.GraphModule(root, parent, class_name="PiecewiseProgram")
    result.meta.update(gm.meta)
    return result


def piece_io(parent: fx.GraphModule, piece: str) -> tuple[list[str], list[str]]:
    """Names of the parent-graph values passed into and taken out of ``piece``."""
    call = next(n for n in parent.graph.nodes if n.op == "call_module" and n.target == piece)
    outs = sorted((u for u in call.users if u.target is operator.getitem), key=lambda u: u.args[1])
    return [a.name for a in call.args], [u.name for u in outs]


def piece_modules(parent: fx.GraphModule) -> list[tuple[torch.nn.Module, str, fx.GraphModule]]:
    """Every piece of a piecewise program as ``(owner, attribute, piece)``: the parent's
    ``GraphModule`` submodules and the ``region`` of the steps that wrap one."""
    found = []
    for node in parent.graph.find_nodes(op="call_module"):
        module = parent.get_submodule(node.target)
        region = getattr(module, "region", None)
        if isinstance(module, fx.GraphModule):
            found.append((parent, node.target, module))
        elif isinstance(region, fx.GraphModule):
            found.append((module, "region", region))
    return found
