"""TaylorSeer calibrator on tiny models against the eager reference extended with the same
calibrator; the calibrator never changes which steps are cached."""

from __future__ import annotations

import pytest
import torch

import cachedit_fx
from models import BLOCK_LISTS, TINY_MODELS, run, trajectory
from reference_dbcache import ReferenceDBCache
from test_dbcache_models import max_rel_err

STEPS = 12
THRESHOLDS = {"flux": 0.45, "wan": 0.15, "qwen_image": 0.6}
# Qwen-Image keeps one tail block so its encoder stream leaves the middle (with Bn = 0 the
# text stream's middle output is dead and only the hidden stream is carried).
BN = {"flux": 0, "wan": 0, "qwen_image": 1}

CASES = [
    ("flux", {"taylorseer_order": 1}),
    ("flux", {"taylorseer_order": 3, "calibrator_cache_type": "hidden_states"}),
    ("wan", {"taylorseer_order": 4}),
    ("qwen_image", {"taylorseer_order": 2}),
    ("qwen_image", {"taylorseer_order": 2, "enable_encoder_calibrator": False}),
    ("qwen_image", {"taylorseer_order": 1, "enable_calibrator": False, "calibrator_cache_type": "hidden_states"}),
]


def check_against_reference(name: str, config, **reference_args) -> None:
    """Compile ``name`` with ``config``: cached steps equal the uncalibrated eager reference's,
    outputs equal the eager reference run with ``reference_args``, and the forecast changes
    some output."""
    model, inputs = TINY_MODELS[name]()
    steps = list(trajectory(inputs, STEPS))
    Bn = BN[name]
    plain = ReferenceDBCache(model, BLOCK_LISTS[name], 1, Bn, threshold=THRESHOLDS[name], warmup=2)
    plain_out = run(plain, steps)
    plain.close()
    options = {"inner_backend": "eager", "Fn_compute_blocks": 1, "Bn_compute_blocks": Bn,
               "residual_diff_threshold": THRESHOLDS[name], "max_warmup_steps": 2}
    compiled = torch.compile(model, backend="cachedit", options={**options, "calibrator_config": config})
    got = run(compiled, steps)
    cached = cachedit_fx.summary(compiled).cached_steps
    assert cached == plain.cached_steps, "a calibrator must not change the decision"
    assert 2 <= len(cached) < STEPS - 2
    reference = ReferenceDBCache(
        model, BLOCK_LISTS[name], 1, Bn, threshold=THRESHOLDS[name], warmup=2,
        taylor_cache_type=config.calibrator_cache_type, hidden_taylor=config.enable_calibrator,
        encoder_taylor=config.enable_encoder_calibrator, **reference_args)
    want = run(reference, steps)
    reference.close()
    assert reference.cached_steps == cached
    for k, (g, w) in enumerate(zip(got, want)):
        assert max_rel_err(g, w) <= 1e-4, f"step {k}"
    assert any(not torch.equal(w, p) for w, p in zip(want, plain_out)), "the forecast must change cached steps"


@pytest.mark.parametrize("name,calibrator", CASES, ids=[f"{n}-{'-'.join(map(str, c.values()))}" for n, c in CASES])
def test_taylorseer_equals_reference_and_keeps_decisions(name, calibrator):
    config = cachedit_fx.TaylorSeerCalibratorConfig(**calibrator)
    check_against_reference(name, config, taylor_order=config.taylorseer_order)


def test_flat_calibrator_keys_and_validation():
    settings = cachedit_fx.parse_options({"taylorseer_order": 2})
    assert settings.calibrator == cachedit_fx.TaylorSeerCalibratorConfig(taylorseer_order=2)
    settings = cachedit_fx.parse_options({
        "calibrator_config": cachedit_fx.TaylorSeerCalibratorConfig(taylorseer_order=3),
        "calibrator_cache_type": "hidden_states"})
    assert settings.calibrator.taylorseer_order == 3 and settings.calibrator.calibrator_cache_type == "hidden_states"
    assert cachedit_fx.parse_options({}).calibrator is None
    for bad, message in [({"taylorseer_order": 5}, "<= 4"), ({"taylorseer_order": 0}, ">= 1"),
                         ({"calibrator_cache_type": "latents"}, "calibrator_cache_type"),
                         ({"calibrator_config": {"taylorseer_order": 1}}, "TaylorSeerCalibratorConfig")]:
        with pytest.raises(ValueError, match=message):
            cachedit_fx.parse_options(bad)


FOCA_CASES = [("flux", {}), ("wan", {"calibrator_cache_type": "hidden_states"}),
              ("qwen_image", {"enable_encoder_calibrator": False})]


@pytest.mark.parametrize("name,calibrator", FOCA_CASES, ids=[n for n, _ in FOCA_CASES])
def test_foca_equals_reference_and_keeps_decisions(name, calibrator):
    check_against_reference(name, cachedit_fx.FoCaCalibratorConfig(**calibrator), foca=True)
