"""The step decided inside one compiled program equals the same step with its branch taken on
the host between the program's parts (``in_graph_decision=False``; bit for bit with eager and
aot_eager, every control of the config exercised, two generations), keeps per-thread contexts
apart and takes ``refresh`` changes without recompiling; every feature takes it."""

from __future__ import annotations

import logging

import pytest
import torch

import cachedit_fx
from cachedit_fx.runtime.registry import cache_for_model
from cachedit_fx.tiny_models import TINY_MODELS
from in_graph_configs import CONFIGS
from models import BLOCK_LISTS, run, run_in_threads_interleaved, trajectory
from reference_dbcache import ReferenceDBCache
from test_separate_cfg import calls, compile_wan, run_roles


def _compiled(model, options, in_graph, inner="eager"):
    return cachedit_fx.compile(model, **dict(options, inner_backend=inner, cache_kernels="torch",
                                             enable_separate_cfg=False, in_graph_decision=in_graph))


def _generations(compiled, generations):
    outputs, cached = [], []
    for steps in generations:
        outputs += run(compiled, steps)
        cached.append(cachedit_fx.summary(compiled).cached_steps)
    return outputs, cached, cachedit_fx.summary(compiled)


@pytest.mark.parametrize("name, inner", [("flux", "eager"), ("wan", "aot_eager")])
def test_the_program_equals_its_parts_with_the_branch_taken_on_the_host(name, inner):
    model, inputs = TINY_MODELS[name]()
    generations = [list(trajectory(inputs, 10)), list(trajectory(inputs, 10, seed=2))]
    results = {}
    for in_graph in (False, True):
        torch._dynamo.reset()
        results[in_graph] = _generations(_compiled(model, CONFIGS[name], in_graph, inner), generations)
        cachedit_fx.disable(model)
    (want, want_cached, want_summary), (got, got_cached, got_summary) = results[False], results[True]
    assert got_cached == want_cached and all(got_cached)
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert got_summary.residual_diffs == want_summary.residual_diffs
    assert (got_summary.computed_blocks, got_summary.cached_blocks) == (want_summary.computed_blocks,
                                                                        want_summary.cached_blocks)


def test_a_middle_entered_by_slices_of_one_tensor_equals_its_parts():
    """FLUX's single-stream blocks return their text and image slices of one joined tensor;
    a middle starting after one of them gets operands sharing storage, which ``torch.cond``
    refuses unless they are told apart (traced by AOTAutograd: aot_eager)."""
    model, inputs = TINY_MODELS["flux"]()
    steps = list(trajectory(inputs, 6))
    options = dict(Fn_compute_blocks=5, Bn_compute_blocks=0, residual_diff_threshold=100.0, max_warmup_steps=1)
    results = {}
    for in_graph in (False, True):
        torch._dynamo.reset()
        compiled = _compiled(model, options, in_graph, inner="aot_eager")
        results[in_graph] = run(compiled, steps), cachedit_fx.summary(compiled).cached_steps
        cachedit_fx.disable(model)
    (want, want_cached), (got, got_cached) = results[False], results[True]
    assert got_cached == want_cached == [1, 2, 3, 4, 5]
    assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("calibrator", [
    cachedit_fx.TaylorSeerCalibratorConfig(taylorseer_order=3, calibrator_cache_type="hidden_states"),
    cachedit_fx.FoCaCalibratorConfig(),
], ids=["taylorseer3-hidden-states", "foca"])
def test_calibrator_histories_per_cfg_stream_equal_in_the_program_and_in_parts(calibrator):
    """Separate-CFG streams each keep their own calibrator histories: both streams' outputs
    and decisions are the same in the program and in its parts, bit for bit."""
    model, inputs = TINY_MODELS["wan"]()
    options = dict(calibrator_config=calibrator, cache_kernels="torch")
    results = {}
    for in_graph in (False, True):
        compiled = compile_wan(model, in_graph_decision=in_graph, **options)
        outputs = [run_roles(compiled, calls(inputs, False)) for _ in range(2)]
        results[in_graph] = outputs, [cachedit_fx.summary(compiled, stream=s).cached_steps
                                      for s in ("default", "uncond")]
        cachedit_fx.disable(model)
    (want, want_cached), (got, got_cached) = results[False], results[True]
    assert got_cached == want_cached and all(got_cached)
    for got_generation, want_generation in zip(got, want):
        for role in ("cond", "uncond"):
            assert all(torch.equal(g, w) for g, w in zip(got_generation[role], want_generation[role]))


def test_refresh_changes_settings_without_recompiling_and_threads_keep_their_own_state(compile_reports):
    model, inputs = TINY_MODELS["flux"]()
    options = CONFIGS["flux"]
    first, second = list(trajectory(inputs, 10)), list(trajectory(inputs, 10, seed=2))
    solo = {}
    for threshold in (options["residual_diff_threshold"], 0.6):
        torch._dynamo.reset()
        solo[threshold] = _generations(_compiled(model, dict(options, residual_diff_threshold=threshold), True),
                                       [first])
        cachedit_fx.disable(model)
    torch._dynamo.reset()
    compile_reports.clear()
    compiled = _compiled(model, options, True)
    run(compiled, first)
    cachedit_fx.refresh(compiled, residual_diff_threshold=0.6)
    assert _generations(compiled, [first])[1] == solo[0.6][1] != solo[options["residual_diff_threshold"]][1]
    assert len(compile_reports) == 1, "refresh recompiled"

    cachedit_fx.refresh(compiled, residual_diff_threshold=options["residual_diff_threshold"])
    threaded = run_in_threads_interleaved(compiled, first, second)
    torch._dynamo.reset()
    want_second = _generations(_compiled(model, options, True), [second])
    for (outputs, cached), (want, want_cached, _) in zip(threaded,
                                                         (solo[options["residual_diff_threshold"]], want_second)):
        assert cached == want_cached[0]
        assert all(torch.equal(a, b) for a, b in zip(outputs, want))


@pytest.mark.parametrize("options", [
    {}, dict(cache_kernels="torch"), dict(cache_config=cachedit_fx.DBPruneConfig()), dict(regional_compile=True),
    dict(cache_kernels="triton"), dict(cache_kernels="inductor-fused"),
    dict(cache_config=cachedit_fx.DBPruneConfig(), regional_compile=True),
])
def test_the_default_decides_in_the_program_for_every_feature(options, caplog):
    model, inputs = TINY_MODELS["flux"]()
    compiled = torch.compile(model, backend="cachedit", options=dict(
        dict(Fn_compute_blocks=1, inner_backend="eager"), **options))
    with caplog.at_level(logging.INFO, logger="cachedit_fx"):
        run(compiled, list(trajectory(inputs, 2)))
    assert cache_for_model(compiled).active().step_tensors is not None
    assert "one program (decision in the graph)" in caplog.text


def test_a_dynamic_shape_graph_equals_the_oracle_with_a_new_generation_per_size():
    """Three resolutions, then the second again: the second recompiles with symbolic sizes
    (automatic dynamic shapes) and keeps the step in the program, its state made anew for each
    new size (a new generation, as the oracle starts one)."""
    model, inputs = TINY_MODELS["flux"]()
    gen = torch.Generator().manual_seed(5)
    resolutions = []
    for tokens in (16, 36, 64, 36):
        res = dict(inputs, hidden_states=torch.randn(1, tokens, 4, generator=gen),
                   img_ids=torch.randn(tokens, 3, generator=gen))
        resolutions.append([dict(step, timestep=inputs["timestep"] * (1 - (4 * len(resolutions) + k) / 17))
                            for k, step in enumerate(trajectory(res, 4))])  # t keeps falling
    reference = ReferenceDBCache(model, BLOCK_LISTS["flux"], 1, 0, 0.3, warmup=1)
    want = []
    for steps in resolutions:
        reference.reset()
        want.append((run(reference, steps), reference.cached_steps))
    reference.close()
    compiled = torch.compile(model, backend="cachedit", options=dict(
        Fn_compute_blocks=1, inner_backend="eager", residual_diff_threshold=0.3, max_warmup_steps=1))
    assert any(cached for _, cached in want), "the check needs cached steps"
    for steps, (want_out, want_cached) in zip(resolutions, want):
        outputs = run(compiled, steps)
        assert cachedit_fx.summary(compiled).cached_steps == want_cached
        for a, b in zip(outputs, want_out):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
