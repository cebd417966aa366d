from __future__ import annotations

import pytest

from cachedit_fx.config import DBCacheConfig
from cachedit_fx.runtime.policy import StepCounters, should_cache
from cachedit_fx.runtime.stats import GenerationStats


def counters(step=10, cached=0, continuous=0, accumulated=0.0, has=True):
    return StepCounters(step, cached, continuous, accumulated, has)


def test_threshold_is_strict_and_zero_never_caches():
    config = DBCacheConfig(residual_diff_threshold=0.1, max_warmup_steps=0)
    assert should_cache(config, counters(), 0.0999)[0]
    assert not should_cache(config, counters(), 0.1)[0]
    assert not should_cache(config, counters(), float("nan"))[0]
    assert not should_cache(DBCacheConfig(residual_diff_threshold=0.0, max_warmup_steps=0), counters(), 0.0)[0]
    assert not should_cache(config, counters(has=False), None)[0]


def test_decision_order_reports_the_first_rule_that_computes():
    config = DBCacheConfig(residual_diff_threshold=1.0, max_warmup_steps=4, max_cached_steps=2,
                           max_continuous_cached_steps=1, max_accumulated_residual_diff_threshold=0.5)
    assert should_cache(config, counters(step=2, cached=5), 0.0) == (False, "warmup")
    assert should_cache(config, counters(cached=2, continuous=1), 0.0) == (False, "max_cached_steps")
    assert should_cache(config, counters(cached=1, continuous=1), 0.0) == (False, "max_continuous_cached_steps")
    assert should_cache(config, counters(cached=1, accumulated=0.5), 0.0) == (False, "max_accumulated_residual_diff_threshold")
    assert should_cache(config, counters(cached=1), 0.0) == (True, "diff")


def test_static_mask_caches_zero_steps_only_with_a_residual():
    config = DBCacheConfig(max_warmup_steps=0, steps_computation_mask=[1, 0, 1], steps_computation_policy="static",
                           residual_diff_threshold=0.0)
    assert should_cache(config, counters(step=1), None) == (True, "static mask")
    assert should_cache(config, counters(step=1, has=False), None)[0] is False
    assert should_cache(config, counters(step=2), 0.0) == (False, "mask")


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
