"""Each DBCache control and generation boundary, on tiny FLUX, against the eager reference.

Thresholds here cache every eligible step, so each control is the only thing that decides:
ignoring it changes the cached-step set.
"""

from __future__ import annotations

import pytest
import torch

import cachedit_fx
from models import BLOCK_LISTS, TINY_MODELS, run, trajectory
from reference_dbcache import ReferenceDBCache

STEPS = 12
ALWAYS = 100.0  # every step with a previous residual passes the diff test


def compile_flux(model, **options):
    base = {"inner_backend": "eager", "Fn_compute_blocks": 1, "residual_diff_threshold": ALWAYS,
            "max_warmup_steps": 0}
    return torch.compile(model, backend="cachedit", options={**base, **options})


def reference_cached(model, inputs, steps=STEPS, **controls):
    ref = ReferenceDBCache(model, BLOCK_LISTS["flux"], 1, 0, threshold=controls.pop("threshold", ALWAYS), **controls)
    run(ref, trajectory(inputs, steps))
    ref.close()
    return ref.cached_steps


@pytest.mark.parametrize("options,controls,expected", [
    ({"max_warmup_steps": 4}, {"warmup": 4}, [4, 5, 6, 7, 8, 9, 10, 11]),
    ({"max_warmup_steps": 6, "warmup_interval": 2}, {"warmup": 6, "warmup_interval": 2}, [1, 3, 5, 6, 7, 8, 9, 10, 11]),
    ({"max_cached_steps": 3}, {"max_cached": 3}, [1, 2, 3]),
    ({"max_continuous_cached_steps": 1}, {"max_continuous": 1}, [1, 3, 5, 7, 9, 11]),
    ({"max_continuous_cached_steps": 2}, {"max_continuous": 2}, [1, 2, 4, 5, 7, 8, 10, 11]),
    ({"steps_computation_mask": [1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1], "steps_computation_policy": "static",
      "residual_diff_threshold": 0.0},
     {"mask": [1, 1, 0, 1, 0, 0, 1, 1, 0, 0, 0, 1], "mask_policy": "static", "threshold": 0.0}, [2, 4, 5, 8, 9, 10]),
])
def test_control_matches_reference_and_expected_steps(options, controls, expected):
    model, inputs = TINY_MODELS["flux"]()
    assert reference_cached(model, inputs, **controls) == expected
    torch._dynamo.reset()
    compiled = compile_flux(model, **options)
    run(compiled, trajectory(inputs, STEPS))
    assert cachedit_fx.summary(compiled).cached_steps == expected


def test_max_accumulated_residual_diff_stops_caching_for_the_rest_of_the_generation():
    model, inputs = TINY_MODELS["flux"]()
    free = compile_flux(model)
    run(free, trajectory(inputs, STEPS))
    diffs = cachedit_fx.summary(free).residual_diffs
    limit = diffs[1] + diffs[2] + 0.5 * diffs[3]  # reached after the third cached step
    torch._dynamo.reset()
    compiled = compile_flux(model, max_accumulated_residual_diff_threshold=limit)
    run(compiled, trajectory(inputs, STEPS))
    assert cachedit_fx.summary(compiled).cached_steps == [1, 2, 3]
    assert reference_cached(model, inputs, max_accumulated=limit) == [1, 2, 3]


@pytest.mark.parametrize("policy", ["slow", "ultra"])
def test_static_preset_mask_caches_exactly_its_zero_steps(policy):
    model, inputs = TINY_MODELS["flux"]()
    mask = cachedit_fx.steps_mask(mask_policy=policy, total_steps=STEPS)
    compiled = compile_flux(model, steps_computation_mask=mask, steps_computation_policy="static",
                            residual_diff_threshold=0.0)
    run(compiled, trajectory(inputs, STEPS))
    assert cachedit_fx.summary(compiled).cached_steps == [i for i, m in enumerate(mask) if m == 0]


def test_dynamic_mask_still_applies_the_threshold():
    model, inputs = TINY_MODELS["flux"]()
    mask = [1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1]
    compiled = compile_flux(model, steps_computation_mask=mask, residual_diff_threshold=0.33)
    run(compiled, trajectory(inputs, STEPS))
    got = cachedit_fx.summary(compiled).cached_steps
    assert got == reference_cached(model, inputs, mask=mask, threshold=0.33)
    assert set(got) < {i for i, m in enumerate(mask) if m == 0}  # some 0-steps computed: diff too large


@pytest.mark.parametrize("boundary", [{"num_inference_steps": 6}, {}], ids=["steps_count", "timestep_rises"])
def test_second_generation_without_refresh_starts_fresh(boundary):
    """Generation 2 starts at call 7 by the step count, or (without it) by the timestep
    jumping back up; either way it equals generation 1 bit for bit."""
    model, inputs = TINY_MODELS["flux"]()
    compiled = compile_flux(model, max_warmup_steps=2, **boundary)
    steps = list(trajectory(inputs, 6))
    first = run(compiled, steps)
    assert cachedit_fx.summary(compiled).cached_steps == [2, 3, 4, 5]
    second = run(compiled, steps)
    assert cachedit_fx.summary(compiled).cached_steps == [2, 3, 4, 5]
    assert cachedit_fx.summary(compiled).num_steps == 6
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_second_generation_without_boundary_signal_would_reuse_state():
    """Control for the two tests above: same timestep rising is what makes them pass."""
    model, inputs = TINY_MODELS["flux"]()
    compiled = compile_flux(model, max_warmup_steps=2)
    steps = list(trajectory(inputs, 6))
    run(compiled, steps)
    run(compiled, [dict(s, timestep=s["timestep"] * 0.01) for s in steps[:1]])  # keeps falling
    assert cachedit_fx.summary(compiled).num_steps == 7


def test_refresh_restarts_and_applies_new_options():
    model, inputs = TINY_MODELS["flux"]()
    compiled = compile_flux(model, max_warmup_steps=2)
    steps = list(trajectory(inputs, 6))
    run(compiled, steps[:3])
    cachedit_fx.refresh(compiled, num_inference_steps=3, max_warmup_steps=3)
    run(compiled, steps[3:])  # timestep keeps falling: only refresh marks the boundary
    summary = cachedit_fx.summary(compiled)
    assert summary.num_steps == 3 and summary.cached_steps == []
    cachedit_fx.refresh(model)  # works on the original module too
    assert cachedit_fx.summary(model).num_steps == 3  # last generation's stats are kept


def test_shape_change_mid_generation_never_applies_a_stale_residual():
    model, inputs = TINY_MODELS["flux"]()
    compiled = compile_flux(model, max_warmup_steps=1)
    run(compiled, list(trajectory(inputs, 3)))
    small = dict(inputs, hidden_states=inputs["hidden_states"][:, :8], img_ids=inputs["img_ids"][:8])
    small_steps = list(trajectory(small, 3, offset=3.5))  # timestep keeps falling
    got = run(compiled, small_steps)
    summary = cachedit_fx.summary(compiled)
    assert summary.num_steps == 3 and summary.cached_steps == [1, 2]
    ref = ReferenceDBCache(model, BLOCK_LISTS["flux"], 1, 0, threshold=ALWAYS, warmup=1)
    want = run(ref, small_steps)
    ref.close()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
