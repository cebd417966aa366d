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


def capture_model(model, inputs):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        torch.compile(model, backend=backend)(**inputs, return_dict=False)
    return graphs


def _continuations(gm):
    """Every chain block output's name -> the name of the input it continues."""
    from cachedit_fx.passes.streams import StreamGraph

    chain = analyze_block_chain(gm)
    streams = StreamGraph(list(gm.graph.nodes), [(b.first, b.last) for b in chain.blocks])
    return {o.name: streams.continued_input(o).name for i in range(len(chain)) for o in streams.block_outputs(i)}


def test_equal_text_and_image_lengths_are_told_apart_by_the_slices_of_their_concatenation():
    from cachedit_fx.tiny_models import tiny_flux

    model, inputs = tiny_flux()
    unequal = _continuations(capture_model(model, inputs)[0])
    torch._dynamo.reset()
    equal = dict(inputs, encoder_hidden_states=inputs["encoder_hidden_states"][:, :16], txt_ids=inputs["txt_ids"][:16])
    assert equal["encoder_hidden_states"].shape[1] == equal["hidden_states"].shape[1]
    assert _continuations(capture_model(model, equal)[0]) == unequal


class Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)

    def forward(self, x):
        return x + torch.tanh(self.lin(x))


class WithSequential(torch.nn.Module):
    """Repeated blocks, an output head of two same-class layers in a Sequential, and a refiner of
    two blocks on a second input before the chain."""

    def __init__(self) -> None:
        super().__init__()
        self.refiner = torch.nn.ModuleList(Block() for _ in range(2))
        self.blocks = torch.nn.ModuleList(Block() for _ in range(4))
        self.proj_out = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))

    def forward(self, x, context, return_dict=False):
        for block in self.refiner:
            context = block(context)
        x = x + context.mean(dim=1, keepdim=True)
        for block in self.blocks:
            x = block(x)
        return (self.proj_out(x),)


def test_sequential_children_are_not_blocks_and_a_refiner_stays_in_the_prologue():
    gm = capture_model(WithSequential(), dict(x=torch.randn(1, 4, 8), context=torch.randn(1, 3, 8)))[0]
    chain = analyze_block_chain(gm)
    assert chain.list_paths == ("blocks",)
    assert {(info.path, info.role) for info in chain.lists} == {("blocks", "chain"), ("refiner", "prologue")}


def test_a_single_block_list_joins_the_chain_it_continues_into():
    from cachedit_fx.tiny_models import tiny_flux
    import diffusers

    torch.manual_seed(0)
    _, inputs = tiny_flux()
    model = diffusers.FluxTransformer2DModel(**dict(tiny_flux()[0].config, num_layers=1)).eval()
    chain = analyze_block_chain(capture_model(model, inputs)[0])
    assert [(b.list_path, b.list_index) for b in chain.blocks] == (
        [("transformer_blocks", 0)] + [("single_transformer_blocks", i) for i in range(4)])


def test_glue_between_lists_is_replayed_at_the_end_of_the_head():
    """Chroma joins text and image with cat() before its single-stream blocks: the middle's output
    continues a copy of that cat over the head's text and image outputs."""
    from cachedit_fx.example_inputs import tiny_model

    model, inputs = tiny_model("ChromaTransformer2DModel")
    gm = capture_model(model, inputs)[0]
    chain = analyze_block_chain(gm)
    part = plan_partition(gm, chain, Fn=1, Bn=0).partition
    nodes = {n.name: n for n in gm.graph.nodes}
    (stream,) = part.streams
    replayed = nodes[stream.head_value]
    assert stream.head_value in part.replayed and replayed.target is torch.cat
    text = [n for n in part.carried if n.startswith("encoder_hidden_states")]
    assert len(text) == 1 and {a.name for a in replayed.args[0]} == {part.hidden_cut, text[0]}
    assert nodes[stream.middle_output].meta["example_value"].shape == replayed.meta["example_value"].shape
    assert nodes[part.hidden_cut].meta["example_value"].shape[1] == inputs["hidden_states"].shape[1]  # image tokens
