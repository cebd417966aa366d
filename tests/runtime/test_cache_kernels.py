"""The three ``cache_kernels`` choices make the same decisions and outputs; each really runs
the implementation it names (Triton through the CPU interpreter here)."""

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
        "inner_backend": "eager", "Fn_compute_blocks": 1, "max_warmup_steps": 2,
        "residual_diff_threshold": THRESHOLDS[name], "cache_kernels": kernels, **extra})
    outputs = run(compiled, steps)
    return outputs, cachedit_fx.summary(compiled)


def test_kernel_choices_agree(triton_interpreter, launches):
    """``cache_kernels="triton"``: the step calls the ``cachedit_fx::l1_rel_diff`` custom op
    once per step (inside the program, or with ``in_graph_decision=False`` in its part before
    the branch) and decides as the torch arithmetic does; "auto" and "inductor-fused" leave the
    diff to the compiler (no custom op), with the same decisions."""
    model, inputs = TINY_MODELS["flux"]()
    steps = list(trajectory(inputs, STEPS))
    reference, ref_summary = run_with(model, steps, "flux", "torch")
    assert launches["l1"] == 0
    assert 0 < len(ref_summary.cached_steps) < STEPS - 2
    results = []
    for kernels, extra, l1_launches in (("triton", {}, STEPS), ("auto", {}, 0), ("inductor-fused", {}, 0),
                                        ("triton", {"in_graph_decision": False}, STEPS)):
        before = launches["l1"]
        results.append(run_with(model, steps, "flux", kernels, **extra))
        assert launches["l1"] - before == l1_launches, kernels
    assert launches["update"] == launches["forecast"] == 0
    for outputs, summary in results:
        assert summary.cached_steps == ref_summary.cached_steps
        assert summary.residual_diffs == pytest.approx(ref_summary.residual_diffs, rel=1e-4)
        for a, b in zip(outputs, reference):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_unknown_cache_kernels_value_is_rejected():
    model, inputs = TINY_MODELS["flux"]()
    compiled = torch.compile(model, backend="cachedit", options={"cache_kernels": "cuda"})
    with pytest.raises(Exception, match="cache_kernels must be one of"):
        run(compiled, [inputs])
