"""Buffers, counters and statistics of one stream (one sequence of calls sharing residuals).

Buffers are owned and contiguous, allocated once per shape and kept across generations:
``start_generation`` only invalidates them (every buffer is overwritten before it is read).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from cachedit_fx.runtime.buffers import owned_buffer
from cachedit_fx.runtime.histories import RegionHistory
from cachedit_fx.runtime.stats import CacheSummary, GenerationStats

log = logging.getLogger("cachedit_fx")

Signature = tuple[tuple[tuple[int, ...], torch.dtype], ...]


@dataclass(frozen=True)
class ChainShape:
    """Block counts the statistics need."""

    num_blocks: int
    Fn: int
    Bn: int


class ComparedValue:
    """Owned buffer of what a decision compares against (the Fn residual, or a pruned block's
    input at its last computed step), and whether it holds a value of this generation."""

    def __init__(self) -> None:
        self.buffer: Optional[torch.Tensor] = None
        self.valid = False

    def buffer_for(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The buffer, replaced by a zeroed, invalid one if shape/dtype/device differ."""
        buf = self.buffer
        if buf is None or buf.shape != shape or buf.dtype != dtype or buf.device != device:
            self.buffer = buf = owned_buffer(shape, dtype, device, zeroed=True)
            self.valid = False
        return buf

    def matches(self, value: torch.Tensor) -> bool:
        buf = self.buffer
        return self.valid and buf is not None and buf.shape == value.shape and buf.dtype == value.dtype


class PrunedBlockState:
    """DBPrune state of one block in one stream."""

    def __init__(self) -> None:
        self.input = ComparedValue()
        self.residuals = RegionHistory()
        self.continuous_pruned = 0
        self.accumulated_diff = 0.0

    def invalidate(self) -> None:
        self.input.valid = False
        self.residuals.invalidate()
        self.continuous_pruned = 0
        self.accumulated_diff = 0.0


class StreamState:
    """Buffers and counters of one stream within the current generation."""

    def __init__(self, name: str, chain: ChainShape) -> None:
        self.name = name
        self.chain = chain
        self.signature: Optional[Signature] = None
        self.fn_residual = ComparedValue()
        self.middle = RegionHistory()
        self.blocks: dict[int, PrunedBlockState] = {}
        self.stats = GenerationStats(chain.num_blocks, chain.Fn + chain.Bn)
        self.finished: Optional[GenerationStats] = None
        self.generation_logged = False
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.step = 0
        self.cached_steps = 0
        self.continuous_cached_steps = 0
        self.accumulated_diff = 0.0

    def block(self, index: int) -> PrunedBlockState:
        if index not in self.blocks:
            self.blocks[index] = PrunedBlockState()
        return self.blocks[index]

    def start_generation(self, reason: str, context: str) -> None:
        """Invalidate every buffer and reset the counters; keep the finished generation's stats."""
        if self.stats.steps:
            self.finished = self.stats
            self.log_generation(reason, context)
        self.stats = GenerationStats(self.chain.num_blocks, self.chain.Fn + self.chain.Bn)
        self.generation_logged = False
        self.signature = None
        self.fn_residual.valid = False
        self.middle.invalidate()
        for block in self.blocks.values():
            block.invalidate()
        self._reset_counters()

    def log_generation(self, reason: str, context: str) -> None:
        """The one INFO line of a generation (written once, at its last step or boundary)."""
        if self.generation_logged or not self.stats.steps:
            return
        self.generation_logged = True
        log_generation_done(self.stats.summary(), reason, context, self.name)

    def latest_stats(self) -> Optional[GenerationStats]:
        return self.stats if self.stats.steps else self.finished


def log_generation_done(summary: CacheSummary, reason: str, context: str, stream: str) -> None:
    """The one INFO line of a finished generation of ``stream``."""
    total = summary.computed_blocks + summary.cached_blocks
    p50 = "-" if summary.diff_p50 is None else f"{summary.diff_p50:.4f}"
    nonfinite = (f", {len(summary.nonfinite_diff_steps)} non-finite diffs at steps {summary.nonfinite_diff_steps}"
                 if summary.nonfinite_diff_steps else "")
    log.info("cachedit_fx: generation done (%s) context=%r stream=%r: %d/%d steps cached %s, %.1f%% of blocks "
             "skipped, diff p50 %s%s", reason, context, stream, summary.num_cached_steps, summary.num_steps,
             summary.cached_steps, 100.0 * summary.cached_blocks / max(total, 1), p50, nonfinite)
