"""The ``cache_kernels`` choices make the same decisions and outputs; each really runs the
implementation it names (Triton through the CPU interpreter here)."""

from __future__ import annotations

import pytest
import torch

import cachedit_fx
from cachedit_fx.kernels import l1_rel_diff_triton as l1_triton_module
from cachedit_fx.kernels import taylor_triton as taylor_triton_module
from models import TINY_MODELS, run, trajectory

STEPS = 10
THRESHOLDS = {"flux": 0.45, "wan": 0.15}


@pytest.fixture
def launches(monkeypatch):
    """Counts launches of each Triton launcher."""
    counts = {"l1": 0, "push": 0, "forecast": 0}

    def counting(key, fn):
        def wrapper(*args, **kwargs):
            counts[key] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(l1_triton_module, "l1_rel_diff_triton", counting("l1", l1_triton_module.l1_rel_diff_triton))
    monkeypatch.setattr(taylor_triton_module, "taylor_push_triton",
                        counting("push", taylor_triton_module.taylor_push_triton))
    monkeypatch.setattr(taylor_triton_module, "taylor_forecast_triton",
                        counting("forecast", taylor_triton_module.taylor_forecast_triton))
    return counts


def run_with(model, steps, name, kernels, **extra):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="cachedit", options={
        "inner_backend": "eager", "Fn_compute_blocks": 1, "max_warmup_steps": 2,
        "residual_diff_threshold": THRESHOLDS[name], "cache_kernels": kernels, **extra})
    outputs = run(compiled, steps)
    return outputs, cachedit_fx.summary(compiled)


def test_kernel_choices_agree(triton_interpreter, launches):
    """``cache_kernels="triton"``: each step calls the ``cachedit_fx::l1_rel_diff`` custom op
    once and pushes each carried value's residual through ``taylor_push``, each cached step
    applies it through ``taylor_forecast`` (inside the program, or with
    ``in_graph_decision=False`` in the program's parts); decisions equal the torch arithmetic's.
    "auto" and "inductor-fused" leave all of it to the compiler (no custom op)."""
    model, inputs = TINY_MODELS["flux"]()
    steps = list(trajectory(inputs, STEPS))
    reference, ref_summary = run_with(model, steps, "flux", "torch")
    cached = len(ref_summary.cached_steps)
    assert sum(launches.values()) == 0 and 0 < cached < STEPS - 2
    results = []
    for kernels, extra in (("triton", {}), ("auto", {}), ("inductor-fused", {}), ("triton", {"in_graph_decision": False})):
        before = dict(launches)
        results.append(run_with(model, steps, "flux", kernels, **extra))
        ran = {key: launches[key] - before[key] for key in launches}
        if kernels == "triton":
            assert ran["l1"] == STEPS and ran["push"] >= STEPS and ran["forecast"] == cached * ran["push"] // STEPS
        else:
            assert sum(ran.values()) == 0, kernels
    for outputs, summary in results:
        assert summary.cached_steps == ref_summary.cached_steps
        assert summary.residual_diffs == pytest.approx(ref_summary.residual_diffs, rel=1e-4)
        for a, b in zip(outputs, reference):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_taylorseer_runs_the_ladder_kernels_and_decides_as_torch(triton_interpreter, launches):
    """TaylorSeer (a ladder of three levels) with ``cache_kernels="triton"``: every step pushes
    each carried value through the ``taylor_push`` kernel, every cached step forecasts each
    through ``taylor_forecast``; decisions and outputs equal the torch arithmetic's."""
    model, inputs = TINY_MODELS["flux"]()
    steps = list(trajectory(inputs, STEPS))
    calibrated = {"taylorseer_order": 2}
    reference, ref_summary = run_with(model, steps, "flux", "torch", **calibrated)
    assert launches["push"] == launches["forecast"] == 0
    outputs, summary = run_with(model, steps, "flux", "triton", **calibrated)
    cached = len(ref_summary.cached_steps)
    assert 0 < cached < STEPS - 2 and summary.cached_steps == ref_summary.cached_steps
    values = launches["push"] // STEPS
    assert values >= 1 and launches["push"] == values * STEPS and launches["forecast"] == values * cached
    for a, b in zip(outputs, reference):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_unknown_cache_kernels_value_is_rejected():
    model, inputs = TINY_MODELS["flux"]()
    compiled = torch.compile(model, backend="cachedit", options={"cache_kernels": "cuda"})
    with pytest.raises(Exception, match="cache_kernels must be one of"):
        run(compiled, [inputs])
