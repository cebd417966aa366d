"""Graph analyses on real Dynamo graphs of the tiny DiTs."""

from __future__ import annotations

import torch

from cachedit_fx.passes.find_block_chain import analyze_block_chain
from cachedit_fx.passes.partition import plan_partition
from models import TINY_MODELS


def capture(name):
    model, inputs = TINY_MODELS[name]()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        torch.compile(model, backend=backend, fullgraph=True)(**inputs, return_dict=False)
    return graphs[0]


def test_flux_chain_joins_both_lists_in_program_order_and_tolerates_a_shorter_last_block():
    chain = analyze_block_chain(capture("flux"))
    assert [(b.list_path, b.list_index) for b in chain.blocks] == (
        [("transformer_blocks", i) for i in range(4)] + [("single_transformer_blocks", i) for i in range(4)])
    single = [b for b in chain.blocks if b.list_path == "single_transformer_blocks"]
    assert len({b.structure_hash for b in single[:-1]}) == 1
    assert single[-1].structure_hash != single[0].structure_hash  # dead outputs pruned in the last block
    assert [b.kind for b in chain.blocks[:1]] == ["FluxTransformerBlock"]


def test_hunyuan_refiner_blocks_are_not_the_chain():
    chain = analyze_block_chain(capture("hunyuan_video"))
    assert chain.list_paths == ("transformer_blocks", "single_transformer_blocks")


def test_partition_streams_follow_dataflow_not_shape():
    gm = capture("flux")
    chain = analyze_block_chain(gm)
    part = plan_partition(gm, chain, Fn=2, Bn=1).partition
    nodes = {n.name: n for n in gm.graph.nodes}
    # two streams (image, text) cross the middle; each pair keeps its own token count
    assert len(part.streams) == 2
    for pair in part.streams:
        assert nodes[pair.middle_output].meta["example_value"].shape == nodes[pair.head_value].meta["example_value"].shape
    assert part.hidden_cut in part.carried and part.hidden_cut in {p.head_value for p in part.streams}
    assert nodes[part.hidden_entry].meta["example_value"].shape[1] == 16  # image tokens, not the 24 text tokens
    assert len(part.shared) >= 1  # temb and rotary freqs are computed before the chain


def test_wan_text_states_are_shared_not_carried():
    gm = capture("wan")
    part = plan_partition(gm, analyze_block_chain(gm), Fn=1, Bn=0).partition
    assert len(part.carried) == 1 and len(part.streams) == 1
