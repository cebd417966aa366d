"""Per-request cache contexts: requests interleaved step by step on one compiled model (a
serving loop) each behave exactly as they do alone, and never see the other's residuals."""

from __future__ import annotations

import logging
import threading

import torch

import cachedit_fx
from cachedit_fx.tiny_models import tiny_flux
from models import run, trajectory

STEPS = 10
OPTIONS = {"inner_backend": "eager", "Fn_compute_blocks": 1, "residual_diff_threshold": 0.35,
           "max_warmup_steps": 2, "num_inference_steps": STEPS}


def requests():
    model, inputs = tiny_flux()
    first = list(trajectory(inputs, STEPS, seed=1))
    second_inputs = dict(inputs, hidden_states=torch.randn(inputs["hidden_states"].shape,
                                                           generator=torch.Generator().manual_seed(7)))
    second = list(trajectory(second_inputs, STEPS, seed=2))
    return model, first, second


def solo(model, steps):
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="cachedit", options=OPTIONS)
    outputs = run(compiled, steps)
    return outputs, cachedit_fx.summary(compiled)


def step(compiled, inputs):
    with torch.no_grad():
        return compiled(**inputs, return_dict=False)[0].clone()


def test_interleaved_requests_equal_their_solo_runs():
    model, first, second = requests()
    want_a, summary_a = solo(model, first)
    want_b, summary_b = solo(model, second)
    assert summary_a.num_cached_steps > 0 and summary_b.num_cached_steps > 0
    assert not torch.allclose(want_a[-1], want_b[-1])  # a residual applied to the wrong request would show

    torch._dynamo.reset()
    compiled = torch.compile(model, backend="cachedit", options=OPTIONS)
    a, b = cachedit_fx.cache_context(compiled, "a"), cachedit_fx.cache_context(compiled, "b")
    got_a, got_b = [], []
    for k in range(STEPS):
        with a:
            got_a.append(step(compiled, first[k]))
        with b:
            got_b.append(step(compiled, second[k]))
    for got, want in ((got_a, want_a), (got_b, want_b)):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)
    assert a.summary().cached_steps == summary_a.cached_steps
    assert cachedit_fx.summary(compiled, context="b").cached_steps == summary_b.cached_steps
    with b:
        assert cachedit_fx.summary(compiled).cached_steps == summary_b.cached_steps
    a.close()
    assert "a" not in cachedit_fx.runtime.registry.cache_for_model(compiled).contexts


def test_contexts_in_threads_are_isolated():
    model, first, second = requests()
    want_a, _ = solo(model, first)
    want_b, _ = solo(model, second)
    torch._dynamo.reset()
    # Triton's CPU interpreter (TRITON_INTERPRET=1 in these tests) is not thread-safe; real Triton is
    compiled = torch.compile(model, backend="cachedit", options={**OPTIONS, "cache_kernels": "torch"})
    step(compiled, first[0])  # compile once, in the default context
    results: dict[str, list[torch.Tensor]] = {}
    barrier = threading.Barrier(2, timeout=120)

    def serve(name, steps):
        outputs = []
        with cachedit_fx.cache_context(compiled, name):
            for inputs in steps:
                barrier.wait()
                outputs.append(step(compiled, inputs))
        results[name] = outputs

    threads = [threading.Thread(target=serve, args=("a", first)), threading.Thread(target=serve, args=("b", second))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in ((results["a"], want_a), (results["b"], want_b)):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=0, atol=0)


def test_refresh_before_compile_is_applied_and_contexts_refresh_alone(caplog):
    model, first, second = requests()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="cachedit", options={**OPTIONS, "num_inference_steps": None})
    cachedit_fx.refresh(compiled, num_inference_steps=4)  # before the first call: remembered
    with caplog.at_level(logging.INFO, logger="cachedit_fx"):
        run(compiled, first[:4])
    assert cachedit_fx.summary(compiled).num_steps == 4
    done = [r.getMessage() for r in caplog.records if "generation done" in r.getMessage()]
    assert len(done) == 1 and "num_inference_steps reached" in done[0] and "context='default'" in done[0]
    with cachedit_fx.cache_context(compiled, "other"):
        run(compiled, second[:3])
        cachedit_fx.refresh(compiled)
        assert cachedit_fx.summary(compiled).num_steps == 3  # the finished generation is reported
    assert cachedit_fx.summary(compiled).num_steps == 4
