"""The DBCache decision: may this step reuse the cached middle residual?

Order (DESIGN section 3): warmup, step mask, max_cached, max_continuous, max_accumulated,
threshold, no previous residual, diff < threshold (strict).
"""

from __future__ import annotations

import math

from dataclasses import dataclass
from typing import Optional

from cachedit_fx.config import DBCacheConfig


@dataclass(frozen=True)
class StepCounters:
    """What the policy needs to know about the generation so far."""

    step: int
    cached_steps: int
    continuous_cached_steps: int
    accumulated_diff: float
    has_residual: bool


def should_cache(
    config: DBCacheConfig, counters: StepCounters, diff: Optional[float], threshold: Optional[float] = None
) -> tuple[bool, str]:
    """Return ``(cache, reason)``; ``diff`` is None when nothing to compare against exists;
    ``threshold`` overrides ``config.residual_diff_threshold`` (DBPrune's dynamic threshold)."""
    threshold = config.residual_diff_threshold if threshold is None else threshold
    step = counters.step
    if step in range(0, config.max_warmup_steps, config.warmup_interval):
        return False, "warmup"
    if diff is not None and not math.isfinite(diff):
        return False, "non-finite diff"
    mask = config.steps_computation_mask
    if mask is not None:
        if step >= len(mask) or mask[step] == 1:
            return False, "mask"
        if config.steps_computation_policy == "static":
            return (True, "static mask") if counters.has_residual else (False, "no residual")
    if 0 <= config.max_cached_steps <= counters.cached_steps:
        return False, "max_cached_steps"
    if 0 <= config.max_continuous_cached_steps <= counters.continuous_cached_steps:
        return False, "max_continuous_cached_steps"
    limit = config.max_accumulated_residual_diff_threshold
    if limit is not None and counters.accumulated_diff >= limit:
        return False, "max_accumulated_residual_diff_threshold"
    if threshold <= 0:
        return False, "threshold"
    if diff is None or not counters.has_residual:
        return False, "no previous residual"
    if diff < threshold:
        return True, "diff"
    return False, "diff"
