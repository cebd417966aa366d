"""The three ``cache_kernels`` choices make the same decisions and outputs; each really runs
the implementation it names (Triton through the CPU interpreter here)."""

from __future__ import annotations

import pytest
import torch

import cachedit_fx
from cachedit_fx.kernels import l1_rel_diff_triton as l1_triton_module
from cachedit_fx.kernels import taylor_triton as taylor_triton_module
from cachedit_fx.passes.fuse_diff_into_head import HEAD_SUMS, PREV_RESIDUAL
from models import TINY_MODELS, run, trajectory

STEPS = 10
THRESHOLDS = {"flux": 0.45, "wan": 0.15}


@pytest.fixture
def launches(monkeypatch):
    """Counts launches of each Triton launcher."""
    counts = {"l1": 0, "update": 0, "forecast": 0}

    def counting(key, fn):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(l1_triton_module, "l1_rel_diff_triton", counting("l1", l1_triton_module.l1_rel_diff_triton))
    monkeypatch.setattr(taylor_triton_module, "taylor_update_triton",
                        counting("update", taylor_triton_module.taylor_update_triton))
    monkeypatch.setattr(taylor_triton_module, "taylor_forecast_triton",
                        counting("forecast", taylor_triton_module.taylor_forecast_triton))
    return counts


def run_with(model, steps, name, kernels, **extra):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="cachedit", options={
        "inner_backend": "aot_eager", "Fn_compute_blocks": 1, "max_warmup_steps": 2,
        "residual_diff_threshold": THRESHOLDS[name], "cache_kernels": kernels, "in_graph_decision": False, **extra})
    outputs = run(compiled, steps)
    return outputs, cachedit_fx.summary(compiled)


@pytest.mark.parametrize("name", ["flux"])  # two carried streams; one-stream models add nothing here
def test_kernel_choices_agree(triton_interpreter, launches, name, tmp_path):
    model, inputs = TINY_MODELS[name]()
    steps = list(trajectory(inputs, STEPS))
    reference, ref_summary = run_with(model, steps, name, "torch")
    assert launches == {"l1": 0, "update": 0, "forecast": 0}
    assert 0 < len(ref_summary.cached_steps) < STEPS - 2

    triton_out, triton_summary = run_with(model, steps, name, "triton")
    computed, cached = STEPS - ref_summary.num_cached_steps, ref_summary.num_cached_steps
    carried = launches["update"] // computed
    # One diff per step: the first step's is taken against the previous run's residual (the
    # model's state carries over) and dropped when the rising timestep starts a generation.
    assert launches == {"l1": STEPS, "update": computed * carried, "forecast": cached * carried}
    assert carried >= 1

    before = dict(launches)
    fused_out, fused_summary = run_with(model, steps, name, "inductor-fused", dump_dir=str(tmp_path))
    assert launches["l1"] == before["l1"], "inductor-fused must not launch the separate diff kernel"
    head_code = next(tmp_path.glob("*fuse_diff_into_head.py")).read_text()
    assert PREV_RESIDUAL in head_code and HEAD_SUMS in head_code

    for summary in (triton_summary, fused_summary):
        assert summary.cached_steps == ref_summary.cached_steps
        assert summary.residual_diffs == pytest.approx(ref_summary.residual_diffs, rel=1e-4)
    for outputs in (triton_out, fused_out):
        for a, b in zip(outputs, reference):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_unknown_cache_kernels_value_is_rejected():
    model, inputs = TINY_MODELS["flux"]()
    compiled = torch.compile(model, backend="cachedit", options={"cache_kernels": "cuda"})
    with pytest.raises(Exception, match="cache_kernels must be one of"):
        run(compiled, [inputs])


def test_auto_uses_triton_only_where_it_runs(triton_interpreter, launches, monkeypatch):
    model, inputs = TINY_MODELS["wan"]()
    steps = list(trajectory(inputs, 4))
    run_with(model, steps, "wan", "auto")
    assert launches["l1"] > 0 and launches["update"] > 0, "CPU under TRITON_INTERPRET=1: Triton"
    before = dict(launches)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    run_with(model, steps, "wan", "auto")
    assert launches == before, "plain CPU: plain torch, no custom-op dispatch"


def test_the_in_graph_step_calls_the_diff_kernel_it_is_given(triton_interpreter, launches):
    """``cache_kernels="triton"`` with the default decision: the program calls the
    ``cachedit_fx::l1_rel_diff`` custom op once per step (inside the compiled program) and
    decides as the torch arithmetic does."""
    model, inputs = TINY_MODELS["flux"]()
    steps = list(trajectory(inputs, STEPS))
    reference, ref_summary = run_with(model, steps, "flux", "torch", in_graph_decision=None)
    assert launches["l1"] == 0
    got, summary = run_with(model, steps, "flux", "triton", in_graph_decision=None)
    assert launches == {"l1": STEPS, "update": 0, "forecast": 0}
    assert summary.cached_steps == ref_summary.cached_steps and 0 < len(summary.cached_steps) < STEPS - 2
    assert summary.residual_diffs == pytest.approx(ref_summary.residual_diffs, rel=1e-4)
    for a, b in zip(got, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
