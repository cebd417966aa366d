"""The step's calibrator arithmetic (``dbcache_step``: Taylor ladders, FoCa histories) on
synthetic sequences with known values: polynomials in the step index, computed at uneven
steps, forecast on the cached steps between them."""

from __future__ import annotations

import pytest
import torch

from cachedit_fx.kernels import taylor_forecast_reference, taylor_push_reference
from cachedit_fx.runtime.dbcache_step import foca_after_forecast, foca_forecast, foca_push, forecast_weights

BASE = torch.zeros(3, 4, dtype=torch.float64)


def value_at(coefficients: list[float], step: int) -> torch.Tensor:
    return BASE + sum(c * step**i for i, c in enumerate(coefficients))


class Taylor:
    """One value's ladder of ``order + 1`` levels, pushed and forecast as the step does."""

    def __init__(self, order: int) -> None:
        self.ladder = torch.zeros(order + 1, *BASE.shape, dtype=torch.float32)
        self.updates, self.last = 0, 0

    def push(self, value: torch.Tensor, step: int) -> None:
        gap = torch.tensor([float(step - self.last if self.updates else 1)])
        levels = torch.tensor([min(self.updates + 1, self.ladder.shape[0])])
        self.ladder = taylor_push_reference(self.ladder, value, None, gap, levels)
        self.updates, self.last = min(self.updates + 1, self.ladder.shape[0]), step

    def forecast(self, base: torch.Tensor, step: int) -> torch.Tensor:
        weights = forecast_weights(self.ladder.shape[0], torch.tensor([self.updates]),
                                   torch.tensor([float(step - self.last)]))
        return base + taylor_forecast_reference(self.ladder, None, weights).double()


class Foca:
    """One value's FoCa history, pushed and forecast as the step does."""

    def __init__(self) -> None:
        self.history = torch.zeros(4, *BASE.shape, dtype=torch.float32)
        self.anchors, self.seen = 0, 0

    def push(self, value: torch.Tensor) -> None:
        self.history = foca_push(self.history, value.float())
        self.anchors, self.seen = min(self.anchors + 1, 2), min(self.seen + 1, 2)

    def forecast(self) -> torch.Tensor:
        seen = torch.tensor([self.seen])
        out, predicted = foca_forecast(self.history, torch.tensor([self.anchors]), seen)
        self.history = foca_after_forecast(self.history, predicted, seen)
        return out.double()


@pytest.mark.parametrize("order", [1, 2, 3, 4])
def test_taylor_extrapolates_a_line_exactly_across_uneven_gaps(order):
    line = [1.5, -0.75]
    history = Taylor(order)
    computed = [0, 2, 3, 7, 8]
    for step in range(12):
        if step in computed:
            history.push(value_at(line, step), step)
        else:
            expected = value_at(line, step) if history.updates >= 2 else value_at(line, computed[0])
            torch.testing.assert_close(history.forecast(BASE, step), expected)


def test_taylor_second_order_on_a_parabola_matches_the_hand_computed_forecast():
    """s^2 computed at 1, 3, 4 (gaps 2, 1): D0 = 16, D1 = 7, D2 = (7 - 4) / 1 = 3; at step 6
    (elapsed 2): 16 + 7*2 + 3*4/2 = 36, the true value (the sequence is exactly quadratic)."""
    history = Taylor(2)
    for step in (1, 3, 4):
        history.push(BASE + step**2, step)
    torch.testing.assert_close(history.forecast(BASE + 100.0, 6), BASE + 100.0 + 36.0)


def test_foca_is_exact_on_a_line_through_runs_of_cached_steps():
    """BDF2 of a line sampled every step is the next point; the Heun term vanishes while the
    cached trajectory follows the computed one, so recursive forecasts stay on the line."""
    line = [2.0, 0.5]
    history = Foca()
    computed = {0, 1, 5, 6}
    for step in range(10):
        if step in computed:
            history.push(value_at(line, step))
        else:
            torch.testing.assert_close(history.forecast(), value_at(line, step))


def test_foca_with_one_value_reuses_it():
    history = Foca()
    history.push(BASE + 3.0)
    torch.testing.assert_close(history.forecast(), BASE + 3.0)
