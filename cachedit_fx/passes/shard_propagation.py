"""Rewrite a Dynamo graph so the chain's blocks run on sharded values.

Assumes: torch-level IR with static shapes and fake ``example_value`` on every node; a
``ShardPlan`` naming what starts sharded (column-parallel linears for TP, the chain entry
values for Ulysses). Walks the graph once in order, giving every value of a chain block a
layout (replicated, or ``Sharded``) and emitting each op on local shards: views get local
sizes, replicated operands that meet a sharded one are cut to the local chunks, reductions
over a sharded dim are all-reduced, row-parallel linears all-reduce their partial sums,
attention follows the plan's kind (heads already split for TP; Ulysses all-to-all for CP).
Guarantees: any op without a sharding rule, and every use outside the chain, gets the
full value back through an all-gather (counted in the report), so the rewritten program
computes the same function as the original; an in-place op on a sharded value raises
``ParallelismError`` (symbolic shapes are refused by the backend before any pass). The new graph's example values are refreshed.
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx

from cachedit_fx.passes import CHAIN_META_KEY, SHARDING_META_KEY
from cachedit_fx.passes.collective_nodes import CollectiveEmitter
from cachedit_fx.passes.errors import ParallelismError
from cachedit_fx.passes.fake_values import refresh_example_values
from cachedit_fx.passes.find_block_chain import analyze_block_chain
from cachedit_fx.shard_layout import Sharded, local_length, map_view, split_segments

log = logging.getLogger("cachedit_fx")


class _NoRule(Exception):
    """This op cannot run on the given layouts; the rewriter gathers its inputs instead."""


ParamShard = Callable[[fx.Node, int, tuple[int, ...]], Optional[fx.Node]]
"""(original placeholder, dim, segments) -> a new placeholder holding this rank's shard, or
``None`` when the weight is not a parameter (it is then cut at run time)."""


@dataclass(frozen=True)
class ShardPlan:
    kind: str
    """"tp" (attention heads sharded by column-parallel projections) or "cp" (Ulysses)."""
    world: int
    rank: int
    group_name: str
    chain: frozenset[str]
    """Names of the nodes inside the chain's blocks."""
    columns: frozenset[str] = frozenset()
    """TP: linears computed column-parallel (their output's last dim sharded)."""
    entry: dict[str, Sharded] = field(default_factory=dict)
    """CP: values defined before the chain, sharded where the chain first uses them."""


@dataclass
class ShardingReport:
    """What a parallel pass did to one graph."""

    kind: str
    world: int
    columns: list[str] = field(default_factory=list)
    rows: list[str] = field(default_factory=list)
    collectives: dict[str, int] = field(default_factory=dict)
    gathers: list[str] = field(default_factory=list)
    """Ops that ran on gathered (full) inputs because no rule sharded them."""
    weight_bytes_full: int = 0
    """Bytes of every parameter the graph reads, unsharded."""
    weight_bytes_local: int = 0
    """Bytes of the parameters this rank reads: its shards and the unsharded rest."""
    released_bytes: int = 0
    """Bytes of full parameters the graph no longer reads (freed with ``release_full_weights``)."""


_POINTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.pow, torch.rsqrt, torch.sqrt, torch.exp,
    torch.tanh, torch.sigmoid, torch.sin, torch.cos, torch.abs, torch.erf, torch.clamp, torch.relu,
    torch.nn.functional.silu, torch.nn.functional.gelu, torch._C._nn.gelu, torch.nn.functional.dropout,
    torch.nn.functional.relu,
}
_POINTWISE_METHODS = {"add", "sub", "mul", "div", "pow", "rsqrt", "sqrt", "exp", "tanh", "sigmoid", "neg",
                      "abs", "clamp", "float", "half", "bfloat16", "to", "type_as", "contiguous", "clone"}
UNARY_METHODS = {"float", "half", "bfloat16", "to", "type_as", "contiguous", "clone"}
"""Their tensor arguments after the first only give a dtype or device."""
LIKE_FUNCTIONS = {torch.empty_like, torch.zeros_like, torch.ones_like}
_LINEARS = {torch._C._nn.linear, torch.nn.functional.linear}
_SDPA = {torch._C._nn.scaled_dot_product_attention, torch.nn.functional.scaled_dot_product_attention}
_SPLITS = {"chunk", "split", "split_with_sizes", "tensor_split", "unbind"}


def is_linear(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _LINEARS


def is_attention(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _SDPA


_ATTENTION_ARGUMENTS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def attention_call(node: fx.Node) -> dict[str, Any]:
    """The arguments of a scaled_dot_product_attention node by name."""
    call = dict(zip(_ATTENTION_ARGUMENTS, node.args))
    call.update(node.kwargs)
    return call


def is_pointwise(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _POINTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in _POINTWISE_METHODS


def shape_of(node: Any) -> tuple[int, ...]:
    value = node.meta.get("example_value") if isinstance(node, fx.Node) else None
    if not isinstance(value, torch.Tensor):
        raise _NoRule(f"{getattr(node, 'name', node)} is not a tensor")
    return tuple(value.shape)


class ShardRewriter:
    def __init__(self, gm: fx.GraphModule, plan: ShardPlan, param_shard: ParamShard, report: ShardingReport):
        self.old = gm
        self.plan = plan
        self.param_shard = param_shard
        self.report = report
        self.graph = fx.Graph()
        self.env: dict[fx.Node, Any] = {}
        self.layout: dict[fx.Node, Any] = {}
        self.gathered: dict[fx.Node, fx.Node] = {}
        self.entry_local: dict[fx.Node, fx.Node] = {}
        self.first_body: Optional[fx.Node] = None
        self.emitter = CollectiveEmitter(self.graph, plan.world, plan.rank, plan.group_name, {}, report.collectives)

    # ------------------------------------------------------------------ driver
    def run(self) -> fx.GraphModule:
        deferred: list[fx.Node] = []
        for node in self.old.graph.nodes:
            if node.op != "placeholder" and deferred:
                for entry in deferred:
                    self._enter(entry)
                deferred.clear()
            self.emitter.meta = _inherited_meta(node)
            if node.op == "placeholder":
                new = self.graph.placeholder(node.name, type_expr=node.type)
                new.meta = dict(node.meta)
                self.env[node] = new
            elif node.op == "output":
                self.graph.output(fx.map_arg(node.args[0], self.full))
            elif node.op == "get_attr":
                self.env[node] = self.graph.get_attr(node.target)
            elif node.name in self.plan.chain:
                self._rewrite(node)
            else:
                self.env[node] = self._copy(node, fx.map_arg(node.args, self.full), fx.map_arg(node.kwargs, self.full))
            if node.op != "placeholder" and self.first_body is None and isinstance(self.env.get(node), fx.Node):
                self.first_body = self.env[node]
            if node.name in self.plan.entry:
                if node.op == "placeholder":
                    deferred.append(node)
                else:
                    self._enter(node)
        new_gm = fx.GraphModule(self.old, self.graph)
        new_gm.meta.update(self.old.meta)
        refresh_example_values(new_gm)
        return new_gm

    def _enter(self, node: fx.Node) -> None:
        """Cut a chain entry value to this rank's chunks right after it is defined (placeholders:
        after the last placeholder), as a copy with canonical strides so the first block sees
        the same input layout as the others; uses before the chain keep the full value."""
        self.emitter.meta = _inherited_meta(node)
        local = self.emitter.local_slice(self.env[node], self.plan.entry[node.name])
        self.entry_local[node] = self.emitter.call(torch.clone, local, memory_format=torch.contiguous_format)
        self.layout[node] = None

    def new_placeholder(self, name: str, meta: dict[str, Any]) -> fx.Node:
        anchor = self.first_body or next((n for n in self.graph.nodes if n.op != "placeholder"), None)
        if anchor is None:
            node = self.graph.placeholder(name)
        else:
            with self.graph.inserting_before(anchor):
                node = self.graph.placeholder(name)
        node.meta.update(meta)
        return node

    # ------------------------------------------------------------------ values
    def spec(self, old: Any) -> Any:
        if not isinstance(old, fx.Node):
            return None
        if old in self.entry_local:
            return self.plan.entry[old.name]
        return self.layout.get(old)

    def local(self, old: Any) -> Any:
        """The value as this rank holds it inside the chain."""
        if isinstance(old, fx.Node):
            return self.entry_local.get(old, self.env[old])
        return old

    def full(self, old: fx.Node) -> Any:
        """The value replicated (all-gathered once if it is sharded)."""
        spec = self.layout.get(old)
        if not isinstance(spec, Sharded):
            if isinstance(spec, tuple) and any(isinstance(s, Sharded) for s in spec):
                raise ParallelismError(f"{old.name} is a tuple of sharded values used where the full value is needed")
            return self.env[old]
        if old not in self.gathered:
            self.gathered[old] = self.emitter.all_gather(self.env[old], spec, shape_of(old))
        return self.gathered[old]

    def sliced(self, old: Any, spec: Sharded) -> Any:
        """A replicated operand cut to ``spec``'s local chunks (unchanged if it broadcasts)."""
        if not isinstance(old, fx.Node) or not isinstance(old.meta.get("example_value"), torch.Tensor):
            return self.local(old)
        own = self.spec(old)
        if isinstance(own, Sharded):
            if own != spec:
                raise _NoRule(f"{old.name} is sharded as {own}, needed {spec}")
            return self.local(old)
        shape = shape_of(old)
        if spec.dim < 0 or spec.dim >= len(shape) or shape[spec.dim] == 1:
            return self.local(old)
        if shape[spec.dim] != spec.length:
            raise _NoRule(f"{old.name} has length {shape[spec.dim]} along the sharded dim, not {spec.length}")
        return self.emitter.local_slice(self.local(old), spec)

    def _copy(self, old: fx.Node, args: Any, kwargs: Any, target: Any = None) -> fx.Node:
        """``old`` re-emitted (same name) on new arguments."""
        new = self.graph.create_node(old.op, target if target is not None else old.target, args, kwargs,
                                     name=old.name)
        new.meta.update(_inherited_meta(old))
        return new

    # ------------------------------------------------------------------ dispatch
    def _rewrite(self, old: fx.Node) -> None:
        inputs = old.all_input_nodes
        sharded_in = any(self._holds_shards(self.spec(a)) for a in inputs)
        is_column = old.name in self.plan.columns
        if not sharded_in and not is_column:
            self.env[old] = self._copy(old, fx.map_arg(old.args, self.local), fx.map_arg(old.kwargs, self.local))
            self.layout[old] = None
            return
        if sharded_in and _mutates(old) and old.target is not operator.setitem:
            raise ParallelismError(f"in-place op {old.name} ({old.target}) on a sharded value")
        try:
            self.env[old], self.layout[old] = self._apply_rule(old)
        except _NoRule as reason:
            if old.target is operator.setitem:
                raise ParallelismError(f"cannot shard the in-place write {old.name}: {reason}") from None
            log.debug("cachedit parallel: %s runs on gathered inputs (%s)", old.name, reason)
            self.report.gathers.append(f"{old.name}: {reason}")
            self.env[old] = self._copy(old, fx.map_arg(old.args, self.full), fx.map_arg(old.kwargs, self.full))
            self.layout[old] = None

    @staticmethod
    def _holds_shards(spec: Any) -> bool:
        return isinstance(spec, Sharded) or (isinstance(spec, tuple) and any(isinstance(s, Sharded) for s in spec))

    def _apply_rule(self, old: fx.Node) -> tuple[Any, Any]:
        if old.op == "call_function":
            target = old.target
            if target in _LINEARS:
                return self._linear(old)
            if target in _SDPA:
                return self._attention(old)
            if target is operator.getitem:
                return self._getitem(old)
            if target is operator.setitem:
                return self._setitem(old)
            if target in (torch.cat, torch.concat, torch.stack):
                return self._cat(old)
            if target in LIKE_FUNCTIONS:
                return self._copy(old, fx.map_arg(old.args, self.local), old.kwargs), self.spec(old.args[0])
            if target is torch.rms_norm or target is torch.nn.functional.rms_norm:
                return self._rms_norm(old)
            if target is torch.nn.functional.layer_norm:
                return self._layer_norm(old)
            if target in (torch.view_as_complex, torch.view_as_real):
                return self._complex_view(old)
            if target in _POINTWISE_FUNCTIONS:
                return self._pointwise(old)
            if target in (torch.sum, torch.mean):
                return self._reduction(old)
        elif old.op == "call_method":
            name = old.target
            if name in ("view", "reshape"):
                return self._reshape(old)
            if name == "unflatten":
                return self._unflatten(old)
            if name == "flatten":
                return self._plain_view(old)
            if name in ("permute", "transpose", "unsqueeze", "squeeze"):
                return self._dim_view(old)
            if name in _SPLITS:
                return self._split(old)
            if name in ("sum", "mean"):
                return self._reduction(old)
            if name in ("size", "dim"):
                return old.meta["example_value"], None
            if name in _POINTWISE_METHODS:
                return self._pointwise(old)
        raise _NoRule(f"no sharding rule for {old.op} {getattr(old.target, '__name__', old.target)}")

    # ------------------------------------------------------------------ rules
    def _sharded_source(self, old: fx.Node) -> tuple[fx.Node, Sharded]:
        """``old``'s first argument and its layout, which must be a single ``Sharded``."""
        source, spec = old.args[0], self.spec(old.args[0])
        if not isinstance(spec, Sharded):
            raise _NoRule(f"{old.target} of a tuple")
        return source, spec

    def _pointwise(self, old: fx.Node) -> tuple[Any, Any]:
        out_rank = len(shape_of(old))
        operands = old.args[:1] if old.op == "call_method" and old.target in UNARY_METHODS else old.all_input_nodes
        aligned = set()
        for arg in operands:
            spec = self.spec(arg)
            if isinstance(spec, Sharded):
                aligned.add(spec.moved(spec.dim + out_rank - len(shape_of(arg))))
        if len(aligned) != 1:
            raise _NoRule(f"operands sharded differently: {aligned}")
        (out_spec,) = aligned

        def operand(arg: Any) -> Any:
            if not isinstance(arg, fx.Node) or arg not in operands:
                return self.local(arg)
            value = arg.meta.get("example_value")
            if not isinstance(value, torch.Tensor):
                return self.local(arg)
            return self.sliced(arg, out_spec.moved(out_spec.dim - (out_rank - value.dim())))

        return self._copy(old, fx.map_arg(old.args, operand), fx.map_arg(old.kwargs, operand)), out_spec

    def _linear(self, old: fx.Node) -> tuple[Any, Any]:
        x, weight = old.args[0], old.args[1]
        bias = old.args[2] if len(old.args) > 2 else old.kwargs.get("bias")
        spec, rank = self.spec(x), len(shape_of(x))
        out_features = shape_of(weight)[0]
        if spec is None and old.name in self.plan.columns:
            segments = (out_features,)
            if out_features % self.plan.world:
                raise ParallelismError(f"{old.name}: {out_features} output features do not divide over "
                                       f"tp_size {self.plan.world}")
            w = self._weight(weight, 0, segments)
            b = self._weight(bias, 0, segments) if bias is not None else None
            self.report.columns.append(old.name)
            return self._copy(old, (self.local(x), w, b), {}), Sharded(rank - 1, segments)
        if isinstance(spec, Sharded) and spec.dim == rank - 1:
            w = self._weight(weight, 1, spec.segments)
            partial = self._copy(old, (self.local(x), w, None), {})
            total = self.emitter.all_reduce_sum(partial)
            self.report.rows.append(old.name)
            return (self.emitter.call(operator.add, total, self.local(bias)) if bias is not None else total), None
        if isinstance(spec, Sharded):
            return self._copy(old, fx.map_arg(old.args, self.local), fx.map_arg(old.kwargs, self.local)), spec
        raise _NoRule("linear on a sharded tuple")

    def _weight(self, old: fx.Node, dim: int, segments: tuple[int, ...]) -> fx.Node:
        if old.op == "placeholder":
            shard = self.param_shard(old, dim, segments)
            if shard is not None:
                return shard
        return self.emitter.local_slice(self.local(old), Sharded(dim, segments))

    def _attention(self, old: fx.Node) -> tuple[Any, Any]:
        call = attention_call(old)
        q, k, v = call["query"], call["key"], call["value"]
        if len(shape_of(q)) != 4 or call.get("is_causal"):
            raise _NoRule("attention that is causal or not [B, H, L, D]")
        specs = [self.spec(t) for t in (q, k, v)]
        mask = call.get("attn_mask")
        rest = {name: value for name, value in call.items() if name not in ("query", "key", "value", "attn_mask")}
        if self.plan.kind == "tp":
            spec = specs[0]
            if not isinstance(spec, Sharded) or spec.dim != 1 or specs.count(spec) != 3:
                raise _NoRule(f"attention inputs not all split by heads: {specs}")
            local_mask = self._mask_heads(mask, spec)
            new = self._copy(old, (), dict(query=self.local(q), key=self.local(k), value=self.local(v),
                                           attn_mask=local_mask, **rest))
            return new, spec
        return self._ulysses_attention(old, q, k, v, specs, mask, rest)

    def _mask_heads(self, mask: Any, heads: Sharded) -> Any:
        if not isinstance(mask, fx.Node):
            return mask
        shape = shape_of(mask)
        return self.sliced(mask, heads.moved(len(shape) - 3)) if len(shape) >= 3 else self.local(mask)

    def _ulysses_attention(self, old: fx.Node, q: fx.Node, k: fx.Node, v: fx.Node, specs: list[Any],
                           mask: Any, rest: dict[str, Any]) -> tuple[Any, Any]:
        q_spec, k_spec, v_spec = specs
        heads = shape_of(q)[1]
        if not isinstance(q_spec, Sharded) or q_spec.dim != 2 or k_spec != v_spec:
            raise _NoRule(f"Ulysses attention needs the query split along the sequence and equal key/value layouts: {specs}")
        if k_spec is not None and (not isinstance(k_spec, Sharded) or k_spec.dim != 2):
            raise _NoRule(f"key layout {k_spec}")
        head_spec = Sharded(1, (heads,))
        em = self.emitter
        q_h = em.sequence_to_heads(self.local(q), q_spec, shape_of(q))
        if k_spec is None:
            k_h, v_h = (em.local_slice(self.local(t), head_spec) for t in (k, v))
        else:
            k_h, v_h = (em.sequence_to_heads(self.local(t), k_spec, shape_of(t)) for t in (k, v))
        local_mask = mask
        if isinstance(mask, fx.Node):
            if isinstance(self.spec(mask), Sharded):
                raise _NoRule("sharded attention mask")
            shape = shape_of(mask)
            local_mask = self.local(mask)
            if len(shape) >= 3 and shape[-3] != 1:
                local_mask = em.local_slice(local_mask, head_spec.moved(len(shape) - 3))
            if shape[-2] != 1:
                local_mask = em.rank_major(local_mask, q_spec.moved(len(shape) - 2))
            if shape[-1] != 1 and k_spec is not None:
                local_mask = em.rank_major(local_mask, k_spec.moved(len(shape) - 1))
        out_h = self._copy(old, (), dict(query=q_h, key=k_h, value=v_h, attn_mask=local_mask, **rest))
        return em.heads_to_sequence(out_h, q_spec, shape_of(old)), q_spec

    def _getitem(self, old: fx.Node) -> tuple[Any, Any]:
        source, index = old.args
        spec = self.spec(source)
        if isinstance(spec, tuple):
            return self._copy(old, (self.local(source), index), {}), spec[index]
        if not isinstance(spec, Sharded):
            raise _NoRule("getitem with a sharded index")
        new_index, out_spec = self._index(spec, shape_of(source), index)
        return self._copy(old, (self.local(source), new_index), {}), out_spec

    def _index(self, spec: Sharded, shape: Sequence[int], index: Any) -> tuple[Any, Sharded]:
        items = list(index) if isinstance(index, tuple) else [index]
        if any(isinstance(i, (fx.Node, torch.Tensor, list)) for i in items):
            raise _NoRule("advanced indexing")
        if Ellipsis in items:
            at = items.index(Ellipsis)
            used = sum(1 for i in items if i is not None and i is not Ellipsis)
            items[at:at + 1] = [slice(None)] * (len(shape) - used)
        items += [slice(None)] * (len(shape) - sum(1 for i in items if i is not None))
        in_dim = out_dim = 0
        new_items = list(items)
        result = None
        for pos, item in enumerate(items):
            if item is None:
                out_dim += 1
                continue
            if in_dim == spec.dim:
                if isinstance(item, int):
                    raise _NoRule("integer index into the sharded dim")
                new_items[pos], segments = self._local_slice_of(spec, shape[in_dim], item)
                result = Sharded(out_dim, segments)
            if not isinstance(item, int):
                out_dim += 1
            in_dim += 1
        assert result is not None
        return (tuple(new_items) if isinstance(index, tuple) else new_items[0]), result

    def _local_slice_of(self, spec: Sharded, length: int, item: slice) -> tuple[slice, tuple[int, ...]]:
        start, stop, step = item.indices(length)
        if (start, stop, step) == (0, length, 1):
            return item, spec.segments
        if step != 1:
            raise _NoRule("strided slice of the sharded dim")
        parts = split_segments(spec.segments, [b for b in (start, stop - start, length - stop) if b])
        if parts is None:
            raise _NoRule(f"slice {start}:{stop} cuts a segment of {spec.segments}")
        before = [p for p in parts][: 1 if start else 0]
        kept = parts[len(before)]
        offset = sum(local_length(p, self.plan.world, self.plan.rank) for p in before)
        return slice(offset, offset + local_length(kept, self.plan.world, self.plan.rank)), kept

    def _setitem(self, old: fx.Node) -> tuple[Any, Any]:
        target, index, value = old.args
        spec = self.spec(target)
        if not isinstance(spec, Sharded):
            raise _NoRule("write of a sharded value into a replicated tensor")
        new_index, written = self._index(spec, shape_of(target), index)
        value_shape = shape_of(value) if isinstance(value, fx.Node) and isinstance(value.meta.get("example_value"), torch.Tensor) else ()
        out_rank = len(shape_of(target)) - sum(1 for i in (index if isinstance(index, tuple) else (index,)) if isinstance(i, int))
        new_value = self.sliced(value, written.moved(written.dim - (out_rank - len(value_shape)))) if value_shape else value
        return self._copy(old, (self.local(target), new_index, new_value), {}), None

    def _cat(self, old: fx.Node) -> tuple[Any, Any]:
        tensors = old.args[0]
        dim = old.args[1] if len(old.args) > 1 else old.kwargs.get("dim", 0)
        out_shape = shape_of(old)
        dim %= len(out_shape)
        stack = old.target is torch.stack
        sharded = {self.spec(t) for t in tensors if isinstance(self.spec(t), Sharded)}
        if not stack and all(isinstance(self.spec(t), Sharded) and self.spec(t).dim == dim or
                             self.spec(t) is None for t in tensors) and any(s.dim == dim for s in sharded):
            parts, segments = [], []
            for t in tensors:
                spec = self.spec(t) or Sharded(dim, (shape_of(t)[dim],))
                parts.append(self.local(t) if self.spec(t) else self.emitter.local_slice(self.local(t), spec))
                segments.extend(spec.segments)
            return self._copy(old, (parts, dim), {}), Sharded(dim, tuple(segments))
        if len(sharded) != 1:
            raise _NoRule(f"cat of differently sharded values {sharded}")
        (spec,) = sharded
        if spec.dim == dim and not stack:
            raise _NoRule("cat along the sharded dim with other inputs")
        out_spec = spec.moved(spec.dim + 1) if stack and dim <= spec.dim else spec
        parts = [self.sliced(t, spec) for t in tensors]
        return self._copy(old, (parts, dim), {}), out_spec

    def _reshape(self, old: fx.Node) -> tuple[Any, Any]:
        source, spec = self._sharded_source(old)
        out_shape = shape_of(old)
        out_spec = map_view(spec, shape_of(source), out_shape, self.plan.world)
        if out_spec is None:
            raise _NoRule(f"view {shape_of(source)} -> {out_shape} mixes the sharded dim")
        sizes = list(old.args[1]) if len(old.args) == 2 and isinstance(old.args[1], (tuple, list)) else list(old.args[1:])
        local = local_length(out_spec.segments, self.plan.world, self.plan.rank)
        if isinstance(sizes[out_spec.dim], int) and sizes[out_spec.dim] != -1:
            sizes[out_spec.dim] = local
        return self._copy(old, (self.local(source), *sizes), {}), out_spec

    def _unflatten(self, old: fx.Node) -> tuple[Any, Any]:
        (source, spec), (_, dim, sizes) = self._sharded_source(old), old.args
        out_spec = map_view(spec, shape_of(source), shape_of(old), self.plan.world)
        if out_spec is None:
            raise _NoRule("unflatten mixes the sharded dim")
        dim %= len(shape_of(source))
        sizes = list(sizes)
        at = out_spec.dim - dim
        if 0 <= at < len(sizes) and sizes[at] != -1:
            sizes[at] = local_length(out_spec.segments, self.plan.world, self.plan.rank)
        return self._copy(old, (self.local(source), dim, tuple(sizes)), {}), out_spec

    def _plain_view(self, old: fx.Node) -> tuple[Any, Any]:
        source, spec = self._sharded_source(old)
        out_spec = map_view(spec, shape_of(source), shape_of(old), self.plan.world)
        if out_spec is None:
            raise _NoRule("flatten mixes the sharded dim")
        return self._copy(old, fx.map_arg(old.args, self.local), fx.map_arg(old.kwargs, self.local)), out_spec

    def _dim_view(self, old: fx.Node) -> tuple[Any, Any]:
        source, spec = self._sharded_source(old)
        rank = len(shape_of(source))
        name = old.target
        if name == "permute":
            dims = list(old.args[1]) if isinstance(old.args[1], (tuple, list)) else list(old.args[1:])
            new_dim = [d % rank for d in dims].index(spec.dim)
        elif name == "transpose":
            a, b = (d % rank for d in old.args[1:3])
            new_dim = b if spec.dim == a else a if spec.dim == b else spec.dim
        elif name == "unsqueeze":
            at = old.args[1] % (rank + 1)
            new_dim = spec.dim + (1 if at <= spec.dim else 0)
        else:
            new = map_view(spec, shape_of(source), shape_of(old), self.plan.world)
            if new is None:
                raise _NoRule("squeeze of the sharded dim")
            new_dim = new.dim
        return self._copy(old, fx.map_arg(old.args, self.local), fx.map_arg(old.kwargs, self.local)), spec.moved(new_dim)

    def _complex_view(self, old: fx.Node) -> tuple[Any, Any]:
        source, spec = self._sharded_source(old)
        if spec.dim >= len(shape_of(source)) - 1:
            raise _NoRule("complex view over the sharded dim")
        return self._copy(old, (self.local(source),), {}), spec

    def _split(self, old: fx.Node) -> tuple[Any, Any]:
        source, spec = self._sharded_source(old)
        rank = len(shape_of(source))
        name = old.target
        default_dim = {"chunk": 1, "split": 1, "split_with_sizes": 1, "tensor_split": 1, "unbind": 0}
        positional_dim = old.args[default_dim[name] + 1] if len(old.args) > default_dim[name] + 1 else None
        dim = old.kwargs.get("dim", positional_dim if name != "unbind" else (old.args[1] if len(old.args) > 1 else 0))
        dim = (dim or 0) % rank
        outputs = old.meta["example_value"]
        if dim != spec.dim:
            out_spec = spec.moved(spec.dim - 1) if name == "unbind" and dim < spec.dim else spec
            return (self._copy(old, fx.map_arg(old.args, self.local), fx.map_arg(old.kwargs, self.local)),
                    tuple(out_spec for _ in outputs))
        if name == "unbind":
            raise _NoRule("unbind of the sharded dim")
        parts = split_segments(spec.segments, [o.shape[dim] for o in outputs])
        if parts is None:
            raise _NoRule(f"split of the sharded dim inside a segment of {spec.segments}")
        sizes = [local_length(p, self.plan.world, self.plan.rank) for p in parts]
        new = self._copy(old, (self.local(source), sizes, dim), {}, target="split_with_sizes")
        return new, tuple(Sharded(dim, p) for p in parts)

    def _reduction(self, old: fx.Node) -> tuple[Any, Any]:
        source, spec = self._sharded_source(old)
        rank = len(shape_of(source))
        dims = old.args[1] if len(old.args) > 1 else old.kwargs.get("dim")
        keepdim = old.args[2] if len(old.args) > 2 else old.kwargs.get("keepdim", False)
        if dims is None or (len(old.args) > 2 and not isinstance(keepdim, bool)):
            raise _NoRule("full reduction")
        dims = sorted(d % rank for d in ((dims,) if isinstance(dims, int) else dims))
        if spec.dim not in dims:
            shift = 0 if keepdim else sum(1 for d in dims if d < spec.dim)
            return self._copy(old, fx.map_arg(old.args, self.local), fx.map_arg(old.kwargs, self.local)), spec.moved(spec.dim - shift)
        total = self.emitter.all_reduce_sum(self._copy(old, (self.local(source), dims, keepdim), {}, target="sum"
                                                       if old.op == "call_method" else torch.sum))
        if old.target in ("mean", torch.mean):
            full = shape_of(source)
            total = self.emitter.call(operator.truediv, total, float(math.prod(full[d] for d in dims)))
        return total, None

    def _rms_norm(self, old: fx.Node) -> tuple[Any, Any]:
        names = ("input", "normalized_shape", "weight", "eps")
        call = dict(zip(names, old.args))
        call.update(old.kwargs)
        x, spec = call["input"], self.spec(call["input"])
        if not isinstance(spec, Sharded):
            raise _NoRule("rms_norm of a tuple")
        rank, count = len(shape_of(x)), len(call["normalized_shape"])
        if spec.dim < rank - count:
            return self._copy(old, fx.map_arg(old.args, self.local), fx.map_arg(old.kwargs, self.local)), spec
        em = self.emitter
        dims = list(range(rank - count, rank))
        xf = em.method("float", self.local(x))
        squares = em.call(torch.sum, em.call(operator.mul, xf, xf), dims, True)
        mean = em.call(operator.truediv, em.all_reduce_sum(squares), float(math.prod(shape_of(x)[d] for d in dims)))
        eps = call.get("eps")
        eps = torch.finfo(old.meta["example_value"].dtype).eps if eps is None else eps
        normed = em.method("type_as", em.call(operator.mul, xf, em.call(torch.rsqrt, em.call(operator.add, mean, eps))),
                           self.local(x))
        weight = call.get("weight")
        if weight is not None:
            normed = em.call(operator.mul, normed, self.sliced(weight, spec.moved(spec.dim - (rank - count))))
        return normed, spec

    def _layer_norm(self, old: fx.Node) -> tuple[Any, Any]:
        x, normalized_shape = old.args[0], old.args[1]
        spec = self.spec(x)
        if not isinstance(spec, Sharded) or spec.dim >= len(shape_of(x)) - len(normalized_shape):
            raise _NoRule("layer_norm over the sharded dim")
        return self._copy(old, fx.map_arg(old.args, self.local), fx.map_arg(old.kwargs, self.local)), spec


def record_sharding(gm: fx.GraphModule, report: ShardingReport) -> fx.GraphModule:
    """Finish a parallel pass: log ops left on gathered values, re-analyse the chain of the
    rewritten graph and store ``report`` in ``meta[SHARDING_META_KEY]``."""
    if report.gathers:
        log.warning("cachedit: %s left %d ops on gathered values (first: %s)", report.kind, len(report.gathers),
                    report.gathers[0])
    gm.meta[CHAIN_META_KEY] = analyze_block_chain(gm)
    gm.meta[SHARDING_META_KEY] = report
    return gm


def _mutates(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.endswith("__")
    return node.target is operator.setitem or getattr(node.target, "__name__", "").endswith("_")


def _inherited_meta(node: fx.Node) -> dict[str, Any]:
    return {k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace", "source_fn_stack")}
