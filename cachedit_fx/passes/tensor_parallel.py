"""Tensor parallelism: shard each block's attention heads and MLP over ``tp_size`` ranks.

Assumes: ``gm.meta[CHAIN_META_KEY]``; a ``ParallelRun`` of kind "tp" in ``compile_handles(gm)``.
Finds, by dataflow inside the chain's blocks, the projections that feed attention's query,
key and value (through norms, rotary embedding, concatenation and views) and the first
linear of every MLP (a linear whose output reaches only other linears through pointwise ops
and last-dim concatenation); these run column-parallel, and the linears consuming their
sharded outputs run row-parallel followed by a functional all-reduce. Each rank's graph then
reads only its weight shards (new placeholders fed by the backend). Guarantees: the rewritten
graph computes the original function (``shard_propagation``); the ``ShardingReport`` lands
in ``meta[SHARDING_META_KEY]`` and the chain is re-analysed on the new graph.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import CHAIN_META_KEY, compile_handles
from cachedit_fx.passes.errors import ParallelismError
from cachedit_fx.passes.fake_values import fake_mode_of
from cachedit_fx.passes.find_block_chain import BlockChain
from cachedit_fx.passes.inner_compile import STATIC_WEIGHT_META_KEY
from cachedit_fx.shard_layout import Sharded, map_view
from cachedit_fx.passes.shard_propagation import (
    LIKE_FUNCTIONS, UNARY_METHODS, ShardPlan, ShardRewriter, ShardingReport, attention_call, is_attention,
    is_linear, is_pointwise, record_sharding,
)
from cachedit_fx.runtime.weight_shards import weight_shard


def tensor_parallel(gm: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    run = compile_handles(gm).parallel_run
    chain_names = chain_node_names(gm.meta[CHAIN_META_KEY])
    check_heads_divide(gm, chain_names, run.world, "tp_size")
    columns = find_column_linears(gm, chain_names)
    plan = ShardPlan("tp", run.world, run.rank, run.group_name, chain_names, columns=frozenset(columns))
    report = ShardingReport("tp", run.world)
    fake_mode = fake_mode_of(gm)
    created: dict[tuple, fx.Node] = {}
    rewriter: Optional[ShardRewriter] = None

    def param_shard(placeholder: fx.Node, dim: int, segments: tuple[int, ...]) -> Optional[fx.Node]:
        param = run.inputs.get(placeholder.name)
        if not isinstance(param, torch.nn.Parameter):
            return None
        key = (placeholder.name, dim, segments)
        if key not in created:
            shard = weight_shard(param, dim, segments, run.world, run.rank)
            node = rewriter.new_placeholder(f"{placeholder.name}_tp_shard",
                                            {"example_value": fake_mode.from_tensor(shard, static_shapes=True),
                                             STATIC_WEIGHT_META_KEY: True})
            created[key] = node
            run.shard_inputs.append(shard)
            report.weight_bytes_local += shard.nbytes
        return created[key]

    rewriter = ShardRewriter(gm, plan, param_shard, report)
    new = rewriter.run()
    sharded = {name for name, _, _ in created}
    unused = [n.name for n in new.graph.nodes if n.op == "placeholder" and n.name in sharded and not n.users]
    run.releasable.extend(run.inputs[name] for name in unused)
    report.weight_bytes_full = sum(t.nbytes for t in run.inputs.values() if isinstance(t, torch.nn.Parameter))
    report.released_bytes = sum(run.inputs[name].nbytes for name in unused)
    report.weight_bytes_local += report.weight_bytes_full - report.released_bytes
    return record_sharding(new, report)


def chain_node_names(chain: BlockChain) -> frozenset[str]:
    return frozenset(name for block in chain.blocks for name in block.node_names)


def check_heads_divide(gm: fx.GraphModule, chain: frozenset[str], world: int, option: str) -> None:
    """Every attention in the chain splits its heads evenly over ``world`` ranks."""
    for node in gm.graph.nodes:
        if node.name in chain and is_attention(node):
            heads = _shape(attention_call(node)["query"])[1]
            if heads % world:
                raise ParallelismError(f"{node.name}: {heads} attention heads do not divide over {option} {world}")


def find_column_linears(gm: fx.GraphModule, chain: frozenset[str]) -> set[str]:
    """Names of the linears to run column-parallel: those attention's q/k/v need split by
    heads, and the up-projections of MLPs."""
    columns: set[str] = set()
    visited: set[tuple[str, int]] = set()
    nodes = [n for n in gm.graph.nodes if n.name in chain]
    for node in nodes:
        if is_attention(node):
            call = attention_call(node)
            for name in ("query", "key", "value"):
                _demand_split(call[name], 1, chain, columns, visited)
    for node in nodes:
        if is_linear(node) and node.name not in columns and node.args[1].op == "placeholder" and _feeds_only_linears(node, chain):
            columns.add(node.name)
    return columns


def _shape(node: fx.Node) -> Optional[tuple[int, ...]]:
    value = node.meta.get("example_value") if isinstance(node, fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _demand_split(node: fx.Node, dim: int, chain: frozenset[str], columns: set[str], visited: set) -> None:
    """Walk back from ``node`` (to be split along ``dim``) to the linears producing that dim."""
    if not isinstance(node, fx.Node) or node.name not in chain or (node.name, dim) in visited:
        return
    visited.add((node.name, dim))
    shape = _shape(node)
    if shape is None:
        return
    if is_linear(node):
        if dim == len(shape) - 1 and node.args[1].op == "placeholder":
            columns.add(node.name)
        return
    source = node.args[0] if node.args else None
    if is_pointwise(node):
        operands = node.args[:1] if node.op == "call_method" and node.target in UNARY_METHODS else node.all_input_nodes
        for arg in operands:
            arg_shape = _shape(arg)
            aligned = dim - (len(shape) - len(arg_shape)) if arg_shape else -1
            if arg_shape and aligned >= 0 and arg_shape[aligned] == shape[dim]:
                _demand_split(arg, aligned, chain, columns, visited)
    elif node.op == "call_function" and (node.target in LIKE_FUNCTIONS or node.target in (
            torch.rms_norm, torch.nn.functional.rms_norm, torch.nn.functional.layer_norm,
            torch.view_as_complex, torch.view_as_real)):
        _demand_split(source, dim, chain, columns, visited)
    elif node.op == "call_function" and node.target in (torch.cat, torch.concat):
        for arg in node.args[0]:
            _demand_split(arg, dim, chain, columns, visited)
    elif node.op == "call_method" and node.target in ("view", "reshape", "unflatten", "flatten", "squeeze"):
        back = map_view(Sharded(dim, (shape[dim],)), shape, _shape(source), 1)
        if back is not None:
            _demand_split(source, back.dim, chain, columns, visited)
    elif node.op == "call_method" and node.target == "permute":
        dims = list(node.args[1]) if isinstance(node.args[1], (tuple, list)) else list(node.args[1:])
        _demand_split(source, dims[dim] % len(shape), chain, columns, visited)
    elif node.op == "call_method" and node.target == "transpose":
        a, b = (d % len(shape) for d in node.args[1:3])
        _demand_split(source, b if dim == a else a if dim == b else dim, chain, columns, visited)



def _feeds_only_linears(linear: fx.Node, chain: frozenset[str]) -> bool:
    """Whether every path from ``linear``'s output ends as the input of another linear, through
    pointwise ops and concatenation along the last dim only."""
    frontier, seen, reached = [linear], set(), False
    while frontier:
        node = frontier.pop()
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if user.name not in chain:
                return False
            if is_linear(user) and user.args[0] is node:
                reached = True
            elif is_pointwise(user):
                frontier.append(user)
            elif user.op == "call_function" and user.target in (torch.cat, torch.concat):
                dim = user.args[1] if len(user.args) > 1 else user.kwargs.get("dim", 0)
                if dim % len(_shape(user)) != len(_shape(user)) - 1:
                    return False
                frontier.append(user)
            else:
                return False
    return reached
