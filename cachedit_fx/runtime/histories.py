"""What a cached region (the middle, or one pruned block) remembers about each value it hands
on, and how it produces that value on a cached step.

Per value, by its ``ValuePlan``:
  * ``TaylorLadder`` (order k >= 0): a ``(k + 1, *shape)`` difference ladder; order 0 is plain
    DBCache (reuse the last residual), k > 0 is TaylorSeer. Uses the ``cache_kernels`` ops.
  * ``FocaHistory`` (FoCa): the two latest computed values (anchors) and the two latest values
    seen, computed or forecast. A cached step forecasts ``2 F_k - F_km1`` (BDF2) plus the Heun
    correction ``0.5 ((F_full - F_full_prev) - (F_k - F_km1))`` once two anchors exist, and
    the forecast becomes the newest value seen; with only one value seen it reuses it.
Values are residuals ``out - in`` (cache type "residual", and always for uncalibrated values)
or the outputs themselves ("hidden_states"). All buffers are owned; returned outputs are fresh.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union

import torch

from cachedit_fx.config import FoCaCalibratorConfig, TaylorSeerCalibratorConfig
from cachedit_fx.runtime.buffers import owned_buffer

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


class TaylorLadder:
    def __init__(self, like: torch.Tensor, plan: ValuePlan) -> None:
        self.plan = plan
        self.ladder = owned_buffer((plan.order + 1, *like.shape), like.dtype, like.device)

    @property
    def like(self) -> torch.Tensor:
        """A tensor with the remembered value's shape, dtype and device."""
        return self.ladder[0]

    def push(self, arith: Any, value: torch.Tensor, base: Optional[torch.Tensor], gap: float, updates: int) -> None:
        arith.ladder_update_(self.ladder, value, base, gap, min(updates + 1, self.plan.order + 1))

    def forecast(self, arith: Any, base: Optional[torch.Tensor], elapsed: float, updates: int,
                 out: torch.Tensor) -> None:
        arith.forecast(self.ladder, base, elapsed, min(updates, self.plan.order + 1) - 1, out)


class FocaHistory:
    def __init__(self, like: torch.Tensor, plan: ValuePlan) -> None:
        self.plan = plan
        self.full, self.full_prev, self.k, self.km1 = (owned_buffer(like.shape, like.dtype, like.device) for _ in range(4))
        self.anchors = 0
        self.seen = 0

    @property
    def like(self) -> torch.Tensor:
        """A tensor with the remembered value's shape, dtype and device."""
        return self.full

    def push(self, arith: Any, value: torch.Tensor, base: Optional[torch.Tensor], gap: float, updates: int) -> None:
        if updates == 0:
            self.anchors = self.seen = 0
        self.full, self.full_prev = self.full_prev, self.full
        self.k, self.km1 = self.km1, self.k
        if base is None:
            self.full.copy_(value)
        else:
            torch.sub(value, base, out=self.full)
        self.k.copy_(self.full)
        self.anchors = min(self.anchors + 1, 2)
        self.seen = min(self.seen + 1, 2)

    def forecast(self, arith: Any, base: Optional[torch.Tensor], elapsed: float, updates: int,
                 out: torch.Tensor) -> None:
        k = self.k.float()
        if self.seen < 2:
            out.copy_(k if base is None else base.float() + k)
            return
        km1 = self.km1.float()
        predicted = 2.0 * k - km1
        if self.anchors == 2:
            predicted = predicted + 0.5 * ((self.full.float() - self.full_prev.float()) - (k - km1))
        self.k, self.km1 = self.km1, self.k
        self.k.copy_(predicted)
        out.copy_(predicted if base is None else base.float() + predicted)


History = Union[TaylorLadder, FocaHistory]


class RegionHistory:
    """Histories of every value one cached region hands on, filled by computed steps."""

    def __init__(self) -> None:
        self.values: Optional[list[History]] = None
        self.updates = 0
        """Computed runs pushed this generation (0: nothing to reuse)."""
        self.last_computed_step = -1
        self.output_strides: Optional[list[tuple[int, ...]]] = None

    def invalidate(self) -> None:
        self.updates = 0
        self.last_computed_step = -1

    def push(self, arith: Any, outputs: Sequence[torch.Tensor], partners: Sequence[torch.Tensor],
             plans: Sequence[ValuePlan], step: int) -> None:
        """Record a computed run at ``step``; histories are reallocated (and forgotten) when a
        value's plan, shape, dtype or device changes."""
        if self.values is None or len(self.values) != len(outputs) or any(
            h.plan != plan or not _same_layout(h.like, out) for h, out, plan in zip(self.values, outputs, plans)
        ):
            self.values = [(FocaHistory if p.kind == "foca" else TaylorLadder)(o, p) for o, p in zip(outputs, plans)]
            self.updates = 0
        gap = float(step - self.last_computed_step) if self.updates else 1.0
        for history, out, partner in zip(self.values, outputs, partners):
            history.push(arith, out, partner if history.plan.residual else None, gap, self.updates)
        self.updates += 1
        self.last_computed_step = step
        self.output_strides = [tuple(o.stride()) for o in outputs]

    def forecast(self, arith: Any, partners: Sequence[torch.Tensor], step: int) -> tuple[torch.Tensor, ...]:
        """The outputs at a cached ``step``, in fresh tensors with the computed outputs' strides."""
        elapsed = float(step - self.last_computed_step)
        outputs = []
        for history, partner, strides in zip(self.values, partners, self.output_strides):
            like = history.like
            out = torch.empty_strided(like.shape, strides, dtype=like.dtype, device=like.device)
            history.forecast(arith, partner if history.plan.residual else None, elapsed, self.updates, out)
            outputs.append(out)
        return tuple(outputs)


def _same_layout(like: torch.Tensor, value: torch.Tensor) -> bool:
    return like.shape == value.shape and like.dtype == value.dtype and like.device == value.device
