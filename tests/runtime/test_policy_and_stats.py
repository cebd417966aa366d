"""The step's decision rule (``dbcache_step.decide``, on tensors) and the statistics."""

from __future__ import annotations

import math

import pytest

from cachedit_fx.config import DBCacheConfig
from cachedit_fx.runtime.stats import GenerationStats
from decision import should_cache


def test_threshold_is_strict_and_zero_never_caches():
    config = DBCacheConfig(residual_diff_threshold=0.1, max_warmup_steps=0)
    assert should_cache(config, diff=0.0999)
    assert not should_cache(config, diff=0.1)
    assert not should_cache(config, diff=float("nan"))
    assert not should_cache(config, diff=math.inf)
    assert not should_cache(DBCacheConfig(residual_diff_threshold=0.0, max_warmup_steps=0), diff=0.0)
    assert not should_cache(config, has=False)


def test_each_limit_alone_makes_the_step_compute():
    config = DBCacheConfig(residual_diff_threshold=1.0, max_warmup_steps=4, max_cached_steps=2,
                           max_continuous_cached_steps=1, max_accumulated_residual_diff_threshold=0.5)
    assert should_cache(config, cached=1)
    assert not should_cache(config, step=2, cached=1)
    assert should_cache(config, step=5, cached=1)  # warmup_interval 1: past max_warmup_steps
    assert not should_cache(config, cached=2)
    assert not should_cache(config, cached=1, continuous=1)
    assert not should_cache(config, cached=1, accumulated=0.5)
    assert should_cache(config, cached=1, accumulated=0.4999)


def test_static_mask_caches_zero_steps_only_with_a_residual():
    config = DBCacheConfig(max_warmup_steps=0, steps_computation_mask=[1, 0, 1], steps_computation_policy="static",
                           residual_diff_threshold=0.0)
    assert should_cache(config, step=1)
    assert not should_cache(config, step=1, has=False)
    assert not should_cache(config, step=2)
    assert not should_cache(config, step=0)


def test_mask_length_must_match_num_inference_steps():
    with pytest.raises(ValueError, match="steps_computation_mask"):
        DBCacheConfig(steps_computation_mask=[1, 0], num_inference_steps=3)


def test_summary_percentiles_and_block_counts():
    stats = GenerationStats(num_blocks=8, compute_blocks_on_cached_step=2)
    diffs = [None, 0.1, 0.2, 0.3, 0.4]
    for step, diff in enumerate(diffs):
        stats.record(step, cached=step in (2, 4), diff=diff)
    s = stats.summary()
    assert s.cached_steps == [2, 4] and s.num_steps == 5
    assert s.diff_min == 0.1 and s.diff_max == 0.4 and s.diff_p50 == pytest.approx(0.25)
    assert s.diff_p25 == pytest.approx(0.175) and s.diff_p95 == pytest.approx(0.385)
    assert s.computed_blocks == 3 * 8 + 2 * 2 and s.cached_blocks == 2 * 6
    assert "| cached steps | 2 [2, 4] |" in str(s)
