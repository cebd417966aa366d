"""Cache state of one context of one compiled model: the step's state tensors and options
(the step in the compiled program reads and writes them; this object owns them between calls).

Invariants:
  * every graph of the model that makes the same ``StepLayout`` on the same device continues
    one generation on one set of tensors; another layout or device starts a new generation on
    fresh tensors (a residual never crosses shapes, dtypes or devices);
  * ``refresh`` and a call that raises request a new generation (``request_reset``): nothing
    half-updated is reused;
  * tensors are allocated with inference mode off, so a generation run under
    ``torch.inference_mode`` and one under ``torch.no_grad`` both write them in place.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch

from cachedit_fx.config import DBCacheConfig, check_refresh_changes
from cachedit_fx.runtime.calibration import Calibrator
from cachedit_fx.runtime.dbcache_step import (
    StepLayout, apply_config, generation_progress, logged_summary, request_reset)
from cachedit_fx.runtime.stats import CacheSummary, GenerationStats, format_diff

log = logging.getLogger("cachedit_fx")


@dataclass(frozen=True)
class ChainShape:
    """Block counts the statistics need."""

    num_blocks: int
    Fn: int
    Bn: int


class ModelCacheState:
    """The step's state tensors of one context, and the options they were made for."""

    def __init__(self, config: DBCacheConfig, chain: ChainShape, calibrator: Optional[Calibrator] = None,
                 context: str = "default") -> None:
        self.context = context
        self.calls_made = 0
        """Calls of the compiled model made in this context."""
        self.compiled_config = config
        self.config = config
        self.chain = chain
        self.calibrator = calibrator
        self.step_tensors: Optional[_StepTensors] = None
        """The step's state tensors (None until the first call)."""
        self.logged: dict[str, int] = {}
        """Stream -> the generation whose done line was written."""

    def rebind(self, config: DBCacheConfig, chain: ChainShape, calibrator: Optional[Calibrator] = None) -> None:
        """A new graph of the model was compiled: ``refresh`` options survive it unless the
        compile options, calibrator or chain changed (then everything starts afresh)."""
        if config != self.compiled_config or chain != self.chain or calibrator != self.calibrator:
            self.compiled_config = self.config = config
            self.chain = chain
            self.calibrator = calibrator
            self.step_tensors = None
            self.logged.clear()

    def refresh(self, num_inference_steps: Optional[int] = None, **config_changes) -> None:
        """Start a new generation on every stream, optionally with new settings."""
        if num_inference_steps is not None:
            config_changes["num_inference_steps"] = num_inference_steps
        if config_changes:
            self.config = check_refresh_changes(config_changes, self.config)
            if self.step_tensors is not None:
                apply_config(self.step_tensors.tensors, self.config)
        self.restart()

    def restart(self) -> None:
        """The next call starts a new generation (a refresh, or a call that raised)."""
        if self.step_tensors is not None:
            request_reset(self.step_tensors.tensors)

    def tensors_for(self, layout: StepLayout, device: torch.device) -> list[torch.Tensor]:
        """The state tensors, in ``layout.names`` order, for a call whose graph makes ``layout``."""
        entry = self.step_tensors
        if entry is None or (entry.layout is not layout and entry.layout != layout) or entry.device != device:
            with torch.inference_mode(False):
                entry = self.step_tensors = _StepTensors(layout, device, layout.new_state(self.config, device))
            self.logged.clear()
        return entry.ordered

    def call_done(self) -> None:
        """After a call: the generation-done INFO line of each stream that reached
        ``num_inference_steps``, once per generation (reads the counters only under INFO)."""
        steps = self.config.num_inference_steps
        if steps is None or not log.isEnabledFor(logging.INFO):
            return
        tensors = self.step_tensors.tensors
        generation, progress = generation_progress(tensors)
        for stream, done in progress.items():
            if done >= steps and self.logged.get(stream) != generation:
                self.logged[stream] = generation
                log_generation_done(logged_summary(tensors, stream), self.context, stream)

    def summary(self, stream: str = "default") -> CacheSummary:
        if self.step_tensors is not None:
            return logged_summary(self.step_tensors.tensors, stream)
        return GenerationStats(self.chain.num_blocks, self.chain.Fn + self.chain.Bn).summary()


class _StepTensors:
    """The step's state tensors of one context (by name and in ``layout.names`` order), and the
    layout and device they were made for."""

    def __init__(self, layout: StepLayout, device: torch.device, tensors: dict[str, torch.Tensor]) -> None:
        self.layout = layout
        self.device = device
        self.tensors = tensors
        self.ordered = [tensors[name] for name in layout.names]


def log_generation_done(summary: CacheSummary, context: str, stream: str) -> None:
    """The one INFO line of a generation of ``stream`` that reached ``num_inference_steps``."""
    total = summary.computed_blocks + summary.cached_blocks
    nonfinite = (f", {len(summary.nonfinite_diff_steps)} non-finite diffs at steps {summary.nonfinite_diff_steps}"
                 if summary.nonfinite_diff_steps else "")
    log.info("cachedit_fx: generation done (num_inference_steps reached) context=%r stream=%r: %d/%d steps cached "
             "%s, %.1f%% of blocks skipped, diff p50 %s%s", context, stream, summary.num_cached_steps, summary.num_steps,
             summary.cached_steps, 100.0 * summary.cached_blocks / max(total, 1), format_diff(summary.diff_p50), nonfinite)
