"""Split a graph into consecutive pieces, each its own ``GraphModule``.

Assumes: placeholders come first; ``ranges`` cover every call node in order.
Guarantees: original node order inside each piece; a piece's inputs are the values it uses
that it does not define (in order of first use), its outputs are the values later pieces or
the graph output use (in definition order) plus any ``extra_outputs``, always as a tuple.
The returned parent graph has the original placeholders (same names and meta), calls
``self.<piece>`` for each piece, and names each piece-output ``getitem`` after the original
node it carries, so later passes can find values by their original names.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx


@dataclass(frozen=True)
class PieceRange:
    name: str
    start: int
    stop: int


def split_into_pieces(
    gm: fx.GraphModule, ranges: list[PieceRange], extra_outputs: dict[str, list[str]] | None = None
) -> fx.GraphModule:
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    by_name = {n.name: n for n in nodes}
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if nodes[: len(placeholders)] != placeholders:
        raise AssertionError("placeholders must precede all other nodes")
    output_node = nodes[-1]
    extra_outputs = extra_outputs or {}

    parent = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for ph in placeholders:
        new = parent.placeholder(ph.name, type_expr=ph.type)
        new.meta = dict(ph.meta)
        env[ph] = new

    root = fx.GraphModule(gm, fx.Graph())
    for piece in ranges:
        members = [n for n in nodes[piece.start : piece.stop] if n.op not in ("placeholder", "output")]
        member_set = set(members)
        inputs: list[fx.Node] = []
        for node in members:
            for arg in node.all_input_nodes:
                if arg not in member_set and arg not in inputs:
                    inputs.append(arg)
        extra = [by_name[name] for name in extra_outputs.get(piece.name, [])]
        outputs = [
            n for n in members
            if any(pos[u] >= piece.stop or u is output_node for u in n.users) or n in extra
        ]
        outputs += [n for n in extra if n not in outputs]
        sub = fx.Graph()
        sub_env: dict[fx.Node, fx.Node] = {}
        for arg in inputs:
            ph = sub.placeholder(arg.name)
            ph.meta = dict(arg.meta)
            sub_env[arg] = ph
        for node in members:
            sub_env[node] = sub.node_copy(node, lambda a: sub_env[a])
        sub.output(tuple(sub_env[o] for o in outputs))
        piece_gm = fx.GraphModule(gm, sub, class_name=f"Piece_{piece.name}")
        root.add_submodule(piece.name, piece_gm)
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
    for node in parent.graph.nodes:
        if node.op != "call_module":
            continue
        module = parent.get_submodule(node.target)
        if isinstance(module, fx.GraphModule):
            found.append((parent, node.target, module))
        else:
            region = getattr(module, "region", None)
            if isinstance(region, fx.GraphModule):
                found.append((module, "region", region))
    return found
