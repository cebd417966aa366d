"""Per-generation cache statistics and the ``CacheSummary`` users read."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional


@dataclass
class GenerationStats:
    """Recorder for one generation of one stream (reset at every generation boundary)."""

    num_blocks: int
    compute_blocks_on_cached_step: int
    steps: int = 0
    cached_steps: list[int] = field(default_factory=list)
    residual_diffs: dict[int, float] = field(default_factory=dict)
    pruned_blocks: Optional[dict[int, list[int]]] = None
    """DBPrune: step -> chain indices of the blocks pruned in it (None for DBCache)."""
    unlisted_cached_steps: int = 0
    """Cached steps counted but not recorded one by one (past the in-graph step's log)."""

    def record(self, step: int, cached: bool, diff: Optional[float],
               pruned_blocks: Optional[list[int]] = None) -> None:
        self.steps = step + 1
        if cached:
            self.cached_steps.append(step)
        if diff is not None:
            self.residual_diffs[step] = diff
        if pruned_blocks is not None:
            self.pruned_blocks = self.pruned_blocks or {}
            if pruned_blocks:
                self.pruned_blocks[step] = list(pruned_blocks)

    def summary(self) -> "CacheSummary":
        diffs = sorted(d for d in self.residual_diffs.values() if math.isfinite(d))
        if self.pruned_blocks is not None:
            skipped = sum(len(b) for b in self.pruned_blocks.values())
        else:
            skipped = ((len(self.cached_steps) + self.unlisted_cached_steps)
                       * (self.num_blocks - self.compute_blocks_on_cached_step))
        return CacheSummary(
            num_steps=self.steps,
            cached_steps=list(self.cached_steps),
            unlisted_cached_steps=self.unlisted_cached_steps,
            residual_diffs=dict(self.residual_diffs),
            diff_min=diffs[0] if diffs else None,
            diff_max=diffs[-1] if diffs else None,
            **{f"diff_p{q}": _percentile(diffs, q) for q in (25, 50, 75, 95)},
            computed_blocks=self.steps * self.num_blocks - skipped,
            cached_blocks=skipped,
            pruned_blocks=dict(self.pruned_blocks or {}),
            nonfinite_diff_steps=[step for step, d in self.residual_diffs.items() if not math.isfinite(d)],
        )


@dataclass(frozen=True)
class CacheSummary:
    """What the cache did in the last generation. Steps are 0-based within the generation.
    Counts (``num_cached_steps``, blocks) are exact for any length; the in-graph step lists
    steps, diffs and percentiles for its first ``LOG_CAPACITY`` steps only (cached steps after
    them are ``unlisted_cached_steps``)."""

    num_steps: int
    cached_steps: list[int]
    residual_diffs: dict[int, float]
    diff_min: Optional[float]
    diff_p25: Optional[float]
    diff_p50: Optional[float]
    diff_p75: Optional[float]
    diff_p95: Optional[float]
    diff_max: Optional[float]
    computed_blocks: int
    cached_blocks: int
    pruned_blocks: dict[int, list[int]] = field(default_factory=dict)
    """DBPrune: step -> pruned block indices (steps with none are left out)."""
    nonfinite_diff_steps: list[int] = field(default_factory=list)
    """Steps whose diff was NaN or infinite (non-finite activations or a zero residual); they
    computed, and the min / percentiles / max leave them out."""
    unlisted_cached_steps: int = 0
    """Cached steps past the listed ones (an in-graph generation longer than its log)."""

    @property
    def num_cached_steps(self) -> int:
        return len(self.cached_steps) + self.unlisted_cached_steps

    @property
    def num_diffs(self) -> int:
        return len(self.residual_diffs)

    def __str__(self) -> str:
        total = self.computed_blocks + self.cached_blocks
        rows = [
            ("steps", str(self.num_steps)),
            ("cached steps", f"{self.num_cached_steps} {self.cached_steps}"
             + (f" and {self.unlisted_cached_steps} later ones not listed" if self.unlisted_cached_steps else "")),
            ("computed / skipped blocks", f"{self.computed_blocks} / {self.cached_blocks}"
             + (f" ({self.cached_blocks / total:.1%} skipped)" if total else "")),
            ("residual diffs (count)", str(self.num_diffs)
             + (f", {len(self.nonfinite_diff_steps)} non-finite at steps {self.nonfinite_diff_steps}"
                if self.nonfinite_diff_steps else "")),
            ("diff min / P25 / P50", " / ".join(map(format_diff, (self.diff_min, self.diff_p25, self.diff_p50)))),
            ("diff P75 / P95 / max", " / ".join(map(format_diff, (self.diff_p75, self.diff_p95, self.diff_max)))),
        ]
        return "\n".join(["| metric | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows])


def format_diff(value: Optional[float]) -> str:
    """A diff as the summaries print it ("-" for none)."""
    return "-" if value is None else f"{value:.4f}"


def _percentile(values: list[float], q: float) -> Optional[float]:
    """Linear-interpolation percentile of sorted ``values`` (numpy's default)."""
    if not values:
        return None
    rank = (len(values) - 1) * q / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return values[low] + (values[high] - values[low]) * (rank - low)
