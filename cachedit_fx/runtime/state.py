"""Cache state of one compiled model: per-stream residual buffers, counters and stats.

Invariants:
  * every stored tensor is an owned buffer written with ``out=``, never a reference to a
    piece output (CUDA-graph replay or a later call cannot change it);
  * a residual is applied only within the generation that computed it: any boundary
    (step count reached, timestep rising, input shapes/dtypes changed, ``refresh``) drops
    all buffers and counters before the step is decided;
  * exactly one host sync per call (timestep and diff sums read together).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from cachedit_fx.config import DBCacheConfig
from cachedit_fx.kernels import l1_rel_diff
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


class StreamState:
    """Residual buffers and counters of one stream within the current generation."""

    def __init__(self, chain: ChainShape) -> None:
        self.chain = chain
        self.signature: Optional[Signature] = None
        self.last_timestep: Optional[float] = None
        self.scratch: Optional[torch.Tensor] = None
        self.prev_residual: Optional[torch.Tensor] = None
        self.middle_residuals: Optional[list[torch.Tensor]] = None
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
        self.prev_residual = None
        self.middle_residuals = None
        self.output_strides = None
        self._reset_counters()

    def latest_stats(self) -> Optional[GenerationStats]:
        return self.stats if self.stats.steps else self.finished


class ModelCacheState:
    """Configuration and streams shared by every graph compiled for one model."""

    def __init__(self, config: DBCacheConfig, chain: ChainShape) -> None:
        self.compiled_config = config
        self.config = config
        self.chain = chain
        self.streams: dict[str, StreamState] = {}

    def stream(self, name: str = DEFAULT_STREAM) -> StreamState:
        if name not in self.streams:
            self.streams[name] = StreamState(self.chain)
        return self.streams[name]

    def rebind(self, config: DBCacheConfig, chain: ChainShape) -> None:
        """A new graph of the same model was compiled (e.g. after a shape change). Options
        given to ``refresh`` survive it unless the compile options or the chain changed, in
        which case everything starts afresh."""
        if config != self.compiled_config or chain != self.chain:
            self.compiled_config = self.config = config
            self.chain = chain
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
    ) -> tuple[torch.Tensor, ...]:
        """Run the cached blocks or apply their stored residuals; see the module invariants."""
        config = self.config
        stream = self.stream()
        signature = tuple((tuple(t.shape), t.dtype) for t in signature_inputs)
        if stream.signature is not None and signature != stream.signature:
            stream.start_generation("input shapes or dtypes changed")
        elif config.num_inference_steps is not None and stream.step >= config.num_inference_steps:
            stream.start_generation("num_inference_steps reached")
        stream.signature = signature

        if stream.scratch is None or stream.scratch.shape != hidden_cut.shape:
            stream.scratch = torch.empty_like(hidden_cut, memory_format=torch.contiguous_format)
        residual = torch.sub(hidden_cut, hidden_entry, out=stream.scratch)
        readback: list[torch.Tensor] = []
        if stream.prev_residual is not None:
            readback.extend(l1_rel_diff(stream.prev_residual, residual))
        if timestep is not None:
            readback.append(timestep.reshape(-1)[0])
        host = torch.stack([v.to(torch.float64) for v in readback]).tolist() if readback else []

        if timestep is not None:
            t = host[-1]
            if stream.last_timestep is not None and t > stream.last_timestep:
                stream.start_generation("timestep rose")
                stream.signature = signature
                host = []
            stream.last_timestep = t
        diff = _relative(host[0], host[1]) if stream.prev_residual is not None else None

        counters = StepCounters(stream.step, stream.cached_steps, stream.continuous_cached_steps,
                                stream.accumulated_diff, stream.middle_residuals is not None)
        cache, _ = should_cache(config, counters, diff)
        if cache:
            outputs = tuple(
                torch.add(p, m, out=torch.empty_strided(m.shape, s, dtype=m.dtype, device=m.device))
                for p, m, s in zip(partners, stream.middle_residuals, stream.output_strides)
            )
            stream.cached_steps += 1
            stream.continuous_cached_steps += 1
            if diff is not None and diff > 0:
                stream.accumulated_diff += diff
        else:
            outputs = tuple(middle(*middle_inputs))
            if stream.middle_residuals is None or any(
                buf.shape != out.shape or buf.dtype != out.dtype
                for buf, out in zip(stream.middle_residuals, outputs)
            ):
                stream.middle_residuals = [torch.empty(o.shape, dtype=o.dtype, device=o.device) for o in outputs]
            for buf, out, partner in zip(stream.middle_residuals, outputs, partners):
                torch.sub(out, partner, out=buf)
            stream.output_strides = [tuple(o.stride()) for o in outputs]
            stream.scratch, stream.prev_residual = stream.prev_residual, residual
            stream.continuous_cached_steps = 0
        stream.stats.record(stream.step, cache, diff)
        stream.step += 1
        return outputs


def _relative(sum_diff: float, sum_prev: float) -> float:
    if sum_prev == 0.0:
        return 0.0 if sum_diff == 0.0 else float("inf")
    return sum_diff / sum_prev
