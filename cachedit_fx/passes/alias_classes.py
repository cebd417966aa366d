"""Which values of a graph may share memory, and which of those may be written in place.

Conservative by construction: an op joins its result to the class of every input it reads
unless it is known to return a freshly allocated tensor, so an unknown op (``to``,
``contiguous``, ``float``, eval-mode ``dropout``: each may return its input) counts as an
alias. An op that may write in place (``setitem``, a trailing-underscore method, an
``i``-operator, ``out=``, a mutable schema) marks the classes of all its inputs as written.
"""

from __future__ import annotations

import operator

import torch.fx as fx

FRESH_RESULTS = frozenset({
    "add", "sub", "mul", "truediv", "floordiv", "mod", "neg", "pow", "matmul", "bmm", "baddbmm", "addmm",
    "linear", "conv1d", "conv2d", "conv3d", "einsum", "layer_norm", "rms_norm", "group_norm", "softmax",
    "log_softmax", "scaled_dot_product_attention", "silu", "gelu", "relu", "sigmoid", "tanh", "exp", "log",
    "sin", "cos", "sqrt", "rsqrt", "erf", "abs", "mean", "sum", "amax", "amin", "where", "lerp", "cat",
    "stack", "clone", "empty_like", "zeros_like", "ones_like", "full_like", "empty", "zeros", "ones",
    "full", "arange", "new_zeros", "new_empty", "new_ones", "new_full", "region_copy",
})
_INPLACE_OPERATORS = frozenset({
    operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.iand, operator.ior, operator.ixor, operator.ilshift, operator.irshift,
})


def op_name(node: fx.Node) -> str:
    """``add`` for ``operator.add``, ``torch.add``, ``Tensor.add`` and ``aten.add.Tensor``."""
    return node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "").split(".")[0]


def writes_in_place(node: fx.Node) -> bool:
    if node.op not in ("call_function", "call_method"):
        return False
    name = op_name(node)
    schema = getattr(node.target, "_schema", None)
    return (node.target in _INPLACE_OPERATORS or "out" in node.kwargs
            or (name.endswith("_") and not name.startswith("__"))
            or (schema is not None and schema.is_mutable))


def input_nodes(node: fx.Node) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg((node.args, node.kwargs), found.append)
    return found


class AliasClasses:
    """Union-find of the values of ``graph`` (module docstring); ``written`` holds the roots of
    the classes some op may write."""

    def __init__(self, graph: fx.Graph) -> None:
        self.parent: dict[fx.Node, fx.Node] = {}
        written: list[fx.Node] = []
        for node in graph.nodes:
            self.parent[node] = node
            if node.op not in ("call_function", "call_method"):
                continue
            inputs = input_nodes(node)
            if op_name(node) not in FRESH_RESULTS:
                for value in inputs:
                    self.union(node, value)
            if writes_in_place(node):
                written.extend(inputs)
        self.written = {self.find(n) for n in written}

    def find(self, node: fx.Node) -> fx.Node:
        while self.parent[node] is not node:
            self.parent[node] = self.parent[self.parent[node]]
            node = self.parent[node]
        return node

    def union(self, a: fx.Node, b: fx.Node) -> None:
        root_a, root_b = self.find(a), self.find(b)
        if root_a is not root_b:
            self.parent[root_a] = root_b

    def may_be_written(self, node: fx.Node) -> bool:
        return self.find(node) in self.written
