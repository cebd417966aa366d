"""Multiply-accumulate work of graph nodes, estimated from their example values.

Counts the ops that carry a transformer's compute (linear layers, matmuls, convolutions,
attention); everything else counts zero. Symbolic sizes count by their hint (1 when they
have none), so the figures rank block lists but are not exact for dynamic shapes.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.fx as fx

from cachedit_fx.passes.alias_classes import op_name
from cachedit_fx.passes.dataflow import tensor_meta

_MATMULS = frozenset({"matmul", "bmm", "mm", "baddbmm", "addmm", "addbmm"})
_CONVOLUTIONS = frozenset({"conv1d", "conv2d", "conv3d", "_convolution", "convolution"})


def _size(value: Any) -> int:
    if isinstance(value, int):
        return value
    hint = getattr(getattr(value, "node", None), "hint", None)
    return int(hint) if hint is not None else 1


def numel_hint(tensor: torch.Tensor) -> int:
    return math.prod(_size(s) for s in tensor.shape)


def largest_tensor(nodes: Iterable[fx.Node], pos: dict[fx.Node, int]) -> fx.Node:
    """The tensor node with the most elements (by ``numel_hint``), the latest among equals."""
    return max(nodes, key=lambda n: (numel_hint(tensor_meta(n)), pos[n]))


def _arg_meta(node: fx.Node, index: int) -> torch.Tensor | None:
    arg = node.args[index] if index < len(node.args) else None
    return tensor_meta(arg) if isinstance(arg, fx.Node) else None


def node_flops(node: fx.Node) -> int:
    """Floating-point operations of one call of ``node`` (2 per multiply-accumulate)."""
    out = tensor_meta(node) if node.op in ("call_function", "call_method") else None
    if out is None:
        return 0
    name = op_name(node)
    if name == "linear" or name in _MATMULS:
        reduced = _arg_meta(node, 1 if name in ("linear", "baddbmm", "addmm", "addbmm") else 0)
        return 2 * numel_hint(out) * _size(reduced.shape[-1]) if reduced is not None and reduced.dim() else 0
    if name in _CONVOLUTIONS:
        weight = _arg_meta(node, 1)
        return 2 * numel_hint(out) * math.prod(_size(s) for s in weight.shape[1:]) if weight is not None else 0
    if name == "scaled_dot_product_attention":
        query, key = _arg_meta(node, 0), _arg_meta(node, 1)
        return 4 * numel_hint(query) * _size(key.shape[-2]) if query is not None and key is not None else 0
    return 0


def total_flops(nodes: Iterable[fx.Node]) -> int:
    return sum(node_flops(n) for n in nodes)
