"""Separate-CFG streams: a loop calling the model twice per step (different conditioning).
Each stream's decisions and outputs equal a run of that stream alone; no cross-talk. The same
with the step decided inside the compiled program (``in_graph_decision``)."""

from __future__ import annotations

import pytest
import torch

import cachedit_fx
from models import TINY_MODELS, trajectory

STEPS = 10
THRESHOLD = 0.15


def calls(inputs, uncond_first: bool):
    """(role, inputs) per call: conditional and unconditional calls of each step, same latents and t."""
    negative = torch.randn(inputs["encoder_hidden_states"].shape, generator=torch.Generator().manual_seed(7))
    for step_inputs in trajectory(inputs, STEPS):
        uncond = {**step_inputs, "encoder_hidden_states": negative}
        order = [("uncond", uncond), ("cond", step_inputs)] if uncond_first else [("cond", step_inputs),
                                                                                 ("uncond", uncond)]
        yield from order


def compile_wan(model, **options):
    torch._dynamo.reset()
    return torch.compile(model, backend="cachedit", options={
        "inner_backend": "eager", "Fn_compute_blocks": 1, "residual_diff_threshold": THRESHOLD,
        "max_warmup_steps": 2, **options})


def run_roles(compiled, sequence):
    outputs = {"cond": [], "uncond": []}
    with torch.no_grad():
        for role, kwargs in sequence:
            outputs[role].append(compiled(**kwargs, return_dict=False)[0].clone())
    return outputs


@pytest.fixture(scope="module")
def solo_runs():
    """Each conditioning run alone: the expected per-stream behaviour."""
    model, inputs = TINY_MODELS["wan"]()
    result = {}
    for role in ("cond", "uncond"):
        compiled = compile_wan(model)
        outs = run_roles(compiled, [c for c in calls(inputs, False) if c[0] == role])[role]
        result[role] = (outs, cachedit_fx.summary(compiled))
    for role in result:
        assert 0 < result[role][1].num_cached_steps < STEPS - 2
    assert result["cond"][1].cached_steps != result["uncond"][1].cached_steps or \
        result["cond"][1].residual_diffs != result["uncond"][1].residual_diffs
    return model, inputs, result


@pytest.mark.parametrize("options,uncond_first", [
    ({}, False),
    ({"enable_separate_cfg": True}, False),
    ({"cfg_compute_first": True}, True),
    ({"enable_separate_cfg": True, "cfg_compute_first": True, "num_inference_steps": STEPS}, True),
    ({"in_graph_decision": True}, False),
    ({"in_graph_decision": True, "cfg_compute_first": True, "inner_backend": "aot_eager"}, True),
    ({"in_graph_decision": True, "enable_separate_cfg": True, "cfg_compute_first": True,
      "num_inference_steps": STEPS}, True),
], ids=["auto", "forced", "auto-uncond-first", "forced-uncond-first-steps", "in-graph-auto",
        "in-graph-auto-uncond-first", "in-graph-forced-uncond-first-steps"])
def test_each_stream_equals_its_solo_run(solo_runs, options, uncond_first):
    model, inputs, solo = solo_runs
    compiled = compile_wan(model, **options)
    for generation in range(2):
        outputs = run_roles(compiled, calls(inputs, uncond_first))
        for role, stream in (("cond", "default"), ("uncond", "uncond")):
            summary = cachedit_fx.summary(compiled, stream=stream)
            assert summary.num_steps == STEPS, f"generation {generation}"
            assert summary.cached_steps == solo[role][1].cached_steps, f"{role}, generation {generation}"
            assert summary.residual_diffs == pytest.approx(solo[role][1].residual_diffs, rel=1e-6)
            for got, want in zip(outputs[role], solo[role][0]):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("in_graph", [False, True])
def test_one_stream_when_separate_cfg_is_off(solo_runs, in_graph):
    model, inputs, solo = solo_runs
    compiled = compile_wan(model, enable_separate_cfg=False, in_graph_decision=in_graph)
    run_roles(compiled, calls(inputs, False))
    summary = cachedit_fx.summary(compiled)
    assert summary.num_steps == 2 * STEPS
    assert cachedit_fx.summary(compiled, stream="uncond").num_steps == 0


@pytest.mark.parametrize("in_graph", [False, True])
def test_uncond_follows_cond_decision_without_separate_diff(solo_runs, in_graph):
    model, inputs, solo = solo_runs
    compiled = compile_wan(model, cfg_diff_compute_separate=False, in_graph_decision=in_graph)
    run_roles(compiled, calls(inputs, False))
    cond = cachedit_fx.summary(compiled)
    uncond = cachedit_fx.summary(compiled, stream="uncond")
    assert cond.cached_steps == solo["cond"][1].cached_steps
    assert uncond.cached_steps == cond.cached_steps
    assert uncond.num_diffs == 0, "the unconditional stream takes no diff of its own"
