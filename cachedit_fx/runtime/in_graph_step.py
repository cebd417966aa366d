"""The whole DBCache step as tensor code: the decision, the middle-or-cached branch as
``torch.cond``, and every piece of cache state as an owned buffer mutated in place.

Traced into the program that calls it (``passes/insert_in_graph_step.py``), so Dynamo,
AOTAutograd, Inductor and ``torch.export`` see one graph: no host read, no Python between
pieces. Semantics equal ``ModelCacheState.run_middle`` for one stream without a calibrator
(DESIGN section 3): generation boundaries (a reset request, the timestep rising, the step
count reached, a warm-up call repeated), then warmup, step mask, max_cached, max_continuous,
max_accumulated, threshold, no previous residual, diff < threshold (strict).

Invariants:
  * the ``torch.cond`` branches are pure (no buffer writes, fresh contiguous outputs); every
    update happens after it with ``torch.where`` and ``copy_``;
  * counters and settings live in buffers of two or more elements (AOTInductor folds
    one-element attributes into constants, so a mutated scalar buffer would never advance);
  * a residual is read only when ``counters[HAS_RESIDUAL]`` says a computed step of this
    generation wrote it;
  * the per-step log (cached flag, diff) holds the latest generation until the next one starts,
    so statistics are read from the buffers alone (``logged_summary``).
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from cachedit_fx.config import DBCacheConfig
from cachedit_fx.kernels.reference import l1_rel_diff_reference
from cachedit_fx.runtime.stats import CacheSummary, GenerationStats

STEP, CACHED, CONTINUOUS, HAS_RESIDUAL, RESET, GENERATIONS, NUM_BLOCKS, SKIPPED_BLOCKS = range(8)
COUNTERS = 8
ACCUMULATED, LAST_TIMESTEP, HAS_LAST_TIMESTEP = range(3)
FLOATS = 3
THRESHOLD, MAX_WARMUP, WARMUP_INTERVAL, MAX_CACHED, MAX_CONTINUOUS, MAX_ACCUMULATED, STEPS = range(7)
SETTINGS = 7
LOG_CAPACITY = 1000
"""Steps logged per generation when ``num_inference_steps`` is not given (later steps are
decided and counted, not logged)."""


class InGraphDBCacheStep(torch.nn.Module):
    """``forward(hidden_entry, hidden_cut, timestep, fingerprint_inputs, partners, middle_inputs)``
    returns the middle's outputs, computed by ``middle`` or forecast from the residuals.

    ``partners[k]``: the head value middle output k continues; ``hidden_position``: the k of
    the hidden stream; ``timestep``: the call's timestep input (None: the graph has none)."""

    def __init__(self, middle: torch.nn.Module, config: DBCacheConfig, hidden_cut: torch.Tensor,
                 partners: Sequence[torch.Tensor], num_fingerprints: int, num_blocks: int, skipped_blocks: int) -> None:
        super().__init__()
        self.middle = middle
        device = hidden_cut.device
        mask = config.steps_computation_mask
        self.static_mask = mask is not None and config.steps_computation_policy == "static"
        capacity = config.num_inference_steps or LOG_CAPACITY
        self.register_buffer("counters", torch.zeros(COUNTERS, dtype=torch.int64, device=device))
        self.counters[NUM_BLOCKS], self.counters[SKIPPED_BLOCKS] = num_blocks, skipped_blocks
        self.register_buffer("floats", torch.zeros(FLOATS, dtype=torch.float64, device=device))
        self.register_buffer("settings", torch.zeros(SETTINGS, dtype=torch.float64, device=device))
        self.register_buffer("mask", torch.ones(max(len(mask) if mask else 0, 2) + 1, dtype=torch.int64, device=device))
        self.has_mask = mask is not None
        self.detects_repeats = num_fingerprints > 0
        self.register_buffer("fingerprint", torch.zeros(max(num_fingerprints, 2), dtype=torch.float64, device=device))
        self.register_buffer("prev_fn", torch.zeros(hidden_cut.shape, dtype=hidden_cut.dtype, device=device))
        for k, partner in enumerate(partners):
            self.register_buffer(f"residual_{k}", torch.zeros(partner.shape, dtype=partner.dtype, device=device))
        self.num_values = len(partners)
        self.register_buffer("log_cached", torch.zeros(capacity, dtype=torch.int64, device=device))
        self.register_buffer("log_has_diff", torch.zeros(capacity, dtype=torch.int64, device=device))
        self.register_buffer("log_diff", torch.zeros(capacity, dtype=torch.float64, device=device))
        self.apply_config(config)

    def apply_config(self, config: DBCacheConfig) -> None:
        """Write the settings a ``refresh`` may change into the settings buffer and request a new
        generation (the next call starts it)."""
        limit = config.max_accumulated_residual_diff_threshold
        values = {
            THRESHOLD: config.residual_diff_threshold, MAX_WARMUP: config.max_warmup_steps,
            WARMUP_INTERVAL: config.warmup_interval, MAX_CACHED: config.max_cached_steps,
            MAX_CONTINUOUS: config.max_continuous_cached_steps, MAX_ACCUMULATED: math.inf if limit is None else limit,
            STEPS: -1 if config.num_inference_steps is None else config.num_inference_steps,
        }
        with torch.no_grad():
            for slot, value in values.items():
                self.settings[slot] = float(value)
            mask = config.steps_computation_mask or []
            self.mask.fill_(1)
            if mask:
                self.mask[: len(mask)] = torch.tensor(mask, dtype=torch.int64)
            self.request_reset()

    def request_reset(self) -> None:
        """Start a new generation at the next call (``refresh`` without Python state)."""
        with torch.no_grad():
            self.counters[RESET] = 1

    def forward(self, hidden_entry: torch.Tensor, hidden_cut: torch.Tensor, timestep: Optional[torch.Tensor],
                fingerprint_inputs: Sequence[torch.Tensor], partners: Sequence[torch.Tensor],
                middle_inputs: Sequence[torch.Tensor], reset: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
        """``reset``: an input that starts a new generation when any element is nonzero (the
        exported program's refresh)."""
        counters, floats, settings = self.counters, self.floats, self.settings
        level = timestep.reshape(-1).to(torch.float64).sum().reshape(1) if timestep is not None else None
        fingerprint = _fingerprint(fingerprint_inputs, self.fingerprint.shape[0], hidden_cut.device)

        boundary = counters[RESET:RESET + 1] > 0
        if reset is not None:
            boundary = boundary | (reset.reshape(-1) != 0).any().reshape(1)
        if level is not None:
            boundary = boundary | ((floats[HAS_LAST_TIMESTEP:HAS_LAST_TIMESTEP + 1] > 0)
                                   & (level > floats[LAST_TIMESTEP:LAST_TIMESTEP + 1]))
        steps = settings[STEPS:STEPS + 1]
        boundary = boundary | ((steps >= 0) & (counters[STEP:STEP + 1].to(torch.float64) >= steps))
        if self.detects_repeats:
            boundary = boundary | ((counters[STEP:STEP + 1] == 1) & (fingerprint == self.fingerprint).all().reshape(1))
        kept = (~boundary).to(torch.int64)
        step = counters[STEP:STEP + 1] * kept
        cached_steps = counters[CACHED:CACHED + 1] * kept
        continuous = counters[CONTINUOUS:CONTINUOUS + 1] * kept
        has_residual = (counters[HAS_RESIDUAL:HAS_RESIDUAL + 1] * kept) > 0
        accumulated = torch.where(boundary, 0.0, floats[ACCUMULATED:ACCUMULATED + 1])

        sums = l1_rel_diff_reference(self.prev_fn, hidden_cut, hidden_entry).to(torch.float64)
        diff = torch.where(sums[1:2] == 0, torch.where(sums[0:1] == 0, 0.0, math.inf), sums[0:1] / sums[1:2])
        cache = self._decide(step, cached_steps, continuous, accumulated, has_residual, diff)

        operands = (*partners, *(getattr(self, f"residual_{k}") for k in range(self.num_values)), *middle_inputs)
        outputs = torch.cond(cache.reshape(()), self._cached_branch, self._compute_branch, operands)

        for k, (out, partner) in enumerate(zip(outputs, partners)):
            residual = getattr(self, f"residual_{k}")
            residual.copy_(torch.where(cache, residual, (out.float() - partner.float()).to(residual.dtype)))
        fresh = (hidden_cut.float() - hidden_entry.float()).to(self.prev_fn.dtype)
        self.prev_fn.copy_(torch.where(cache, self.prev_fn, fresh))

        cached = cache.to(torch.int64)
        positive = has_residual & torch.isfinite(diff) & (diff > 0)
        index = step.clamp(max=self.log_cached.shape[0] - 1)
        logging = (step < self.log_cached.shape[0]).to(torch.int64)
        self.log_cached.copy_(self.log_cached * (~boundary).to(torch.int64))
        self.log_has_diff.copy_(self.log_has_diff * (~boundary).to(torch.int64))
        self.log_diff.copy_(torch.where(boundary, 0.0, self.log_diff))
        self.log_cached.index_copy_(0, index, torch.where(logging > 0, cached, self.log_cached.index_select(0, index)))
        self.log_has_diff.index_copy_(0, index, torch.where(logging > 0, has_residual.to(torch.int64),
                                                            self.log_has_diff.index_select(0, index)))
        self.log_diff.index_copy_(0, index, torch.where(logging > 0, torch.where(has_residual, diff, 0.0),
                                                        self.log_diff.index_select(0, index)))
        counters.copy_(torch.cat([
            step + 1, cached_steps + cached, (continuous + cached) * cached, (has_residual | ~cache).to(torch.int64),
            torch.zeros_like(step), counters[GENERATIONS:GENERATIONS + 1] + boundary.to(torch.int64),
            counters[NUM_BLOCKS:],
        ]))
        floats.copy_(torch.cat([
            accumulated + torch.where(cache & positive, diff, 0.0),
            level if level is not None else floats[LAST_TIMESTEP:LAST_TIMESTEP + 1],
            torch.ones_like(accumulated) if level is not None else floats[HAS_LAST_TIMESTEP:HAS_LAST_TIMESTEP + 1],
        ]))
        self.fingerprint.copy_(torch.where(step == 0, fingerprint, self.fingerprint))
        return outputs

    def _decide(self, step: torch.Tensor, cached_steps: torch.Tensor, continuous: torch.Tensor,
                accumulated: torch.Tensor, has_residual: torch.Tensor, diff: torch.Tensor) -> torch.Tensor:
        """``policy.should_cache`` on tensors (shape [1], bool)."""
        settings = self.settings
        max_warmup = settings[MAX_WARMUP:MAX_WARMUP + 1].to(torch.int64)
        interval = settings[WARMUP_INTERVAL:WARMUP_INTERVAL + 1].to(torch.int64)
        warm = (step < max_warmup) & (step % interval == 0)
        allowed = ~warm & torch.isfinite(diff)
        if self.has_mask:
            index = step.clamp(max=self.mask.shape[0] - 1)
            allowed = allowed & (self.mask.index_select(0, index) == 0)
            if self.static_mask:
                return allowed & has_residual
        max_cached = settings[MAX_CACHED:MAX_CACHED + 1].to(torch.int64)
        max_continuous = settings[MAX_CONTINUOUS:MAX_CONTINUOUS + 1].to(torch.int64)
        threshold = settings[THRESHOLD:THRESHOLD + 1]
        allowed = allowed & ~((max_cached >= 0) & (cached_steps >= max_cached))
        allowed = allowed & ~((max_continuous >= 0) & (continuous >= max_continuous))
        allowed = allowed & (accumulated < settings[MAX_ACCUMULATED:MAX_ACCUMULATED + 1])
        return allowed & (threshold > 0) & has_residual & (diff < threshold)

    def _cached_branch(self, *operands: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = self.num_values
        partners, residuals = operands[:n], operands[n:2 * n]
        return tuple((p.float() + r.float()).to(p.dtype).contiguous() for p, r in zip(partners, residuals))

    def _compute_branch(self, *operands: torch.Tensor) -> tuple[torch.Tensor, ...]:
        outputs = self.middle(*operands[2 * self.num_values:])
        return tuple(o.clone(memory_format=torch.contiguous_format) for o in outputs)

    def logged_summary(self) -> CacheSummary:
        """The latest generation's statistics, read from the buffers."""
        return logged_summary({name: getattr(self, name) for name in LOGGED_STATE})


LOGGED_STATE = ("counters", "log_cached", "log_has_diff", "log_diff")
"""The buffers ``logged_summary`` reads."""


def logged_summary(state: dict[str, torch.Tensor]) -> CacheSummary:
    """The latest generation's statistics from the step's buffers (``LOGGED_STATE`` by name)."""
    counters = state["counters"].tolist()
    cached, has_diff, diffs = (state[name].tolist() for name in LOGGED_STATE[1:])
    num_blocks = counters[NUM_BLOCKS]
    stats = GenerationStats(num_blocks, num_blocks - counters[SKIPPED_BLOCKS])
    for step in range(min(counters[STEP], len(cached))):
        stats.record(step, bool(cached[step]), diffs[step] if has_diff[step] else None)
    stats.steps = counters[STEP]
    return stats.summary()


def _fingerprint(inputs: Sequence[torch.Tensor], size: int, device: torch.device) -> torch.Tensor:
    """One fp64 sum per call input, padded to ``size`` (a repeated call repeats it exactly)."""
    sums = [t.reshape(-1).to(torch.float64).sum().reshape(1) for t in inputs]
    padding = [torch.zeros(size - len(sums), dtype=torch.float64, device=device)] if size > len(sums) else []
    return torch.cat(sums + padding)
