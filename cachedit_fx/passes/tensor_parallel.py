"""Tensor parallelism: shard each block's attention heads and MLP over ``tp_size`` ranks.

Assumes: ``gm.meta[CHAIN_META_KEY]``; a ``ParallelRun`` of kind "tp" in ``compile_handles(gm)``.
Column-parallel, found by dataflow inside the chain's blocks: the projections feeding
attention's query, key and value (through norms, rotary embedding, concatenation and views),
and every MLP's first linear (one whose output reaches only other linears, through pointwise
ops and last-dim concatenation). The linears consuming their sharded outputs run row-parallel
and all-reduce. Each rank reads only its weight shards (new placeholders fed by the backend).
Guarantees: the rewritten graph computes the original function (``shard_propagation``);
``record_sharding`` stores the report and re-analyses the chain.
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
from cachedit_fx.parallelism import weight_shard
from cachedit_fx.shard_layout import Sharded, map_view
from cachedit_fx.passes.shard_propagation import (
    CONCATS, LIKE_FUNCTIONS, ShardPlan, ShardRewriter, ShardingReport, attention_call, cat_dim, dim_order,
    example_shape, is_attention, is_linear, is_pointwise, pointwise_operands, record_sharding,
)

_SAME_DIM_FUNCTIONS = LIKE_FUNCTIONS | {torch.rms_norm, torch.nn.functional.rms_norm, torch.nn.functional.layer_norm,
                                        torch.view_as_complex, torch.view_as_real}
"""Ops whose output dim ``d`` comes from their first argument's dim ``d``."""


def tensor_parallel(gm: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    run = compile_handles(gm).parallel_run
    chain_names = chain_node_names(gm.meta[CHAIN_META_KEY])
    check_heads_divide(gm, chain_names, run.world, "tp_size")
    columns = find_column_linears(gm, chain_names)
    plan = ShardPlan("tp", run.world, run.rank, run.group_name, chain_names, columns=frozenset(columns))
    report = ShardingReport("tp", run.world)
    fake_mode = fake_mode_of(gm)
    created: dict[tuple, fx.Node] = {}

    def param_shard(placeholder: fx.Node, dim: int, segments: tuple[int, ...]) -> Optional[fx.Node]:
        param = run.inputs.get(placeholder.name)
        if not isinstance(param, torch.nn.Parameter):
            return None
        key = (placeholder.name, dim, segments)
        if key not in created:
            shard = weight_shard(param, dim, segments, run.world, run.rank)
            created[key] = rewriter.new_placeholder(f"{placeholder.name}_tp_shard", {
                "example_value": fake_mode.from_tensor(shard, static_shapes=True), STATIC_WEIGHT_META_KEY: True})
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
            heads = example_shape(attention_call(node)["query"])[1]
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
            for name in ("query", "key", "value"):
                _demand_split(attention_call(node)[name], 1, chain, columns, visited)
    for node in nodes:
        if is_linear(node) and node.name not in columns and node.args[1].op == "placeholder" and _feeds_only_linears(node, chain):
            columns.add(node.name)
    return columns


def _demand_split(node: fx.Node, dim: int, chain: frozenset[str], columns: set[str], visited: set) -> None:
    """Walk back from ``node`` (to be split along ``dim``) to the linears producing that dim."""
    shape = example_shape(node)
    if shape is None or node.name not in chain or (node.name, dim) in visited:
        return
    visited.add((node.name, dim))
    source = node.args[0] if node.args else None
    if is_linear(node):
        if dim == len(shape) - 1 and node.args[1].op == "placeholder":
            columns.add(node.name)
    elif is_pointwise(node):
        for arg in pointwise_operands(node):
            arg_shape = example_shape(arg)
            aligned = dim - (len(shape) - len(arg_shape)) if arg_shape else -1
            if aligned >= 0 and arg_shape[aligned] == shape[dim]:
                _demand_split(arg, aligned, chain, columns, visited)
    elif node.op == "call_function" and node.target in _SAME_DIM_FUNCTIONS:
        _demand_split(source, dim, chain, columns, visited)
    elif node.op == "call_function" and node.target in CONCATS:
        for arg in node.args[0]:
            _demand_split(arg, dim, chain, columns, visited)
    elif node.op == "call_method" and node.target in ("view", "reshape", "unflatten", "flatten", "squeeze"):
        back = map_view(Sharded(dim, (shape[dim],)), shape, example_shape(source), 1)
        if back is not None:
            _demand_split(source, back.dim, chain, columns, visited)
    elif node.op == "call_method" and node.target in ("permute", "transpose"):
        _demand_split(source, dim_order(node, len(shape))[dim], chain, columns, visited)


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
            elif is_pointwise(user) or (user.op == "call_function" and user.target in CONCATS
                                        and cat_dim(user) == len(example_shape(user)) - 1):
                frontier.append(user)
            else:
                return False
    return reached
