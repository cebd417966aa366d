"""How each value a cached region hands on is remembered, by the calibrator.

Per value a ``ValuePlan``: ``kind`` "taylor" with ``order`` k (a difference ladder of k + 1
levels; order 0 is plain DBCache, the last residual) or "foca" (the two latest computed values
and the two latest values seen: BDF2 plus a Heun correction); ``residual``: remember
``out - in`` (cache type "residual", always for uncalibrated values) rather than ``out``.
``runtime/dbcache_step.py`` stores and forecasts by these plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

from cachedit_fx.config import FoCaCalibratorConfig, TaylorSeerCalibratorConfig

Calibrator = Union[TaylorSeerCalibratorConfig, FoCaCalibratorConfig]


@dataclass(frozen=True)
class ValuePlan:
    """How one carried value is cached: ``kind`` "taylor" (``order`` 0 = reuse the last
    residual) or "foca"; ``residual``: remember ``out - in`` rather than ``out``."""

    kind: str
    order: int
    residual: bool


def value_plans(calibrator: Optional[Calibrator], num_values: int, hidden_position: int) -> tuple[ValuePlan, ...]:
    plans = []
    for k in range(num_values):
        hidden = k == hidden_position
        enabled = calibrator is not None and (
            calibrator.enable_calibrator if hidden else calibrator.enable_encoder_calibrator)
        if not enabled:
            plans.append(ValuePlan("taylor", 0, True))
        elif isinstance(calibrator, FoCaCalibratorConfig):
            plans.append(ValuePlan("foca", 0, calibrator.calibrator_cache_type == "residual"))
        else:
            plans.append(ValuePlan("taylor", calibrator.taylorseer_order,
                                   calibrator.calibrator_cache_type == "residual"))
    return tuple(plans)
