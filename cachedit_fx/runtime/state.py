"""Cache state of one compiled model: per-stream residual buffers, counters and stats.

Invariants:
  * every stored tensor is an owned, contiguous buffer written in place (``out=`` or the
    ladder ops), never a reference to a piece output (CUDA-graph replay or a later call
    cannot change it);
  * the middle residual of each carried value lives in a difference ladder
    (``kernels.reference``); with no calibrator it has one level, ``D0 = hM - hF``, and the
    cached output is the order-0 forecast ``hF + D0``. A TaylorSeer calibrator of order k
    keeps k+1 levels (of ``hM - hF``, or of ``hM`` for cache type "hidden_states") and
    forecasts at ``elapsed`` = steps since the last computed step, using as many levels as
    computed steps have filled;
  * a residual is applied only within the generation that computed it: any boundary
    (step count reached, timestep rising, input shapes/dtypes changed, ``refresh``)
    invalidates all buffers and resets the counters before the step is decided (buffers are
    kept allocated and are always overwritten before they are read again);
  * exactly one host sync per call (timestep and diff sums read together).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from cachedit_fx.config import DBCacheConfig, TaylorSeerCalibratorConfig
from cachedit_fx.runtime.arithmetic import CacheArithmetic
from cachedit_fx.runtime.policy import StepCounters, should_cache
from cachedit_fx.runtime.stats import CacheSummary, GenerationStats

log = logging.getLogger("cachedit_fx")

DEFAULT_STREAM = "default"
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

    def __init__(self, chain: ChainShape) -> None:
        self.chain = chain
        self.signature: Optional[Signature] = None
        self.last_timestep: Optional[float] = None
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
            log.info("cachedit_fx generation ended (%s): %d steps, %d cached %s", reason, self.stats.steps,
                     len(self.stats.cached_steps), self.stats.cached_steps)
        self.stats = GenerationStats(self.chain.num_blocks, self.chain.Fn + self.chain.Bn)
        self.signature = None
        self.last_timestep = None
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


class ModelCacheState:
    """Configuration and streams shared by every graph compiled for one model."""

    def __init__(
        self, config: DBCacheConfig, chain: ChainShape, arithmetic: CacheArithmetic,
        calibrator: Optional[TaylorSeerCalibratorConfig] = None,
    ) -> None:
        self.compiled_config = config
        self.config = config
        self.chain = chain
        self.arithmetic = arithmetic
        self.calibrator = calibrator
        self.streams: dict[str, StreamState] = {}
        self.sums_all_reduce: Optional[Callable[[torch.Tensor], object]] = None
        """Applied in place to the fp32 diff sums before they are read (parallel runs)."""

    def stream(self, name: str = DEFAULT_STREAM) -> StreamState:
        if name not in self.streams:
            self.streams[name] = StreamState(self.chain)
        return self.streams[name]

    def rebind(
        self, config: DBCacheConfig, chain: ChainShape, arithmetic: CacheArithmetic,
        calibrator: Optional[TaylorSeerCalibratorConfig] = None,
    ) -> None:
        """A new graph of the same model was compiled (e.g. after a shape change). Options
        given to ``refresh`` survive it unless the compile options, calibrator or chain
        changed, in which case everything starts afresh."""
        self.arithmetic = arithmetic
        if config != self.compiled_config or chain != self.chain or calibrator != self.calibrator:
            self.compiled_config = self.config = config
            self.chain = chain
            self.calibrator = calibrator
            self.streams.clear()

    def refresh(self, num_inference_steps: Optional[int] = None, **config_changes) -> None:
        """Start a new generation on every stream, optionally with new settings."""
        changes = dict(config_changes)
        if num_inference_steps is not None:
            changes["num_inference_steps"] = num_inference_steps
        if changes:
            self.config = self.config.replace(**changes)
        for stream in self.streams.values():
            stream.start_generation("refresh")

    def summary(self, stream: str = DEFAULT_STREAM) -> CacheSummary:
        stats = self.streams[stream].latest_stats() if stream in self.streams else None
        if stats is None:
            stats = GenerationStats(self.chain.num_blocks, self.chain.Fn + self.chain.Bn)
        return stats.summary()

    @torch.no_grad()
    def run_middle(
        self,
        middle: Callable[..., Sequence[torch.Tensor]],
        middle_inputs: Sequence[torch.Tensor],
        partners: Sequence[torch.Tensor],
        hidden_entry: torch.Tensor,
        hidden_cut: torch.Tensor,
        signature_inputs: Sequence[torch.Tensor],
        timestep: Optional[torch.Tensor],
        hidden_position: int = 0,
        head_sums: Optional[torch.Tensor] = None,
    ) -> tuple[torch.Tensor, ...]:
        """Run the cached blocks or apply their stored residuals; see the module invariants.

        ``head_sums``: the diff sums computed inside the head piece against this stream's
        ``prev_residual`` buffer (``cache_kernels="inductor-fused"``); ``hidden_position``: the
        index among ``partners`` (and the outputs) of the hidden stream."""
        config = self.config
        arith = self.arithmetic
        stream = self.stream()
        signature = tuple((tuple(t.shape), t.dtype) for t in signature_inputs)
        if stream.signature is not None and signature != stream.signature:
            stream.start_generation("input shapes or dtypes changed")
        elif config.num_inference_steps is not None and stream.step >= config.num_inference_steps:
            stream.start_generation("num_inference_steps reached")
        stream.signature = signature
        prev = stream.prev_residual_buffer(hidden_cut.shape, hidden_cut.dtype, hidden_cut.device)

        readback: list[torch.Tensor] = []
        if stream.prev_valid:
            sums = head_sums if head_sums is not None else arith.diff_sums(prev, hidden_cut, hidden_entry)
            if self.sums_all_reduce is not None:
                self.sums_all_reduce(sums)
            readback.append(sums)
        if timestep is not None:
            readback.append(timestep.reshape(-1)[:1])
        host = torch.cat([v.to(torch.float64) for v in readback]).tolist() if readback else []

        if timestep is not None:
            t = host[-1]
            if stream.last_timestep is not None and t > stream.last_timestep:
                stream.start_generation("timestep rose")
                stream.signature = signature
                host = []
            stream.last_timestep = t
        diff = _relative(host[0], host[1]) if stream.prev_valid else None

        counters = StepCounters(stream.step, stream.cached_steps, stream.continuous_cached_steps,
                                stream.accumulated_diff, stream.updates > 0)
        cache, _ = should_cache(config, counters, diff)
        plans = value_plans(self.calibrator, len(partners), hidden_position)
        if cache:
            elapsed = float(stream.step - stream.last_computed_step)
            outputs = []
            for partner, ladder, strides, plan in zip(partners, stream.ladders, stream.output_strides, plans):
                out = torch.empty_strided(ladder.shape[1:], strides, dtype=ladder.dtype, device=ladder.device)
                order = min(stream.updates, plan.order + 1) - 1
                arith.forecast(ladder, partner if plan.residual else None, elapsed, order, out)
                outputs.append(out)
            outputs = tuple(outputs)
            stream.cached_steps += 1
            stream.continuous_cached_steps += 1
            if diff is not None and diff > 0:
                stream.accumulated_diff += diff
        else:
            outputs = tuple(middle(*middle_inputs))
            ladders = stream.ladder_buffers(outputs, plans)
            gap = float(stream.step - stream.last_computed_step) if stream.updates else 1.0
            for ladder, out, partner, plan in zip(ladders, outputs, partners, plans):
                levels = min(stream.updates + 1, plan.order + 1)
                arith.ladder_update_(ladder, out, partner if plan.residual else None, gap, levels)
            stream.updates += 1
            stream.last_computed_step = stream.step
            stream.output_strides = [tuple(o.stride()) for o in outputs]
            torch.sub(hidden_cut, hidden_entry, out=prev)
            stream.prev_valid = True
            stream.continuous_cached_steps = 0
        stream.stats.record(stream.step, cache, diff)
        stream.step += 1
        return outputs


def _relative(sum_diff: float, sum_prev: float) -> float:
    if sum_prev == 0.0:
        return 0.0 if sum_diff == 0.0 else float("inf")
    return sum_diff / sum_prev
