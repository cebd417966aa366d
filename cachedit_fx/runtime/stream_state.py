"""Buffers, counters and statistics of one stream (one sequence of calls sharing residuals).

Buffers are owned and contiguous, allocated once per shape and kept across generations:
``start_generation`` only invalidates them (every buffer is overwritten before it is read).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from cachedit_fx.config import TaylorSeerCalibratorConfig
from cachedit_fx.runtime.stats import GenerationStats

log = logging.getLogger("cachedit_fx")

Signature = tuple[tuple[tuple[int, ...], torch.dtype], ...]


@dataclass(frozen=True)
class ChainShape:
    """Block counts the statistics need."""

    num_blocks: int
    Fn: int
    Bn: int


@dataclass(frozen=True)
class ValuePlan:
    """How one carried value is cached: Taylor ``order`` (0: reuse the last residual) and
    whether the ladder holds ``hM - hF`` (``residual``) or ``hM`` itself."""

    order: int
    residual: bool


def value_plans(
    calibrator: Optional[TaylorSeerCalibratorConfig], num_values: int, hidden_position: int
) -> tuple[ValuePlan, ...]:
    plans = []
    for k in range(num_values):
        order = calibrator.order_for(hidden=k == hidden_position) if calibrator is not None else 0
        residual = order == 0 or calibrator.calibrator_cache_type == "residual"
        plans.append(ValuePlan(order, residual))
    return tuple(plans)


class StreamState:
    """Residual buffers and counters of one stream within the current generation."""

    def __init__(self, name: str, chain: ChainShape) -> None:
        self.name = name
        self.chain = chain
        self.signature: Optional[Signature] = None
        self.prev_residual: Optional[torch.Tensor] = None
        self.prev_valid = False
        self.ladders: Optional[list[torch.Tensor]] = None
        self.updates = 0
        """Computed middle runs pushed into ``ladders`` this generation (0: no residual)."""
        self.last_computed_step = -1
        self.output_strides: Optional[list[tuple[int, ...]]] = None
        self.stats = GenerationStats(chain.num_blocks, chain.Fn + chain.Bn)
        self.finished: Optional[GenerationStats] = None
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.step = 0
        self.cached_steps = 0
        self.continuous_cached_steps = 0
        self.accumulated_diff = 0.0

    def start_generation(self, reason: str) -> None:
        """Drop every residual and counter; keep the finished generation's stats."""
        if self.stats.steps:
            self.finished = self.stats
            log.info("cachedit_fx generation ended (%s): %s stream, %d steps, %d cached %s", reason, self.name,
                     self.stats.steps, len(self.stats.cached_steps), self.stats.cached_steps)
        self.stats = GenerationStats(self.chain.num_blocks, self.chain.Fn + self.chain.Bn)
        self.signature = None
        self.prev_valid = False
        self.updates = 0
        self.last_computed_step = -1
        self.output_strides = None
        self._reset_counters()

    def latest_stats(self) -> Optional[GenerationStats]:
        return self.stats if self.stats.steps else self.finished

    def prev_residual_buffer(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The owned Fn-residual buffer; a buffer of another shape/dtype/device is replaced by
        a zeroed one and marked invalid (its contents belong to other inputs)."""
        buf = self.prev_residual
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            self.prev_residual = buf = torch.zeros(shape, dtype=dtype, device=device)
            self.prev_valid = False
        return buf

    def ladder_buffers(self, outputs: Sequence[torch.Tensor], plans: Sequence["ValuePlan"]) -> list[torch.Tensor]:
        """One ``(order + 1, *shape)`` ladder per carried value, reallocated (and the residual
        history dropped) when a value's shape, dtype or device changes."""
        if self.ladders is None or len(self.ladders) != len(outputs) or any(
            lad.shape != (plan.order + 1, *out.shape) or lad.dtype != out.dtype or lad.device != out.device
            for lad, out, plan in zip(self.ladders, outputs, plans)
        ):
            self.ladders = [
                torch.empty((plan.order + 1, *o.shape), dtype=o.dtype, device=o.device)
                for o, plan in zip(outputs, plans)
            ]
            self.updates = 0
        return self.ladders
