"""Zero-configuration coverage of diffusers DiT classes (``benchmarks.coverage``): a fast subset
of the support matrix (FLUX.2's joined lists, Z-Image's refiners, Latte's interleaved lists),
and decisions against the independent eager reference for each kind of
chain the analysis handles (streams joined between block lists, refiners before the chain, a side
list feeding the chain, a side list interleaved with it, graph breaks outside the chain or
removed by the capture settings)."""

from __future__ import annotations

import warnings

import pytest
import torch

import cachedit_fx
from benchmarks.coverage.matrix import _run, measure, redraw_zero_parameters, trajectory
from cachedit_fx.example_inputs import SPECS, tiny_model
from models import ToyBlock, matrix_oracle, max_rel_err

STEPS = 8
ALWAYS = 1e9

FAST_ROWS = {  # WanVACE, Mochi, Chroma and Lumina2 run in the reference comparisons below
    "Flux2Transformer2DModel": "transformer_blocks[4] (Flux2TransformerBlock) -> single_transformer_blocks[4]",
    "ZImageTransformer2DModel": "side lists: noise_refiner[2] prologue, context_refiner[2] prologue",
    "LatteTransformer3DModel": "transformer_blocks[4] (BasicTransformerBlock) + temporal_transformer_blocks[4] "
                               "(BasicTransformerBlock) interleaved",
}


@pytest.mark.parametrize("class_name", sorted(FAST_ROWS))
def test_matrix_row_caches_with_zero_configuration(class_name):
    row = measure(class_name)
    assert row["caches"], row
    assert row["threshold0_max_rel_err"] <= 1e-5
    assert row["cached_steps"] == row["expected_cached_steps"] and row["finite"]
    assert len(row["chains"]) == 1 and FAST_ROWS[class_name] in row["chains"][0]


CASES = [
    # text and image joined by cat() between the double- and single-stream lists
    ("ChromaTransformer2DModel", ["transformer_blocks", "single_transformer_blocks"], 1, 0, "hidden_states"),
    # the cut inside the single-stream blocks: x0 is cat(text, image) of the chain entry
    ("ChromaTransformer2DModel", ["transformer_blocks", "single_transformer_blocks"], 5, 1, "hidden_states"),
    # refiners before the chain, and a graph break in the prologue
    ("Lumina2Transformer2DModel", ["layers"], 1, 0, "hidden_states"),
    # control hints from a side list added between main blocks
    ("WanVACETransformer3DModel", ["blocks"], 1, 1, "hidden_states"),
    # a side list's cross-attention interleaved with the chain
    ("ConsisIDTransformer3DModel", ["transformer_blocks"], 1, 0, "hidden_states"),
    # nonzero() in every block: one graph only under the capture settings
    ("MochiTransformer3DModel", ["transformer_blocks"], 2, 0, "hidden_states"),
]


@pytest.mark.parametrize("class_name, lists, Fn, Bn, hidden_arg", CASES,
                         ids=[f"{c[0].removesuffix('Transformer2DModel').removesuffix('Transformer3DModel')}-F{c[2]}B{c[3]}"
                              for c in CASES])
def test_decisions_and_outputs_equal_the_eager_reference(class_name, lists, Fn, Bn, hidden_arg):
    model, inputs = tiny_model(class_name)
    redraw_zero_parameters(model, seed=0)
    spec = SPECS[class_name]
    steps = trajectory(inputs, spec.latent, spec.timestep, STEPS)
    _, free = matrix_oracle(model, lists, steps, ALWAYS, Fn, Bn, hidden_arg)
    diffs = sorted(free.diffs.values())
    threshold = (diffs[len(diffs) // 2 - 1] + diffs[len(diffs) // 2]) / 2  # mid-range, between two diffs
    want, reference = matrix_oracle(model, lists, steps, threshold, Fn, Bn, hidden_arg)
    compiled = cachedit_fx.compile(model, inner_backend="eager", Fn_compute_blocks=Fn, Bn_compute_blocks=Bn,
                                   residual_diff_threshold=threshold, max_warmup_steps=1, num_inference_steps=STEPS)
    got = _run(compiled, steps)
    summary = cachedit_fx.summary(compiled)
    assert 0 < len(reference.cached_steps) < STEPS - 1
    assert summary.cached_steps == reference.cached_steps
    assert summary.residual_diffs.keys() == reference.diffs.keys()
    for step, diff in reference.diffs.items():
        assert summary.residual_diffs[step] == pytest.approx(diff, rel=1e-4)
    assert max_rel_err(got, want) <= 1e-5


class ChainThenBreak(torch.nn.Module):
    """Five blocks, then a graph break in the epilogue: the chain lies whole in the first graph."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(ToyBlock() for _ in range(5))
        self.out = torch.nn.Linear(8, 8)

    def forward(self, x, timestep):
        for block in self.blocks:
            x = block(x)
        torch._dynamo.graph_break()
        return (self.out(x) * 2,)


class BreakInEveryBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(ToyBlock(breaks=True) for _ in range(4))

    def forward(self, x, timestep):
        for block in self.blocks:
            x = block(x)
        return (x,)


def _toy_steps(count: int) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    start, target = torch.randn(2, 8, generator=gen), torch.randn(2, 8, generator=gen)
    return [dict(x=start + (target - start) * k / count, timestep=torch.tensor([1.0 - k / count]))
            for k in range(count)]


def test_a_graph_break_after_the_chain_still_caches_without_a_warning():
    model = ChainThenBreak()
    compiled = cachedit_fx.compile(model, inner_backend="eager", Fn_compute_blocks=1, residual_diff_threshold=ALWAYS,
                                   max_warmup_steps=1, num_inference_steps=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with torch.no_grad():
            outputs = [compiled(**s)[0] for s in _toy_steps(4)]
    assert not [w for w in caught if issubclass(w.category, cachedit_fx.CacheditFallbackWarning)]
    assert cachedit_fx.summary(compiled).cached_steps == [1, 2, 3]
    assert all(torch.isfinite(o).all() for o in outputs)


def test_a_model_compiled_without_cache_says_so_with_the_reason():
    model = BreakInEveryBlock()
    compiled = cachedit_fx.compile(model, inner_backend="eager", Fn_compute_blocks=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.no_grad():
            compiled(**_toy_steps(1)[0])
    for call in (lambda: cachedit_fx.summary(compiled), lambda: cachedit_fx.refresh(compiled),
                 lambda: cachedit_fx.summary(model)):
        with pytest.raises(ValueError, match="compiled without cache.*graph break"):
            call()
    with pytest.raises(cachedit_fx.UnsupportedGraph, match="graph break"):
        cachedit_fx.inspect(model, _toy_steps(1)[0])
