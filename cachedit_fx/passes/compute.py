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


def _arg_meta(node: fx.Node, index: int) -> torch.Tensor | None:
    args = list(node.args)
    if index >= len(args) or not isinstance(args[index], fx.Node):
        return None
    return tensor_meta(args[index])


def node_flops(node: fx.Node) -> int:
    """Floating-point operations of one call of ``node`` (2 per multiply-accumulate)."""
    if node.op not in ("call_function", "call_method"):
        return 0
    out = tensor_meta(node)
    if out is None:
        return 0
    name = op_name(node)
    if name == "linear":
        weight = _arg_meta(node, 1)
        return 2 * numel_hint(out) * _size(weight.shape[-1]) if weight is not None else 0
    if name in _MATMULS:
        first = _arg_meta(node, 1 if name in ("baddbmm", "addmm", "addbmm") else 0)
        return 2 * numel_hint(out) * _size(first.shape[-1]) if first is not None and first.dim() else 0
    if name in _CONVOLUTIONS:
        weight = _arg_meta(node, 1)
        return 2 * numel_hint(out) * math.prod(_size(s) for s in weight.shape[1:]) if weight is not None else 0
    if name == "scaled_dot_product_attention":
        query, key = _arg_meta(node, 0), _arg_meta(node, 1)
        if query is None or key is None:
            return 0
        return 4 * numel_hint(query) * _size(key.shape[-2])
    return 0


def total_flops(nodes: Iterable[fx.Node]) -> int:
    return sum(node_flops(n) for n in nodes)
