"""Calibrator histories on synthetic sequences with known values: polynomials in the step
index, computed at uneven steps, forecast on the cached steps between them."""

from __future__ import annotations

import pytest
import torch

from cachedit_fx.runtime.arithmetic import cache_arithmetic
from cachedit_fx.runtime.histories import RegionHistory, ValuePlan

ARITH = cache_arithmetic("torch")
BASE = torch.zeros(3, 4, dtype=torch.float64)


def value_at(coefficients: list[float], step: int) -> torch.Tensor:
    return BASE + sum(c * step**i for i, c in enumerate(coefficients))


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_taylor_extrapolates_a_line_exactly_across_uneven_gaps(order):
    line = [1.5, -0.75]
    history = RegionHistory()
    plans = [ValuePlan("taylor", order, residual=False)]
    computed = [0, 2, 3, 7, 8]
    for step in range(12):
        if step in computed:
            history.push(ARITH, [value_at(line, step)], [BASE], plans, step)
        else:
            (out,) = history.forecast(ARITH, [BASE], step)
            expected = value_at(line, step) if history.updates >= 2 else value_at(line, max(computed[:1]))
            torch.testing.assert_close(out, expected)


def test_taylor_second_order_on_a_parabola_matches_the_hand_computed_forecast():
    """s^2 computed at 1, 3, 4 (gaps 2, 1): D0 = 16, D1 = 7, D2 = (7 - 4) / 1 = 3; at step 6
    (elapsed 2): 16 + 7*2 + 3*4/2 = 36, the true value (the sequence is exactly quadratic)."""
    history = RegionHistory()
    plans = [ValuePlan("taylor", 2, residual=True)]
    for step in (1, 3, 4):
        history.push(ARITH, [BASE + step**2], [BASE], plans, step)
    (out,) = history.forecast(ARITH, [BASE + 100.0], 6)
    torch.testing.assert_close(out, BASE + 100.0 + 36.0)


def test_foca_is_exact_on_a_line_through_runs_of_cached_steps():
    """BDF2 of a line sampled every step is the next point; the Heun term vanishes while the
    cached trajectory follows the computed one, so recursive forecasts stay on the line."""
    line = [2.0, 0.5]
    history = RegionHistory()
    plans = [ValuePlan("foca", 0, residual=True)]
    computed = {0, 1, 5, 6}
    for step in range(10):
        if step in computed:
            history.push(ARITH, [value_at(line, step)], [BASE], plans, step)
        else:
            (out,) = history.forecast(ARITH, [BASE], step)
            torch.testing.assert_close(out, value_at(line, step))


def test_foca_with_one_value_reuses_it():
    history = RegionHistory()
    plans = [ValuePlan("foca", 0, residual=False)]
    history.push(ARITH, [BASE + 3.0], [BASE], plans, 0)
    (out,) = history.forecast(ARITH, [BASE], 1)
    torch.testing.assert_close(out, BASE + 3.0)
