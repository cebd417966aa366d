"""Rewrite a Dynamo graph so the chain's blocks run on sharded values.

Assumes: torch-level IR with static shapes and fake ``example_value`` on every node; a
``ShardPlan`` naming what starts sharded (column-parallel linears for TP, the chain entry
values for Ulysses). Walks the graph once, giving every chain value a layout (replicated, or
``Sharded``) and emitting each op on local shards by its rule in ``_RULES``. Guarantees: an
op without a rule, and every use outside the chain, gets the full value back through an
all-gather (listed in the report), so the rewritten program computes the same function; an
in-place op on a sharded value raises ``ParallelismError``; example values are refreshed.
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


UNARY_METHODS = {"float", "half", "bfloat16", "to", "type_as", "contiguous", "clone"}
"""Their tensor arguments after the first only give a dtype or device."""
_POINTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, operator.pow,
    torch.add, torch.sub, torch.mul, torch.div, torch.neg, torch.pow, torch.rsqrt, torch.sqrt, torch.exp,
    torch.tanh, torch.sigmoid, torch.sin, torch.cos, torch.abs, torch.erf, torch.clamp, torch.relu,
    torch.nn.functional.silu, torch.nn.functional.gelu, torch._C._nn.gelu, torch.nn.functional.dropout,
    torch.nn.functional.relu,
}
_POINTWISE_METHODS = {"add", "sub", "mul", "div", "pow", "rsqrt", "sqrt", "exp", "tanh", "sigmoid", "neg", "abs",
                      "clamp"} | UNARY_METHODS
LIKE_FUNCTIONS = {torch.empty_like, torch.zeros_like, torch.ones_like}
CONCATS = {torch.cat, torch.concat}
_LINEARS = {torch._C._nn.linear, torch.nn.functional.linear}
_SDPA = {torch._C._nn.scaled_dot_product_attention, torch.nn.functional.scaled_dot_product_attention}
_SPLITS = {"chunk", "split", "split_with_sizes", "tensor_split", "unbind"}
_ATTENTION_ARGUMENTS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")


def is_linear(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _LINEARS


def is_attention(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _SDPA


def attention_call(node: fx.Node) -> dict[str, Any]:
    """The arguments of a scaled_dot_product_attention node by name."""
    return {**dict(zip(_ATTENTION_ARGUMENTS, node.args)), **node.kwargs}


def is_pointwise(node: fx.Node) -> bool:
    if node.op == "call_function":
        return node.target in _POINTWISE_FUNCTIONS
    return node.op == "call_method" and node.target in _POINTWISE_METHODS


def pointwise_operands(node: fx.Node) -> Sequence[Any]:
    """The operands whose layout a pointwise op's output follows."""
    return node.args[:1] if node.op == "call_method" and node.target in UNARY_METHODS else node.all_input_nodes


def example_shape(node: Any) -> Optional[tuple[int, ...]]:
    """The shape of a tensor-valued node's example value; ``None`` for anything else."""
    value = node.meta.get("example_value") if isinstance(node, fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def shape_of(node: Any) -> tuple[int, ...]:
    shape = example_shape(node)
    if shape is None:
        raise _NoRule(f"{getattr(node, 'name', node)} is not a tensor")
    return shape


def cat_dim(node: fx.Node) -> int:
    """The (non-negative) dim a cat or stack node joins along."""
    return (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % len(shape_of(node))


def dims_arg(node: fx.Node) -> list[Any]:
    """A method's sizes or dims, given as one sequence or as separate arguments after the tensor."""
    rest = node.args[1:]
    return list(rest[0]) if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else list(rest)


def dim_order(node: fx.Node, rank: int) -> list[int]:
    """The input dim of each output dim of a ``permute`` or ``transpose`` node."""
    if node.target == "permute":
        return [d % rank for d in dims_arg(node)]
    order = list(range(rank))
    a, b = (d % rank for d in node.args[1:3])
    order[a], order[b] = b, a
    return order


def _holds_shards(spec: Any) -> bool:
    return isinstance(spec, Sharded) or (isinstance(spec, tuple) and any(isinstance(s, Sharded) for s in spec))


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
        self.emitter = CollectiveEmitter(self.graph, plan.world, plan.rank, plan.group_name, {}, report.collectives)

    def run(self) -> fx.GraphModule:
        deferred: list[fx.Node] = []
        for node in self.old.graph.nodes:
            if node.op != "placeholder" and deferred:
                for entry in deferred:
                    self._enter(entry)
                deferred.clear()
            self.emitter.meta = _inherited_meta(node)
            if node.op == "placeholder":
                self.env[node] = self.graph.placeholder(node.name, type_expr=node.type)
                self.env[node].meta = dict(node.meta)
            elif node.op == "output":
                self.graph.output(fx.map_arg(node.args[0], self.full))
            elif node.op == "get_attr":
                self.env[node] = self.graph.get_attr(node.target)
            elif node.name in self.plan.chain:
                self._rewrite(node)
            else:
                self.env[node] = self._copy_with(node, self.full)
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
        """A placeholder after all existing ones (its input follows theirs)."""
        with self.graph.inserting_after(next(n for n in reversed(self.graph.nodes) if n.op == "placeholder")):
            node = self.graph.placeholder(name)
        node.meta.update(meta)
        return node

    def spec(self, old: Any) -> Any:
        """``old``'s layout: ``None`` (replicated), ``Sharded``, or a tuple of them."""
        if not isinstance(old, fx.Node):
            return None
        return self.plan.entry[old.name] if old in self.entry_local else self.layout.get(old)

    def local(self, old: Any) -> Any:
        """The value as this rank holds it inside the chain."""
        return self.entry_local.get(old, self.env[old]) if isinstance(old, fx.Node) else old

    def full(self, old: fx.Node) -> Any:
        """The value replicated (all-gathered once if it is sharded)."""
        spec = self.layout.get(old)
        if isinstance(spec, Sharded):
            if old not in self.gathered:
                self.gathered[old] = self.emitter.all_gather(self.env[old], spec, shape_of(old))
            return self.gathered[old]
        if _holds_shards(spec):
            raise ParallelismError(f"{old.name} is a tuple of sharded values used where the full value is needed")
        return self.env[old]

    def sliced(self, old: Any, spec: Sharded) -> Any:
        """A replicated operand cut to ``spec``'s local chunks (unchanged if it broadcasts)."""
        shape = example_shape(old)
        if shape is None:
            return self.local(old)
        own = self.spec(old)
        if isinstance(own, Sharded) and own != spec:
            raise _NoRule(f"{old.name} is sharded as {own}, needed {spec}")
        if own == spec or not 0 <= spec.dim < len(shape) or shape[spec.dim] == 1:
            return self.local(old)
        if shape[spec.dim] != spec.length:
            raise _NoRule(f"{old.name} has length {shape[spec.dim]} along the sharded dim, not {spec.length}")
        return self.emitter.local_slice(self.local(old), spec)

    def _copy(self, old: fx.Node, args: Any, kwargs: Any, target: Any = None) -> fx.Node:
        """``old`` re-emitted (same name) on new arguments."""
        new = self.graph.create_node(old.op, target or old.target, args, kwargs, name=old.name)
        new.meta.update(_inherited_meta(old))
        return new

    def _copy_with(self, old: fx.Node, value_of: Callable[[fx.Node], Any]) -> fx.Node:
        """``old`` re-emitted on its arguments mapped by ``value_of`` (``local``, ``full``, ...)."""
        return self._copy(old, fx.map_arg(old.args, value_of), fx.map_arg(old.kwargs, value_of))

    def _rewrite(self, old: fx.Node) -> None:
        sharded_in = any(_holds_shards(self.spec(a)) for a in old.all_input_nodes)
        if not sharded_in and old.name not in self.plan.columns:
            self.env[old], self.layout[old] = self._copy_with(old, self.local), None
            return
        if sharded_in and _mutates(old) and old.target is not operator.setitem:
            raise ParallelismError(f"in-place op {old.name} ({old.target}) on a sharded value")
        rule = _RULES.get(old.op, {}).get(old.target)
        try:
            if rule is None:
                raise _NoRule(f"no sharding rule for {old.op} {getattr(old.target, '__name__', old.target)}")
            self.env[old], self.layout[old] = rule(self, old)
        except _NoRule as reason:
            if old.target is operator.setitem:
                raise ParallelismError(f"cannot shard the in-place write {old.name}: {reason}") from None
            log.debug("cachedit parallel: %s runs on gathered inputs (%s)", old.name, reason)
            self.report.gathers.append(f"{old.name}: {reason}")
            self.env[old], self.layout[old] = self._copy_with(old, self.full), None

    # Rules (``_RULES``): (the new value, its layout), or _NoRule.
    def _sharded_source(self, old: fx.Node) -> tuple[fx.Node, Sharded]:
        """``old``'s first argument and its layout, which must be a single ``Sharded``."""
        source, spec = old.args[0], self.spec(old.args[0])
        if not isinstance(spec, Sharded):
            raise _NoRule(f"{old.target} of a tuple")
        return source, spec

    def _viewed(self, old: fx.Node) -> tuple[fx.Node, Sharded]:
        """``old``'s source and the layout of ``old``, a view of it."""
        source, spec = self._sharded_source(old)
        out_spec = map_view(spec, shape_of(source), shape_of(old), self.plan.world)
        if out_spec is None:
            raise _NoRule(f"{old.target} {shape_of(source)} -> {shape_of(old)} mixes the sharded dim")
        return source, out_spec

    def _size(self, old: fx.Node) -> tuple[Any, Any]:
        return old.meta["example_value"], None

    def _pointwise(self, old: fx.Node) -> tuple[Any, Any]:
        out_rank = len(shape_of(old))
        operands = pointwise_operands(old)
        specs = [(arg, self.spec(arg)) for arg in operands]
        aligned = {s.moved(s.dim + out_rank - len(shape_of(arg))) for arg, s in specs if isinstance(s, Sharded)}
        if len(aligned) != 1:
            raise _NoRule(f"operands sharded differently: {aligned}")
        (out_spec,) = aligned

        def operand(arg: fx.Node) -> Any:
            shape = example_shape(arg)
            if arg not in operands or shape is None:
                return self.local(arg)
            return self.sliced(arg, out_spec.moved(out_spec.dim - (out_rank - len(shape))))

        return self._copy_with(old, operand), out_spec

    def _linear(self, old: fx.Node) -> tuple[Any, Any]:
        x, weight = old.args[0], old.args[1]
        bias = old.args[2] if len(old.args) > 2 else old.kwargs.get("bias")
        spec, rank = self.spec(x), len(shape_of(x))
        out_features = shape_of(weight)[0]
        if spec is None and old.name in self.plan.columns:
            if out_features % self.plan.world:
                raise ParallelismError(f"{old.name}: {out_features} output features do not divide over "
                                       f"tp_size {self.plan.world}")
            segments = (out_features,)
            w = self._weight(weight, 0, segments)
            b = self._weight(bias, 0, segments) if bias is not None else None
            self.report.columns.append(old.name)
            return self._copy(old, (self.local(x), w, b), {}), Sharded(rank - 1, segments)
        if isinstance(spec, Sharded) and spec.dim == rank - 1:
            w = self._weight(weight, 1, spec.segments)
            total = self.emitter.all_reduce_sum(self._copy(old, (self.local(x), w, None), {}))
            self.report.rows.append(old.name)
            return (self.emitter.call(operator.add, total, self.local(bias)) if bias is not None else total), None
        if isinstance(spec, Sharded):
            return self._copy_with(old, self.local), spec
        raise _NoRule("linear on a sharded tuple")

    def _weight(self, old: fx.Node, dim: int, segments: tuple[int, ...]) -> fx.Node:
        shard = self.param_shard(old, dim, segments) if old.op == "placeholder" else None
        return shard if shard is not None else self.emitter.local_slice(self.local(old), Sharded(dim, segments))

    def _attention(self, old: fx.Node) -> tuple[Any, Any]:
        call = attention_call(old)
        q, k, v, mask = call["query"], call["key"], call["value"], call.get("attn_mask")
        if len(shape_of(q)) != 4 or call.get("is_causal"):
            raise _NoRule("attention that is causal or not [B, H, L, D]")
        specs = [self.spec(t) for t in (q, k, v)]
        rest = {name: value for name, value in call.items() if name not in ("query", "key", "value", "attn_mask")}
        if self.plan.kind == "tp":
            spec = specs[0]
            if not isinstance(spec, Sharded) or spec.dim != 1 or specs.count(spec) != 3:
                raise _NoRule(f"attention inputs not all split by heads: {specs}")
            local_mask = self.local(mask)
            if isinstance(mask, fx.Node) and len(shape_of(mask)) >= 3:
                local_mask = self.sliced(mask, spec.moved(len(shape_of(mask)) - 3))
            new = self._copy(old, (), dict(query=self.local(q), key=self.local(k), value=self.local(v),
                                           attn_mask=local_mask, **rest))
            return new, spec
        q_spec, k_spec, v_spec = specs  # Ulysses: all-to-all from sequence to heads and back
        if not isinstance(q_spec, Sharded) or q_spec.dim != 2 or k_spec != v_spec:
            raise _NoRule(f"Ulysses attention needs the query split along the sequence and equal key/value layouts: {specs}")
        if k_spec is not None and (not isinstance(k_spec, Sharded) or k_spec.dim != 2):
            raise _NoRule(f"key layout {k_spec}")
        if isinstance(mask, fx.Node) and isinstance(self.spec(mask), Sharded):
            raise _NoRule("sharded attention mask")
        head_spec = Sharded(1, (shape_of(q)[1],))
        em = self.emitter
        q_h = em.sequence_to_heads(self.local(q), q_spec, shape_of(q))
        if k_spec is None:
            k_h, v_h = (em.local_slice(self.local(t), head_spec) for t in (k, v))
        else:
            k_h, v_h = (em.sequence_to_heads(self.local(t), k_spec, shape_of(t)) for t in (k, v))
        local_mask = self.local(mask)
        if isinstance(mask, fx.Node):
            shape = shape_of(mask)
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
        """``index`` with its item on the sharded dim made local, and the layout of the result."""
        items = list(index) if isinstance(index, tuple) else [index]
        if any(isinstance(i, (fx.Node, torch.Tensor, list)) for i in items):
            raise _NoRule("advanced indexing")
        missing = len(shape) - sum(1 for i in items if i is not None and i is not Ellipsis)
        at = items.index(Ellipsis) if Ellipsis in items else len(items)
        items[at:at + 1] = [slice(None)] * missing
        pos = [p for p, item in enumerate(items) if item is not None][spec.dim]
        if isinstance(items[pos], int):
            raise _NoRule("integer index into the sharded dim")
        out_dim = sum(1 for i in items[:pos] if not isinstance(i, int))
        items[pos], segments = self._local_slice_of(spec, shape[spec.dim], items[pos])
        return (tuple(items) if isinstance(index, tuple) else items[0]), Sharded(out_dim, segments)

    def _local_slice_of(self, spec: Sharded, length: int, item: slice) -> tuple[slice, tuple[int, ...]]:
        start, stop, step = item.indices(length)
        if (start, stop, step) == (0, length, 1):
            return item, spec.segments
        if step != 1:
            raise _NoRule("strided slice of the sharded dim")
        parts = split_segments(spec.segments, [b for b in (start, stop - start, length - stop) if b])
        if parts is None:
            raise _NoRule(f"slice {start}:{stop} cuts a segment of {spec.segments}")
        offset = local_length(parts[0], self.plan.world, self.plan.rank) if start else 0
        kept = parts[1 if start else 0]
        return slice(offset, offset + local_length(kept, self.plan.world, self.plan.rank)), kept

    def _setitem(self, old: fx.Node) -> tuple[Any, Any]:
        target, index, value = old.args
        spec = self.spec(target)
        if not isinstance(spec, Sharded):
            raise _NoRule("write of a sharded value into a replicated tensor")
        new_index, written = self._index(spec, shape_of(target), index)
        value_shape, new_value = example_shape(value), self.local(value)
        if value_shape:
            ints = sum(1 for i in (index if isinstance(index, tuple) else (index,)) if isinstance(i, int))
            out_rank = len(shape_of(target)) - ints
            new_value = self.sliced(value, written.moved(written.dim - (out_rank - len(value_shape))))
        return self._copy(old, (self.local(target), new_index, new_value), {}), None

    def _cat(self, old: fx.Node) -> tuple[Any, Any]:
        tensors, dim, stack = old.args[0], cat_dim(old), old.target is torch.stack
        specs = [self.spec(t) for t in tensors]
        sharded = {s for s in specs if isinstance(s, Sharded)}
        if not stack and {s.dim for s in sharded} == {dim} and all(s is None or s in sharded for s in specs):
            parts, segments = [], []
            for t, spec in zip(tensors, specs):
                own = spec or Sharded(dim, (shape_of(t)[dim],))
                parts.append(self.local(t) if spec else self.emitter.local_slice(self.local(t), own))
                segments.extend(own.segments)
            return self._copy(old, (parts, dim), {}), Sharded(dim, tuple(segments))
        if len(sharded) != 1:
            raise _NoRule(f"cat of differently sharded values {sharded}")
        (spec,) = sharded
        if spec.dim == dim and not stack:
            raise _NoRule("cat along the sharded dim with other inputs")
        out_spec = spec.moved(spec.dim + 1) if stack and dim <= spec.dim else spec
        return self._copy(old, ([self.sliced(t, spec) for t in tensors], dim), {}), out_spec

    def _reshape(self, old: fx.Node) -> tuple[Any, Any]:
        """view/reshape/unflatten: the size given for the sharded dim becomes its local length."""
        source, out_spec = self._viewed(old)
        unflatten = old.target == "unflatten"
        first = old.args[1] % len(shape_of(source)) if unflatten else 0
        sizes = list(old.args[2]) if unflatten else dims_arg(old)
        at = out_spec.dim - first
        if 0 <= at < len(sizes) and isinstance(sizes[at], int) and sizes[at] != -1:
            sizes[at] = local_length(out_spec.segments, self.plan.world, self.plan.rank)
        args = (first, tuple(sizes)) if unflatten else sizes
        return self._copy(old, (self.local(source), *args), {}), out_spec

    def _view(self, old: fx.Node) -> tuple[Any, Any]:
        out_spec = self._viewed(old)[1]
        return self._copy_with(old, self.local), out_spec

    def _dim_view(self, old: fx.Node) -> tuple[Any, Any]:
        source, spec = self._sharded_source(old)
        rank = len(shape_of(source))
        if old.target == "unsqueeze":
            new_dim = spec.dim + (1 if old.args[1] % (rank + 1) <= spec.dim else 0)
        else:
            new_dim = dim_order(old, rank).index(spec.dim)
        return self._copy_with(old, self.local), spec.moved(new_dim)

    def _over_last_dims(self, old: fx.Node) -> tuple[Any, Any]:
        """layer_norm (over its normalized dims) or view_as_complex/real (over the last dim), elsewhere sharded."""
        source, spec = self._sharded_source(old)
        count = len(old.args[1]) if old.target is torch.nn.functional.layer_norm else 1
        if spec.dim >= len(shape_of(source)) - count:
            raise _NoRule(f"{old.target.__name__} over the sharded dim")
        return self._copy_with(old, self.local), spec

    def _split(self, old: fx.Node) -> tuple[Any, Any]:
        source, spec = self._sharded_source(old)
        unbind = old.target == "unbind"
        dim_at = 1 if unbind else 2
        dim = (old.kwargs.get("dim", old.args[dim_at] if len(old.args) > dim_at else 0) or 0) % len(shape_of(source))
        outputs = old.meta["example_value"]
        if dim != spec.dim:
            out_spec = spec.moved(spec.dim - 1) if unbind and dim < spec.dim else spec
            return self._copy_with(old, self.local), tuple(out_spec for _ in outputs)
        if unbind:
            raise _NoRule("unbind of the sharded dim")
        parts = split_segments(spec.segments, [o.shape[dim] for o in outputs])
        if parts is None:
            raise _NoRule(f"split of the sharded dim inside a segment of {spec.segments}")
        sizes = [local_length(p, self.plan.world, self.plan.rank) for p in parts]
        new = self._copy(old, (self.local(source), sizes, dim), {}, target="split_with_sizes")
        return new, tuple(Sharded(dim, p) for p in parts)

    def _reduction(self, old: fx.Node) -> tuple[Any, Any]:
        source, spec = self._sharded_source(old)
        full_shape = shape_of(source)
        dims = old.args[1] if len(old.args) > 1 else old.kwargs.get("dim")
        keepdim = old.args[2] if len(old.args) > 2 else old.kwargs.get("keepdim", False)
        if dims is None or (len(old.args) > 2 and not isinstance(keepdim, bool)):
            raise _NoRule("full reduction")
        dims = sorted(d % len(full_shape) for d in ((dims,) if isinstance(dims, int) else dims))
        if spec.dim not in dims:
            shift = 0 if keepdim else sum(1 for d in dims if d < spec.dim)
            return self._copy_with(old, self.local), spec.moved(spec.dim - shift)
        target = "sum" if old.op == "call_method" else torch.sum
        total = self.emitter.all_reduce_sum(self._copy(old, (self.local(source), dims, keepdim), {}, target=target))
        if old.target in ("mean", torch.mean):
            total = self.emitter.call(operator.truediv, total, float(math.prod(full_shape[d] for d in dims)))
        return total, None

    def _rms_norm(self, old: fx.Node) -> tuple[Any, Any]:
        call = {**dict(zip(("input", "normalized_shape", "weight", "eps"), old.args)), **old.kwargs}
        x, spec = call["input"], self.spec(call["input"])
        if not isinstance(spec, Sharded):
            raise _NoRule("rms_norm of a tuple")
        rank, count = len(shape_of(x)), len(call["normalized_shape"])
        if spec.dim < rank - count:
            return self._copy_with(old, self.local), spec
        em = self.emitter
        dims = list(range(rank - count, rank))
        xf = em.method("float", self.local(x))
        squares = em.call(torch.sum, em.call(operator.mul, xf, xf), dims, True)
        mean = em.call(operator.truediv, em.all_reduce_sum(squares), float(math.prod(shape_of(x)[d] for d in dims)))
        eps = call.get("eps")
        eps = torch.finfo(old.meta["example_value"].dtype).eps if eps is None else eps
        normed = em.method("type_as", em.call(operator.mul, xf, em.call(torch.rsqrt, em.call(operator.add, mean, eps))),
                           self.local(x))
        if call.get("weight") is not None:
            normed = em.call(operator.mul, normed, self.sliced(call["weight"], spec.moved(spec.dim - (rank - count))))
        return normed, spec


_Rule = Callable[[ShardRewriter, fx.Node], tuple[Any, Any]]
_RULES: dict[str, dict[Any, _Rule]] = {
    "call_function": {
        **dict.fromkeys(_POINTWISE_FUNCTIONS | LIKE_FUNCTIONS, ShardRewriter._pointwise),
        **dict.fromkeys(_LINEARS, ShardRewriter._linear),
        **dict.fromkeys(_SDPA, ShardRewriter._attention),
        operator.getitem: ShardRewriter._getitem,
        operator.setitem: ShardRewriter._setitem,
        **dict.fromkeys((*CONCATS, torch.stack), ShardRewriter._cat),
        **dict.fromkeys((torch.rms_norm, torch.nn.functional.rms_norm), ShardRewriter._rms_norm),
        **dict.fromkeys((torch.nn.functional.layer_norm, torch.view_as_complex, torch.view_as_real),
                        ShardRewriter._over_last_dims),
        **dict.fromkeys((torch.sum, torch.mean), ShardRewriter._reduction),
    },
    "call_method": {
        **dict.fromkeys(_POINTWISE_METHODS, ShardRewriter._pointwise),
        **dict.fromkeys(("view", "reshape", "unflatten"), ShardRewriter._reshape),
        **dict.fromkeys(("flatten", "squeeze"), ShardRewriter._view),
        **dict.fromkeys(("permute", "transpose", "unsqueeze"), ShardRewriter._dim_view),
        **dict.fromkeys(_SPLITS, ShardRewriter._split),
        **dict.fromkeys(("sum", "mean"), ShardRewriter._reduction),
        **dict.fromkeys(("size", "dim"), ShardRewriter._size),
    },
}
"""The sharding rule of each op, by node op and target."""


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
