"""The trained digits testbed (``benchmarks/quality``): the shipped weights still sample
digits, training is reproducible, the quality measures are right, and a fixed cache config
on the trained model caches a known set of steps while staying above a fixed PSNR."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import cachedit_fx
from benchmarks.models import FLUX_BLOCKS, generate
from benchmarks.quality import measures
from benchmarks.quality.classifier import accuracy, load_classifier
from benchmarks.quality.data import load_digits_split, to_unit_range
from benchmarks.quality.model import (CLASSIFIER_WEIGHTS, WEIGHTS_DIR, balanced_labels, digits_bench_model,
                                      patchify, unpatchify)
from reference_dbcache import ReferenceDBCache

CPU = torch.device("cpu")
PER_CLASS = 2
STEPS = 28
REGRESSION = dict(Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=0.12, max_warmup_steps=4)
EXPECTED_CACHED_STEPS = [4, 5, 6, 7, 8, 10, 11, 13, 14, 16, 18, 20, 22]  # measured on the shipped weights
MIN_PSNR_DB = 42.0  # measured 44.3 dB


def _call(module):
    return lambda **inputs: module(**inputs, return_dict=False)[0]


def _sample(step_fn, bench, inputs):
    with torch.no_grad():
        return to_unit_range(unpatchify(generate(step_fn, bench, inputs, STEPS)))


def test_fixed_config_caches_known_steps_and_stays_above_psnr():
    bench = digits_bench_model(PER_CLASS)
    model = bench.build(CPU, torch.float32)
    inputs = bench.make_inputs(torch.Generator(), CPU, torch.float32)
    plain = _sample(_call(torch.compile(model, backend="aot_eager")), bench, inputs)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="cachedit",
                             options={**REGRESSION, "num_inference_steps": STEPS, "inner_backend": "aot_eager"})
    cached = _sample(_call(compiled), bench, inputs)
    assert cachedit_fx.summary(compiled).cached_steps == EXPECTED_CACHED_STEPS

    oracle = ReferenceDBCache(model, list(FLUX_BLOCKS), REGRESSION["Fn_compute_blocks"],
                              REGRESSION["Bn_compute_blocks"], REGRESSION["residual_diff_threshold"],
                              warmup=REGRESSION["max_warmup_steps"])
    try:
        want = _sample(_call(oracle), bench, inputs)
    finally:
        oracle.close()
    assert oracle.cached_steps == EXPECTED_CACHED_STEPS
    torch.testing.assert_close(cached, want, rtol=0, atol=1e-4)

    psnr = measures.batch_psnr(cached, plain)
    assert MIN_PSNR_DB <= psnr < math.inf
    classifier = load_classifier(CLASSIFIER_WEIGHTS)
    assert measures.label_agreement(classifier, plain, balanced_labels(PER_CLASS)) >= 0.8
    assert measures.label_agreement(classifier, cached, balanced_labels(PER_CLASS)) >= 0.8


def test_shipped_classifier_recognises_test_digits():
    _, test = load_digits_split()
    assert accuracy(load_classifier(CLASSIFIER_WEIGHTS), test) >= 0.95


def test_retraining_reproduces_the_shipped_loss_curve():
    """The first steps of the shipped run, retrained eagerly, give the same losses up to
    float noise (the shipped run compiled its forward), and a rerun is bit for bit equal."""
    from benchmarks.quality.train import train_diffusion

    record = json.loads((WEIGHTS_DIR / "training.json").read_text())
    hyper = record["hyperparameters"]
    train, _ = load_digits_split()
    steps = 6
    first = train_diffusion(train, **{**hyper, "steps": steps})[2]
    again = train_diffusion(train, **{**hyper, "steps": steps})[2]
    assert first == again
    # the schedule differs from the shipped one only in its length, which the warmup steps don't see
    assert steps < hyper["warmup"]
    np.testing.assert_allclose(first, record["losses"][:steps], rtol=1e-3)


def test_patchify_round_trips_and_orders_tokens_row_major():
    images = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    tokens = patchify(images)
    assert tokens.shape == (2, 64, 4)
    torch.testing.assert_close(unpatchify(tokens), images)
    assert tokens[0, 1].tolist() == [2.0, 3.0, 18.0, 19.0]  # row 0, column 1: pixels (0,2),(0,3),(1,2),(1,3)


def test_frechet_distance_matches_the_matrix_square_root_formula():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)) + 0.5
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    want = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(cov_a + cov_b - 2 * linalg.sqrtm(cov_a @ cov_b).real)
    assert measures.frechet_distance(a, b) == pytest.approx(want, rel=1e-8)
    assert measures.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shift = np.array([1.0, -2.0, 0, 0, 0, 3.0])
    assert measures.frechet_distance(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-8)
    with pytest.raises(ValueError, match="feature sets"):
        measures.frechet_distance(a, b[:, :5])


def test_batch_psnr_and_ssim():
    images = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    assert measures.batch_psnr(images, images) == math.inf
    assert measures.mean_ssim(images, images) == pytest.approx(1.0)
    noisy = (images + 0.1).clamp(0, 1)
    mse = float((noisy.double() - images.double()).pow(2).mean())
    assert measures.batch_psnr(noisy, images) == pytest.approx(10 * math.log10(1 / mse))
    assert measures.mean_ssim(noisy, images) < 1.0


def test_quality_benchmark_quick_run_scores_every_family(tmp_path):
    """The benchmark end to end at smoke size (eager pieces; timings are not asserted)."""
    from benchmarks.quality import bench

    results = bench.main(["--quick", "--inner-backend", "eager", "--per-class", "1", "--steps", "8",
                          "--out", str(tmp_path)])
    for name in ("results.json", "results.md", "speed_vs_quality.png"):
        assert (tmp_path / name).stat().st_size > 0
    rows = {r["system"]: r for r in results["rows"]}
    assert rows["inductor"]["psnr_db"] == math.inf and rows["inductor"]["num_cached_steps"] == 0
    mask = cachedit_fx.steps_mask(mask_policy="fast", total_steps=8)
    scm = rows["cachedit/SCM-fast"]
    assert scm["cached_steps"] == [s for s in range(8) if s >= bench.WARMUP and mask[s] == 0]
    assert scm["skipped_blocks"] == len(scm["cached_steps"]) * 7 and scm["ideal_speedup"] > 1
    assert scm["psnr_db"] < math.inf and 0 < scm["ssim"] < 1
    assert all(0 <= r["label_agreement"] <= 1 and r["frechet"] > 0 for r in rows.values())
    if "cache-dit/F1B0 t=0.12" in rows:  # the same algorithm, the same decisions
        assert rows["cache-dit/F1B0 t=0.12"]["cached_steps"] == rows["cachedit/F1B0 t=0.12"]["cached_steps"]
    assert "diffusers-fbc t=0.12" in rows
    prune = rows["cachedit/DBPrune F1B0 t=0.12"]
    assert (prune["ideal_speedup"] > 1) == (prune["skipped_blocks"] > 0)
