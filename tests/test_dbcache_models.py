"""The compiled rewrite against plain compilation (threshold 0) and against the eager
reference DBCache (thresholds that cache), on all seven tiny DiTs."""

from __future__ import annotations

import pytest
import torch

import cachedit_fx
from models import BLOCK_LISTS, MODEL_NAMES, TINY_MODELS, chain_length, run, trajectory
from reference_dbcache import ReferenceDBCache

STEPS = 10
# Near the median step-to-step Fn-residual diff of each random-weight model on this trajectory,
# so that runs mix cached and computed steps.
THRESHOLDS = {
    "flux": 0.33, "qwen_image": 0.5, "wan": 0.11, "sd3": 0.33, "cogvideox": 0.17,
    "hunyuan_video": 0.36, "pixart": 0.05,
}


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_threshold_zero_equals_plain_compiled_model(name):
    model, inputs = TINY_MODELS[name]()
    steps = list(trajectory(inputs, STEPS))
    plain = run(torch.compile(model, backend="aot_eager"), steps)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="cachedit", options={
        "inner_backend": "aot_eager", "Fn_compute_blocks": 1, "residual_diff_threshold": 0.0,
        "max_warmup_steps": 0})
    cached = run(compiled, steps)
    for got, want in zip(cached, plain):
        assert max_rel_err(got, want) <= 1e-5
    summary = cachedit_fx.summary(compiled)
    assert summary.cached_steps == []
    assert summary.num_steps == STEPS


def _configs(name: str, model: torch.nn.Module) -> list[tuple[int, int]]:
    n = chain_length(name, model)
    return [(1, 0), (2, 1), (min(8, n - 1), 0)]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_cached_steps_and_outputs_equal_eager_reference(name):
    model, inputs = TINY_MODELS[name]()
    steps = list(trajectory(inputs, STEPS))
    total_cached = 0
    for Fn, Bn in _configs(name, model):
        reference = ReferenceDBCache(model, BLOCK_LISTS[name], Fn, Bn, threshold=THRESHOLDS[name], warmup=1)
        want = run(reference, steps)
        reference.close()
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="cachedit", options={
            "inner_backend": "eager", "Fn_compute_blocks": Fn, "Bn_compute_blocks": Bn,
            "residual_diff_threshold": THRESHOLDS[name], "max_warmup_steps": 1})
        got = run(compiled, steps)
        summary = cachedit_fx.summary(compiled)
        assert summary.cached_steps == reference.cached_steps, f"F{Fn}B{Bn}"
        assert summary.residual_diffs.keys() == reference.diffs.keys()
        for step, diff in reference.diffs.items():
            assert summary.residual_diffs[step] == pytest.approx(diff, rel=1e-4)
        for k, (g, w) in enumerate(zip(got, want)):
            assert max_rel_err(g, w) <= 1e-5, f"F{Fn}B{Bn} step {k}"
        total_cached += len(reference.cached_steps)
        assert len(reference.cached_steps) < STEPS - 1, f"F{Fn}B{Bn}: threshold caches every step"
    assert total_cached > 0, "threshold never caches: the test would not exercise the cached path"
