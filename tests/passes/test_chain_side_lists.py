"""Which block lists make the chain: a side list never aborts the analysis nor becomes the chain,
whatever its size or how often it runs; lists of one block each form a chain when their streams
continue into one another; a graph with no chain of two blocks is refused for that reason, not
blamed on graph breaks. Cached runs are checked against the eager reference."""

from __future__ import annotations

import warnings

import diffusers
import pytest
import torch

import cachedit_fx
from benchmarks.coverage.matrix import _run, redraw_zero_parameters, trajectory
from cachedit_fx.example_inputs import SPECS, example_inputs_for
from cachedit_fx.passes.errors import NoBlocks
from cachedit_fx.passes.find_block_chain import analyze_block_chain
from cachedit_fx.runtime.registry import cache_for_model
from models import matrix_oracle, max_rel_err

STEPS = 6


def _tiny(class_name: str, **overrides):
    """The class's tiny config with ``overrides``, zero parameters redrawn, and a sampler's inputs."""
    spec = SPECS[class_name]
    torch.manual_seed(0)
    model = getattr(diffusers, class_name)(**{**spec.tiny_config, **overrides}).eval()
    redraw_zero_parameters(model, seed=0)
    inputs = example_inputs_for(class_name, dict(model.config))
    return model, trajectory(inputs, spec.latent, spec.timestep, STEPS)


def _caches_like_the_reference(model, steps, lists, threshold):
    """Compile with Fn=1, Bn=0 and ``threshold``; the cached steps, diffs and outputs equal the
    reference's over ``lists``. Returns the chain the backend cached and the cached steps."""
    want, reference = matrix_oracle(model, lists, steps, threshold)
    compiled = cachedit_fx.compile(model, inner_backend="eager", Fn_compute_blocks=1, Bn_compute_blocks=0,
                                   residual_diff_threshold=threshold, max_warmup_steps=1, num_inference_steps=STEPS)
    got = _run(compiled, steps)
    chains = [detail for cached, detail in cache_for_model(model).graphs if cached]
    summary = cachedit_fx.summary(compiled)
    assert summary.cached_steps == reference.cached_steps
    assert summary.residual_diffs.keys() == reference.diffs.keys()
    for step, diff in reference.diffs.items():
        assert summary.residual_diffs[step] == pytest.approx(diff, rel=1e-4)
    assert max_rel_err(got, want) <= 1e-5
    assert len(chains) == 1
    return chains[0], reference.cached_steps


def _mid_threshold(model, steps, lists):
    """A threshold between the two middle diffs of a run that caches every step after warmup (each
    diff taken against the first step's residual): some steps cache, some do not."""
    _, free = matrix_oracle(model, lists, steps, 1e9)
    diffs = sorted(free.diffs.values())
    return (diffs[len(diffs) // 2 - 1] + diffs[len(diffs) // 2]) / 2


def _motion_encoder(res_blocks: int, batch_size: int = 8) -> dict:
    """WanAnimate motion-encoder settings with ``res_blocks`` residual blocks (one per halving of
    the face image down to 4 pixels), run on ``batch_size`` face frames at a time."""
    size = 2 ** (res_blocks + 2)
    return dict(motion_encoder_size=size, motion_encoder_batch_size=batch_size,
                motion_encoder_channel_sizes={str(2 ** k): 8 for k in range(2, res_blocks + 3)})


SIDE_LISTS = [
    # the motion encoder's res blocks carry more compute than the tiny transformer blocks
    ("WanAnimateTransformer3DModel", _motion_encoder(2), "motion_encoder.res_blocks[2] prologue"),
    ("WanAnimateTransformer3DModel", _motion_encoder(3), "motion_encoder.res_blocks[3] prologue"),
    # five face frames two at a time: every motion-encoder list runs three times
    ("WanAnimateTransformer3DModel", _motion_encoder(3, batch_size=2), "motion_encoder.res_blocks[3] prologue"),
    # as many control blocks as main blocks, each a main block plus projections
    ("WanVACETransformer3DModel", dict(vace_layers=[0, 1, 2, 3]), "vace_blocks[4] prologue"),
]


@pytest.mark.parametrize("class_name, overrides, side", SIDE_LISTS,
                         ids=["animate-res2", "animate-res3", "animate-res3-runs3", "vace-4-of-4"])
def test_a_side_list_is_recorded_and_the_main_chain_caches_like_the_reference(class_name, overrides, side):
    model, steps = _tiny(class_name, **overrides)
    threshold = _mid_threshold(model, steps, ["blocks"])
    chain, cached = _caches_like_the_reference(model, steps, ["blocks"], threshold)
    assert chain.startswith("blocks[4] (WanTransformerBlock); side lists:") and side in chain
    assert 0 < len(cached) < STEPS - 1


ONE_BLOCK_LISTS = [
    ("FluxTransformer2DModel", dict(num_layers=1, num_single_layers=1),
     ["transformer_blocks", "single_transformer_blocks"]),
    ("HunyuanVideoTransformer3DModel", dict(num_layers=1, num_single_layers=1),
     ["transformer_blocks", "single_transformer_blocks"]),
    ("ChromaTransformer2DModel", dict(num_layers=1, num_single_layers=1),
     ["transformer_blocks", "single_transformer_blocks"]),
    ("AuraFlowTransformer2DModel", dict(num_mmdit_layers=1, num_single_dit_layers=1),
     ["joint_transformer_blocks", "single_transformer_blocks"]),
    ("LatteTransformer3DModel", dict(num_layers=1), ["transformer_blocks", "temporal_transformer_blocks"]),
]


@pytest.mark.parametrize("class_name, overrides, lists", ONE_BLOCK_LISTS,
                         ids=["flux-1+1", "hunyuan-video-1+1", "chroma-1+1", "auraflow-1+1", "latte-1+1"])
def test_lists_of_one_block_each_form_a_chain_of_two(class_name, overrides, lists):
    model, steps = _tiny(class_name, **overrides)
    chain, cached = _caches_like_the_reference(model, steps, lists, threshold=1e9)
    assert chain.startswith(f"{lists[0]}[1] (") and f" -> {lists[1]}[1] (" in chain
    assert cached == list(range(1, STEPS))


NO_CHAIN = [
    ("FluxTransformer2DModel", dict(num_layers=1, num_single_layers=0),
     "the model's block lists hold only one block (transformer_blocks: 1 block): nothing to cache"),
    ("WanTransformer3DModel", dict(num_layers=1),
     "the model's block lists hold only one block (blocks: 1 block): nothing to cache"),
    ("WanVACETransformer3DModel", dict(num_layers=1, vace_layers=[0]),
     "no chain of two or more blocks: blocks, the block list carrying the most compute, holds one block and "
     "continues into no other block list, nor another into it (vace_blocks: 1 block, blocks: 1 block)"),
    ("ConsisIDTransformer3DModel", dict(num_layers=1, cross_attn_interval=1),  # diffusers' own test config
     "no chain of two or more blocks: transformer_blocks, the block list carrying the most compute, holds one "
     "block and continues into no other block list, nor another into it (transformer_blocks: 1 block, "
     "perceiver_cross_attention: 1 block)"),
]
"""ConsisID's face cross-attention returns an update added to a stream that bypasses it
(``h + s * attention(face, h)``): no chain block, though it reads the block's output."""


@pytest.mark.parametrize("class_name, overrides, reason", NO_CHAIN,
                         ids=["flux-1+0", "wan-1", "vace-1-with-1", "consisid-1-with-1"])
def test_a_whole_graph_without_a_chain_of_two_blocks_says_so_and_does_not_blame_graph_breaks(
        class_name, overrides, reason):
    model, steps = _tiny(class_name, **overrides)
    compiled = cachedit_fx.compile(model, inner_backend="eager", Fn_compute_blocks=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(compiled, steps[:1])
    messages = [str(w.message) for w in caught if issubclass(w.category, cachedit_fx.CacheditFallbackWarning)]
    assert len(messages) == 1 and reason in messages[0] and "graph break" not in messages[0]
    assert [cached for cached, _ in cache_for_model(model).graphs] == [False]


class Block(torch.nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + torch.tanh(self.lin(x))


class ChunkedConditionEncoder(torch.nn.Module):
    """A wide encoder list run once per chunk of its input (``chunks`` times), whose pooled output
    is added after every main block: more compute than the main blocks, and no candidate."""

    def __init__(self, depth: int, chunks: int) -> None:
        super().__init__()
        self.chunks = chunks
        self.encoder = torch.nn.ModuleList(Block(64) for _ in range(depth))
        self.to_condition = torch.nn.Linear(64, 8)
        self.blocks = torch.nn.ModuleList(Block(8) for _ in range(4))

    def forward(self, x, condition):
        pooled = []
        for chunk in condition.chunk(self.chunks):
            for block in self.encoder:
                chunk = block(chunk)
            pooled.append(chunk.mean(dim=0, keepdim=True))
        condition = self.to_condition(torch.cat(pooled).mean(dim=0))
        for block in self.blocks:
            x = block(x) + condition
        return (x,)


class BlocksRunTwice(torch.nn.Module):
    """The main list runs twice per forward: its blocks are not contiguous runs of nodes."""

    def __init__(self) -> None:
        super().__init__()
        self.refiner = torch.nn.ModuleList(Block(8) for _ in range(2))
        self.blocks = torch.nn.ModuleList(Block(8) for _ in range(4))

    def forward(self, x, condition):
        for block in self.refiner:
            condition = block(condition)
        x = x + condition
        for _ in range(2):
            for block in self.blocks:
                x = block(x)
        return (x,)


class OneBlockAfterABreak(torch.nn.Module):
    """A graph break in the prologue, then a list of one block: the second graph holds the whole list."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 8)
        self.blocks = torch.nn.ModuleList([Block(8)])

    def forward(self, x):
        x = self.embed(x)
        torch._dynamo.graph_break()
        for block in self.blocks:
            x = block(x)
        return (x,)


def _graphs(model, *args, fullgraph=True):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    with torch.no_grad():
        torch.compile(model, backend=backend, fullgraph=fullgraph)(*args)
    return graphs


def _graph(model, *args):
    return _graphs(model, *args)[0]


@pytest.mark.parametrize("depth, chunks", [(2, 1), (3, 1), (2, 3), (5, 4)])
def test_a_heavier_side_list_run_in_chunks_is_not_the_chain(depth, chunks):
    gm = _graph(ChunkedConditionEncoder(depth, chunks), torch.randn(2, 8), torch.randn(4 * chunks, 64))
    chain = analyze_block_chain(gm)
    assert chain.list_paths == ("blocks",)
    roles = {info.path: info for info in chain.lists}
    assert roles["encoder"].role == "prologue" and roles["encoder"].flops > roles["blocks"].flops


def test_a_chain_list_that_is_not_one_run_per_block_still_raises():
    gm = _graph(BlocksRunTwice(), torch.randn(2, 8), torch.randn(2, 8))
    with pytest.raises(cachedit_fx.UnsupportedGraph, match="block blocks.0 is not one contiguous run of nodes"):
        analyze_block_chain(gm)


def test_a_whole_list_after_a_graph_break_is_not_said_to_be_split_by_it():
    before, after = _graphs(OneBlockAfterABreak(), torch.randn(2, 8), fullgraph=False)
    with pytest.raises(NoBlocks):
        analyze_block_chain(before)
    with pytest.raises(cachedit_fx.UnsupportedGraph) as raised:
        analyze_block_chain(after)
    assert "only one block (blocks: 1 block)" in str(raised.value) and "graph break" not in str(raised.value)
