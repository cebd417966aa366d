"""Cut an ATen graph at its first ``torch.cond`` into the part before it, the branches, and the
part after it, so each can be compiled apart and the ``cond`` dispatched at run time (where
CUDA-graph trees capture it as a conditional node, ``runtime/cond_parts.py``). The part after
holds the graph's later ``cond``s (DBPrune has one per block): cut it again (``holds_cond``).

Assumes: a functional ATen graph (AOTAutograd's inference graph, input mutations kept as
``copy_`` on placeholders) with one or more ``torch.ops.higher_order.cond`` nodes, whose
branches are ``get_attr`` submodules and whose results are read only through ``getitem``.
Guarantees: ``before`` takes every graph input and returns, in order, ``crossing`` (the values
it defines that the ``cond`` or ``after`` reads); ``after`` takes ``after_inputs`` (graph inputs and
crossing values), then the ``cond`` outputs listed in ``cond_results``, and returns what the
graph returns; node order and meta are kept; ``get_attr`` constants are copied into the part
that reads them. No node is run.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from cachedit_fx.passes.split_pieces import subgraph_module

COND = torch.ops.higher_order.cond


@dataclass(frozen=True)
class CondSplit:
    """The parts of a graph around its ``cond``; values are named by the original nodes."""

    before: fx.GraphModule
    true_branch: fx.GraphModule
    false_branch: fx.GraphModule
    after: fx.GraphModule
    inputs: tuple[str, ...]
    """The graph's placeholders, in order (``before``'s inputs)."""
    crossing: tuple[str, ...]
    """``before``'s outputs, in order."""
    predicate: str
    operands: tuple[str, ...]
    """The ``cond``'s predicate and operands, by name (graph inputs or crossing values)."""
    after_inputs: tuple[str, ...]
    """``after``'s first inputs: graph inputs and crossing values, by name."""
    cond_results: tuple[int, ...]
    """``after``'s last inputs: the ``cond``'s outputs it reads, by output index (ascending)."""

    def positions(self) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
        """Where the predicate, each operand and each of ``after``'s inputs sit among the run's
        values: the graph inputs, then ``before``'s outputs, then the ``cond``'s outputs."""
        slots = {name: k for k, name in enumerate((*self.inputs, *self.crossing))}
        return (slots[self.predicate], tuple(slots[name] for name in self.operands),
                tuple(slots[name] for name in self.after_inputs) + tuple(len(slots) + k for k in self.cond_results))


COND_RESULT = "{}_result_{}"
"""The name of output k of the ``cond`` node named so among ``after``'s placeholders."""


class NoCond(ValueError):
    """The graph holds no ``torch.cond``, or one whose results it reads other than by index."""


def holds_cond(gm: fx.GraphModule) -> bool:
    return any(n.op == "call_function" and n.target is COND for n in gm.graph.nodes)


def split_at_cond(gm: fx.GraphModule) -> CondSplit:
    nodes = list(gm.graph.nodes)
    cond = next((n for n in nodes if n.op == "call_function" and n.target is COND), None)
    if cond is None:
        raise NoCond("expected a torch.cond in the program, found none")
    at = nodes.index(cond)
    predicate, true_attr, false_attr, operands = cond.args
    results = [n for n in cond.users if n.op == "call_function" and n.target is operator.getitem]
    if len(results) != len(cond.users):
        raise NoCond("the torch.cond's results are used other than through getitem")
    placeholders = [n for n in nodes if n.op == "placeholder"]
    output = nodes[-1]
    before_nodes = [n for n in nodes[:at] if n.op in ("call_function", "call_method", "call_module")]
    after_nodes = [n for n in nodes[at + 1:] if n.op in ("call_function", "call_method", "call_module")
                   and n not in results]
    after_set = set(after_nodes)

    def read_later(node: fx.Node) -> bool:
        return any(user in after_set or user is output for user in node.users)

    crossing = [n for n in before_nodes if read_later(n) or cond in n.users]
    after_inputs = [n for n in (*placeholders, *crossing) if read_later(n)]
    results.sort(key=lambda n: n.args[1])
    result_names = {n: COND_RESULT.format(cond.name, n.args[1]) for n in results}
    before = subgraph_module(gm, placeholders, before_nodes, lambda env: tuple(env[n] for n in crossing))
    after = subgraph_module(gm, [*after_inputs, *results], after_nodes,
                            lambda env: fx.map_arg(output.args[0], lambda n: env[n]), result_names)
    return CondSplit(
        before=before, true_branch=getattr(gm, true_attr.target), false_branch=getattr(gm, false_attr.target),
        after=after, inputs=tuple(n.name for n in placeholders), crossing=tuple(n.name for n in crossing),
        predicate=predicate.name, operands=tuple(n.name for n in operands),
        after_inputs=tuple(n.name for n in after_inputs), cond_results=tuple(n.args[1] for n in results))
