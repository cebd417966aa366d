"""Inline the block regions Dynamo traced once (``torch.ops.higher_order.invoke_subgraph``).

Assumes: calls ``invoke_subgraph(get_attr subgraph, identifier, *operands)`` (``trace_blocks_once``
marks every repeated block so), each read only through ``operator.getitem``; regions may nest.
Refuses (``UnsupportedGraph``, before changing anything) calls of another layout.
Guarantees: no ``invoke_subgraph`` is left and the function is the same; each call becomes a
copy of its subgraph's nodes (their example values, an ``nn_module_stack`` naming the calling
block, as Dynamo records when it traces that block itself). A ``cachedit_fx::region_copy``
(block boundaries may not alias) is dropped unless an in-place op may write its source, its
result or an alias of either (``alias_classes``), when it becomes ``torch.clone``; so a graph
without such writes is the one an unmarked trace gives.
"""

from __future__ import annotations

import operator
from typing import Any, Callable, Optional

import torch
import torch.fx as fx

from cachedit_fx.block_regions import REGION_COPY
from cachedit_fx.passes.alias_classes import AliasClasses, input_nodes, writes_in_place
from cachedit_fx.config import BackendSettings
from cachedit_fx.passes.errors import UnsupportedGraph

INVOKE_SUBGRAPH = torch.ops.higher_order.invoke_subgraph

ModuleStack = dict[str, tuple[str, Any]]


def inline_block_regions(gm: fx.GraphModule, settings: Optional[BackendSettings] = None) -> fx.GraphModule:
    """Replace every region call of ``gm`` (and of its regions) by the region's nodes, then
    drop the boundary copies no in-place write can tell apart from their source."""
    if not any(n.target in (INVOKE_SUBGRAPH, REGION_COPY) for n in gm.graph.nodes):
        return gm
    _check_calls(gm)
    inlined = _inline_calls(gm)
    aliases = AliasClasses(gm.graph)
    for node in gm.graph.find_nodes(op="call_function", target=REGION_COPY):
        source = node.args[0]
        if aliases.may_be_written(node) or aliases.may_be_written(source):
            node.target = torch.clone
        else:
            node.replace_all_uses_with(source)
            gm.graph.erase_node(node)
            inlined.append(source)
    _erase_unused(gm.graph, inlined)
    gm.graph.lint()
    gm.recompile()
    return gm


def _check_calls(gm: fx.GraphModule) -> None:
    """Every region call (nested ones too) has the layout inlining assumes; checked before
    anything changes, so a refusal leaves ``gm`` as Dynamo traced it."""
    for call in gm.graph.find_nodes(op="call_function", target=INVOKE_SUBGRAPH):
        holder = call.args[0]
        region = getattr(gm, holder.target, None) if isinstance(holder, fx.Node) else None
        if not isinstance(region, fx.GraphModule) or \
                len(region.graph.find_nodes(op="placeholder")) != len(call.args) - 2:
            raise UnsupportedGraph(f"region call {call.name} does not match its subgraph")
        if any(u.op != "call_function" or u.target is not operator.getitem for u in call.users):
            raise UnsupportedGraph(f"region call {call.name} is read other than by getitem")
        _check_calls(region)


def _inline_calls(gm: fx.GraphModule) -> list[fx.Node]:
    """Inline every call of ``gm``; returns the nodes the inlining created."""
    inlined: list[fx.Node] = []
    for call in gm.graph.find_nodes(op="call_function", target=INVOKE_SUBGRAPH):
        inlined.extend(_inline_call(gm, call))
    for name, child in list(gm.named_children()):
        if isinstance(child, fx.GraphModule) and not gm.graph.find_nodes(op="get_attr", target=name):
            delattr(gm, name)
    return inlined


def _erase_unused(graph: fx.Graph, touched: list[fx.Node]) -> None:
    """Erase the nodes among ``touched`` (inlined, or sources of dropped copies) that nothing
    reads, then their inputs left unread (region outputs the caller drops); nothing else."""
    pending = list(touched)
    while pending:
        node = pending.pop()
        if node._erased or node.op not in ("call_function", "call_method") or node.users \
                or writes_in_place(node) or node.is_impure():
            continue
        inputs = input_nodes(node)
        graph.erase_node(node)
        pending.extend(inputs)


def _inline_call(gm: fx.GraphModule, call: fx.Node) -> list[fx.Node]:
    holder, operands = call.args[0], call.args[2:]
    region = getattr(gm, holder.target)
    _inline_calls(region)
    env: dict[fx.Node, Any] = dict(zip(region.graph.find_nodes(op="placeholder"), operands))
    rebase = _stack_rebase(call, region)
    results: tuple[Any, ...] = ()
    created: list[fx.Node] = []
    with gm.graph.inserting_before(call):
        for node in region.graph.nodes:
            if node.op == "placeholder":
                continue
            if node.op == "output":
                results = tuple(node.args[0]) if isinstance(node.args[0], (tuple, list)) else (node.args[0],)
                break
            if node.op == "get_attr":
                env[node] = _copy_attribute(gm, holder.target, region, node)
                continue
            copied = gm.graph.node_copy(node, lambda n: env[n])
            copied.meta = {**node.meta, "nn_module_stack": rebase(node.meta.get("nn_module_stack"))}
            env[node] = copied
            created.append(copied)
    outputs = [env[r] if isinstance(r, fx.Node) else r for r in results]
    for user in list(call.users):
        user.replace_all_uses_with(outputs[user.args[1]])
        gm.graph.erase_node(user)
    gm.graph.erase_node(call)
    if not holder.users:
        gm.graph.erase_node(holder)
    return created


def _copy_attribute(gm: fx.GraphModule, region_name: str, region: fx.GraphModule, node: fx.Node) -> fx.Node:
    value = operator.attrgetter(node.target)(region)
    base = f"{region_name}_{node.target}".replace(".", "_")
    name, k = base, 0
    while hasattr(gm, name):
        k += 1
        name = f"{base}_{k}"
    if isinstance(value, torch.nn.Module):
        gm.add_submodule(name, value)
    else:
        setattr(gm, name, value)
    copied = gm.graph.get_attr(name)
    copied.meta = dict(node.meta)
    return copied


def _stack_rebase(call: fx.Node, region: fx.GraphModule) -> Callable[[Optional[ModuleStack]], ModuleStack]:
    """Maps a region node's ``nn_module_stack`` (recorded under the module the region was first
    traced in) to the module of ``call``: the call's own stack, then the region's inner modules
    with their path prefix replaced."""
    outer: ModuleStack = dict(call.meta.get("nn_module_stack") or {})
    call_root = next(reversed(outer.values()))[0] if outer else None
    region_root = _region_root(region)

    def rebase(stack: Optional[ModuleStack]) -> ModuleStack:
        rebased = dict(outer)
        for key, (path, cls) in (stack or {}).items():
            if region_root is not None and call_root is not None and path.startswith(region_root):
                if path == region_root:
                    continue
                path = call_root + path[len(region_root):]
            rebased[f"{key}@{call.name}"] = (path, cls)
        return rebased

    return rebase


def _region_root(region: fx.GraphModule) -> Optional[str]:
    """The module path every node of ``region`` was traced under (its first stack entry)."""
    for node in region.graph.nodes:
        stack = node.meta.get("nn_module_stack")
        if stack:
            return next(iter(stack.values()))[0]
    return None
