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
    """How one carried value is cached (module docstring)."""

    kind: str
    order: int
    residual: bool


def value_plans(calibrator: Optional[Calibrator], num_values: int, hidden_position: int) -> tuple[ValuePlan, ...]:
    """One plan per carried value; ``hidden_position`` is the hidden state's (the calibrator's
    ``enable_calibrator``), the others follow ``enable_encoder_calibrator``."""
    plain = ValuePlan("taylor", 0, True)
    if calibrator is None:
        return (plain,) * num_values
    residual = calibrator.calibrator_cache_type == "residual"
    calibrated = (ValuePlan("foca", 0, residual) if isinstance(calibrator, FoCaCalibratorConfig)
                  else ValuePlan("taylor", calibrator.taylorseer_order, residual))
    enabled = [calibrator.enable_calibrator if k == hidden_position else calibrator.enable_encoder_calibrator
               for k in range(num_values)]
    return tuple(calibrated if on else plain for on in enabled)
