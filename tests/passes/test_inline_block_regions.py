"""inline_block_regions: a graph traced with ``trace_blocks_once`` becomes the unmarked trace."""

from __future__ import annotations

import copy
import operator

import pytest
import torch
import torch.fx as fx

from cachedit_fx.block_regions import REGION_COPY, trace_blocks_once
from cachedit_fx.passes.alias_classes import AliasClasses
from cachedit_fx.passes.find_block_chain import analyze_block_chain
from cachedit_fx.passes.inline_block_regions import INVOKE_SUBGRAPH, inline_block_regions
from models import TINY_MODELS


def capture(model, inputs):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend=backend, fullgraph=True)(**inputs, return_dict=False)[0]
    return graphs[0], out


def ops(gm):
    """The graph as an op sequence, dead code removed (Dynamo leaves some in either trace)."""
    gm.graph.eliminate_dead_code()
    return [(n.op, str(n.target) if n.op != "placeholder" else n.name) for n in gm.graph.nodes]


def chain_signature(gm):
    return [(b.list_path, b.list_index, b.kind, b.structure_hash) for b in analyze_block_chain(gm).blocks]


# flux: FLUX's single blocks return two views of one tensor; wan: in-place writes to fresh
# tensors in its rotary embedding; cogvideox: its blocks take two views of one tensor;
# qwen_image: the last block's dead outputs.
@pytest.mark.parametrize("name", ["flux", "wan", "cogvideox", "qwen_image"])
def test_inlined_trace_is_the_unmarked_trace(name):
    model, inputs = TINY_MODELS[name]()
    plain, plain_out = capture(model, inputs)
    marked, marked_out = capture(trace_blocks_once(copy.deepcopy(model)), inputs)
    calls = marked.graph.find_nodes(op="call_function", target=INVOKE_SUBGRAPH)
    kinds = {call.args[0].target for call in calls}
    assert len(calls) >= 2 and len(kinds) < len(calls), "Dynamo reused no traced block"
    torch.testing.assert_close(marked_out, plain_out, rtol=0, atol=0)

    inlined = inline_block_regions(marked)
    assert not inlined.graph.find_nodes(op="call_function", target=INVOKE_SUBGRAPH)
    assert not inlined.graph.find_nodes(op="call_function", target=REGION_COPY)
    assert not any(isinstance(child, fx.GraphModule) for child in inlined.children())
    assert ops(inlined) == ops(plain)
    assert chain_signature(inlined) == chain_signature(plain)
    example = [n.meta["example_value"].shape for n in inlined.graph.nodes if n.op == "call_function"
               and isinstance(n.meta.get("example_value"), torch.Tensor)]
    assert example == [n.meta["example_value"].shape for n in plain.graph.nodes if n.op == "call_function"
                       and isinstance(n.meta.get("example_value"), torch.Tensor)]


def test_block_paths_name_the_calling_block_not_the_traced_one():
    model, inputs = TINY_MODELS["flux"]()
    inlined = inline_block_regions(capture(trace_blocks_once(model), inputs)[0])
    chain = analyze_block_chain(inlined)
    third = chain.blocks[2]
    names = set(third.node_names)
    paths = {path for n in inlined.graph.nodes if n.name in names
             for path, _ in n.meta["nn_module_stack"].values()}
    assert any(p.endswith("['transformer_blocks'].2") for p in paths)
    assert not any("['transformer_blocks'].0" in p for p in paths)


def _region_graph(write_after: bool) -> fx.GraphModule:
    """x -> region_copy -> y; optionally ``y.add_(1)`` (a write the copy must keep apart)."""
    graph = fx.Graph()
    x = graph.placeholder("x")
    view = graph.call_function(operator.getitem, (x, slice(0, 2)))
    copy_node = graph.call_function(REGION_COPY, (view,))
    out = graph.call_function(torch.mul, (copy_node, 2.0))
    if write_after:
        graph.call_method("add_", (copy_node, 1.0))
    graph.output(out)
    return fx.GraphModule(torch.nn.Module(), graph)


@pytest.mark.parametrize("write_after", [False, True])
def test_copies_are_dropped_only_where_no_write_can_see_them(write_after):
    gm = _region_graph(write_after)
    x = torch.arange(4.0)
    expected = gm(x.clone())
    original = x.clone()
    inline_block_regions(gm)
    kept = gm.graph.find_nodes(op="call_function", target=torch.clone)
    assert len(kept) == int(write_after)
    assert not gm.graph.find_nodes(op="call_function", target=REGION_COPY)
    torch.testing.assert_close(gm(x), expected)
    torch.testing.assert_close(x, original)  # the input itself is never written


def test_alias_classes_follow_views_and_unknown_ops_but_not_fresh_results():
    graph = fx.Graph()
    x = graph.placeholder("x")
    view = graph.call_method("view", (x, -1))
    moved = graph.call_method("to", (view, torch.float32))
    fresh = graph.call_function(torch.empty_like, (x,))
    total = graph.call_function(operator.add, (moved, 1.0))
    graph.call_function(operator.setitem, (fresh, 0, 1.0))
    graph.output((moved, total))
    aliases = AliasClasses(graph)
    assert aliases.find(moved) is aliases.find(x) is aliases.find(view)
    assert aliases.find(total) is not aliases.find(x)
    assert aliases.may_be_written(fresh) and not aliases.may_be_written(x) and not aliases.may_be_written(total)
