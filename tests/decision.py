"""The step's decision rule (``dbcache_step.decide``) called on one stream's counters."""

from __future__ import annotations

import torch

from cachedit_fx.runtime.dbcache_step import LOG_CAPACITY, SETTINGS, apply_config, decide


def should_cache(config, step=10, cached=0, continuous=0, accumulated=0.0, has=True, diff=0.0) -> bool:
    """``decide`` for one stream's counters, the settings written from ``config``."""
    state = {"settings": torch.zeros(SETTINGS, dtype=torch.float64),
             "mask": torch.zeros(LOG_CAPACITY + 1, dtype=torch.int64),
             "stream_counters": torch.zeros(2, 8, dtype=torch.int64), "counters": torch.zeros(8, dtype=torch.int64)}
    apply_config(state, config)

    def one(value, dtype):
        return torch.tensor([value], dtype=dtype)

    (decision,) = decide(state["settings"], state["mask"], one(step, torch.int64), one(cached, torch.int64),
                         one(continuous, torch.int64), one(accumulated, torch.float64), one(has, torch.bool),
                         one(diff, torch.float64)).tolist()
    return decision
