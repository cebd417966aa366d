"""Two transformers in one pipeline (Wan 2.2: ``transformer`` for the high-noise steps,
``transformer_2`` for the rest), each compiled with its own config: each keeps its own state
and behaves exactly as it does alone on its share of the steps."""

from __future__ import annotations

import torch

import cachedit_fx
from cachedit_fx.tiny_models import tiny_wan
from models import run, trajectory

STEPS = 14
SWITCH = 7
HIGH = {"Fn_compute_blocks": 1, "residual_diff_threshold": 0.15, "max_warmup_steps": 2}
LOW = {"Fn_compute_blocks": 1, "Bn_compute_blocks": 1, "residual_diff_threshold": 0.3, "max_warmup_steps": 1,
       "taylorseer_order": 2}


def compile_expert(model, options):
    return torch.compile(model, backend="cachedit", options={"inner_backend": "eager", **options})


def test_each_transformer_keeps_its_own_config_and_state():
    high_model, inputs = tiny_wan(seed=0)
    low_model, _ = tiny_wan(seed=1)
    steps = list(trajectory(inputs, STEPS))

    alone = {}
    for name, model, options, part in (("high", high_model, HIGH, steps[:SWITCH]),
                                       ("low", low_model, LOW, steps[SWITCH:])):
        torch._dynamo.reset()
        compiled = compile_expert(model, options)
        alone[name] = (run(compiled, part), cachedit_fx.summary(compiled))
        assert 0 < alone[name][1].num_cached_steps

    torch._dynamo.reset()
    high, low = compile_expert(high_model, HIGH), compile_expert(low_model, LOW)
    for generation in range(2):
        outputs = run(high, steps[:SWITCH]) + run(low, steps[SWITCH:])
        for name, model in (("high", high), ("low", low)):
            summary = cachedit_fx.summary(model)
            assert summary.cached_steps == alone[name][1].cached_steps, f"{name}, generation {generation}"
            assert summary.num_steps == (SWITCH if name == "high" else STEPS - SWITCH)
        expected = alone["high"][0] + alone["low"][0]
        for got, want in zip(outputs, expected):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_equal_options_reuse_the_graph_but_never_the_cache():
    """Dynamo lifts parameters as inputs, so the second expert (same class, same options) may
    run the graph compiled for the first: the cache must still follow the parameters."""
    high_model, inputs = tiny_wan(seed=0)
    low_model, _ = tiny_wan(seed=1)
    steps = list(trajectory(inputs, STEPS))
    options = dict(HIGH, taylorseer_order=1)

    alone = {}
    for name, model, part in (("high", high_model, steps[:SWITCH]), ("low", low_model, steps[SWITCH:])):
        torch._dynamo.reset()
        compiled = compile_expert(model, options)
        alone[name] = (run(compiled, part), cachedit_fx.summary(compiled).cached_steps)
        cachedit_fx.disable(compiled)

    torch._dynamo.reset()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    high, low = compile_expert(high_model, options), compile_expert(low_model, options)
    outputs = run(high, steps[:SWITCH]) + run(low, steps[SWITCH:])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs == 1  # one graph serves both
    assert cachedit_fx.summary(high).cached_steps == alone["high"][1]
    assert cachedit_fx.summary(low).cached_steps == alone["low"][1]
    assert cachedit_fx.summary(low).num_steps == STEPS - SWITCH
    for got, want in zip(outputs, alone["high"][0] + alone["low"][0]):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
