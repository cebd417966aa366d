"""The whole DBCache step as tensor code: the decision, the middle-or-cached branch as
``torch.cond``, and every piece of cache state as a tensor written in place.

Traced into the program that calls it (``passes/insert_in_graph_step.py``), so AOTAutograd,
Inductor and ``torch.export`` see one graph: no host read, no Python between pieces. The state
tensors (``StepLayout.names``) are arguments: graph inputs chosen per cache context by the
backend's shim, or buffers of an exported program. Semantics equal
``ModelCacheState.run_middle`` for one stream without a calibrator (DESIGN section 3):
generation boundaries (a reset request, the timestep rising, the step count reached, a
warm-up call repeated), then warmup, step mask, max_cached, max_continuous, max_accumulated,
threshold, no previous residual, diff < threshold (strict).

Invariants:
  * the ``torch.cond`` branches are pure (no state writes, fresh contiguous outputs); every
    update happens after it with ``torch.where`` and ``copy_``;
  * counters and settings live in tensors of two or more elements (AOTInductor folds
    one-element attributes into constants, so a mutated scalar buffer would never advance);
  * every setting ``refresh`` may change (threshold, limits, warmup, step count, mask and its
    policy) is a tensor value, never a graph constant: refreshing never recompiles;
  * a residual is read only when ``counters[HAS_RESIDUAL]`` says a computed step of this
    generation wrote it;
  * the per-step log (cached flag, diff) holds the latest generation until the next one starts,
    so statistics are read from the tensors alone (``logged_summary``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from cachedit_fx.config import DBCacheConfig
from cachedit_fx.kernels.reference import l1_rel_diff_reference
from cachedit_fx.runtime.stats import CacheSummary, GenerationStats

STEP, CACHED, CONTINUOUS, HAS_RESIDUAL, RESET, GENERATIONS, NUM_BLOCKS, SKIPPED_BLOCKS = range(8)
COUNTERS = 8
ACCUMULATED, LAST_TIMESTEP, HAS_LAST_TIMESTEP = range(3)
FLOATS = 3
(THRESHOLD, MAX_WARMUP, WARMUP_INTERVAL, MAX_CACHED, MAX_CONTINUOUS, MAX_ACCUMULATED, STEPS,
 STATIC_MASK) = range(8)
SETTINGS = 8
LOG_CAPACITY = 1000
"""Steps logged per generation, and the longest step mask (later steps are decided and
counted, not logged; a mask entry past it means "compute")."""
FIXED_STATE = ("counters", "floats", "settings", "mask", "fingerprint", "prev_fn", "log_cached", "log_has_diff",
               "log_diff")
LOGGED_STATE = ("counters", "log_cached", "log_has_diff", "log_diff")
"""The state tensors ``logged_summary`` reads."""


@dataclass(frozen=True)
class StepLayout:
    """Shapes of a step's state: the hidden cut (``prev_fn``) and each carried value
    (``residual_k``); ``num_fingerprints``: the call inputs compared to spot a warm-up call."""

    hidden: tuple[tuple[int, ...], torch.dtype]
    values: tuple[tuple[tuple[int, ...], torch.dtype], ...]
    num_fingerprints: int
    num_blocks: int
    skipped_blocks: int

    @property
    def names(self) -> tuple[str, ...]:
        return FIXED_STATE + tuple(f"residual_{k}" for k in range(len(self.values)))

    def shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of every state tensor, by name (in ``names`` order)."""
        shapes = {
            "counters": ((COUNTERS,), torch.int64), "floats": ((FLOATS,), torch.float64),
            "settings": ((SETTINGS,), torch.float64), "mask": ((LOG_CAPACITY + 1,), torch.int64),
            "fingerprint": ((max(self.num_fingerprints, 2),), torch.float64), "prev_fn": self.hidden,
            "log_cached": ((LOG_CAPACITY,), torch.int64), "log_has_diff": ((LOG_CAPACITY,), torch.int64),
            "log_diff": ((LOG_CAPACITY,), torch.float64),
        }
        shapes.update({f"residual_{k}": value for k, value in enumerate(self.values)})
        return shapes

    def new_state(self, config: DBCacheConfig, device: torch.device) -> dict[str, torch.Tensor]:
        """Fresh state tensors for ``config`` on ``device`` (a new generation requested)."""
        state = {name: torch.zeros(shape, dtype=dtype, device=device) for name, (shape, dtype) in self.shapes().items()}
        state["counters"][NUM_BLOCKS], state["counters"][SKIPPED_BLOCKS] = self.num_blocks, self.skipped_blocks
        apply_config(state, config)
        return state


def apply_config(state: dict[str, torch.Tensor], config: DBCacheConfig) -> None:
    """Write the settings of ``config`` into ``state`` and request a new generation."""
    limit = config.max_accumulated_residual_diff_threshold
    mask = config.steps_computation_mask
    if mask is not None and len(mask) > LOG_CAPACITY:
        raise ValueError(f"steps_computation_mask has {len(mask)} entries; the in-graph step holds {LOG_CAPACITY}")
    values = [0.0] * SETTINGS
    values[THRESHOLD] = config.residual_diff_threshold
    values[MAX_WARMUP], values[WARMUP_INTERVAL] = config.max_warmup_steps, config.warmup_interval
    values[MAX_CACHED], values[MAX_CONTINUOUS] = config.max_cached_steps, config.max_continuous_cached_steps
    values[MAX_ACCUMULATED] = math.inf if limit is None else limit
    values[STEPS] = -1 if config.num_inference_steps is None else config.num_inference_steps
    values[STATIC_MASK] = float(mask is not None and config.steps_computation_policy == "static")
    with torch.no_grad():
        state["settings"].copy_(torch.tensor(values, dtype=torch.float64))
        entries = torch.zeros(LOG_CAPACITY + 1, dtype=torch.int64)
        if mask is not None:
            entries[len(mask):] = 1
            entries[: len(mask)] = torch.tensor(mask, dtype=torch.int64)
        state["mask"].copy_(entries)
    request_reset(state)


def request_reset(state: dict[str, torch.Tensor]) -> None:
    """Start a new generation at the next call (a write, no graph change)."""
    with torch.no_grad():
        state["counters"][RESET] = 1


class InGraphDBCacheStep(torch.nn.Module):
    """``forward(state, hidden_entry, hidden_cut, timestep, fingerprint_inputs, partners,
    middle_inputs, reset)`` returns the middle's outputs, computed by ``middle`` or forecast
    from the residuals; ``state``: the tensors named ``StepLayout.names``, in order.

    ``partners[k]``: the head value middle output k continues; ``timestep``: the call's
    timestep input (None: the graph has none); ``reset``: an input that starts a new generation
    when any element is nonzero (the exported program's refresh)."""

    def __init__(self, middle: torch.nn.Module, layout: StepLayout) -> None:
        super().__init__()
        self.middle = middle
        self.layout = layout

    def forward(self, state: Sequence[torch.Tensor], hidden_entry: torch.Tensor, hidden_cut: torch.Tensor,
                timestep: Optional[torch.Tensor], fingerprint_inputs: Sequence[torch.Tensor],
                partners: Sequence[torch.Tensor], middle_inputs: Sequence[torch.Tensor],
                reset: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.layout.names, state))
        counters, floats, settings, prev_fn = named["counters"], named["floats"], named["settings"], named["prev_fn"]
        residuals = [named[f"residual_{k}"] for k in range(len(partners))]
        level = timestep.reshape(-1).to(torch.float64).sum().reshape(1) if timestep is not None else None

        boundary = counters[RESET:RESET + 1] > 0
        if reset is not None:
            boundary = boundary | (reset.reshape(-1) != 0).any().reshape(1)
        if level is not None:
            boundary = boundary | ((floats[HAS_LAST_TIMESTEP:HAS_LAST_TIMESTEP + 1] > 0)
                                   & (level > floats[LAST_TIMESTEP:LAST_TIMESTEP + 1]))
        steps = settings[STEPS:STEPS + 1]
        boundary = boundary | ((steps >= 0) & (counters[STEP:STEP + 1].to(torch.float64) >= steps))
        fingerprint = _fingerprint(fingerprint_inputs, named["fingerprint"].shape[0], hidden_cut.device)
        if self.layout.num_fingerprints > 0:
            boundary = boundary | ((counters[STEP:STEP + 1] == 1)
                                   & (fingerprint == named["fingerprint"]).all().reshape(1))
        kept = (~boundary).to(torch.int64)
        step = counters[STEP:STEP + 1] * kept
        cached_steps = counters[CACHED:CACHED + 1] * kept
        continuous = counters[CONTINUOUS:CONTINUOUS + 1] * kept
        has_residual = (counters[HAS_RESIDUAL:HAS_RESIDUAL + 1] * kept) > 0
        accumulated = torch.where(boundary, 0.0, floats[ACCUMULATED:ACCUMULATED + 1])

        sums = l1_rel_diff_reference(prev_fn, hidden_cut, hidden_entry).to(torch.float64)
        diff = torch.where(sums[1:2] == 0, torch.where(sums[0:1] == 0, 0.0, math.inf), sums[0:1] / sums[1:2])
        cache = _decide(settings, named["mask"], step, cached_steps, continuous, accumulated, has_residual, diff)

        operands, positions = _distinct((*partners, *residuals, *middle_inputs))
        outputs = torch.ops.higher_order.cond(cache.reshape(()), _CachedBranch(len(partners), positions),
                                              _ComputeBranch(self.middle, len(partners), positions), operands)

        for out, partner, residual in zip(outputs, partners, residuals):
            residual.copy_(torch.where(cache, residual, (out.float() - partner.float()).to(residual.dtype)))
        prev_fn.copy_(torch.where(cache, prev_fn, (hidden_cut.float() - hidden_entry.float()).to(prev_fn.dtype)))
        _log_step(named, boundary, step, cache, has_residual, diff)
        cached = cache.to(torch.int64)
        positive = has_residual & torch.isfinite(diff) & (diff > 0)
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
        named["fingerprint"].copy_(torch.where(step == 0, fingerprint, named["fingerprint"]))
        return outputs


class _CachedBranch(torch.nn.Module):
    """``(partners, residuals, middle_inputs) -> partner + residual`` per carried value; the
    operands arrive without repeats, ``positions`` maps each argument to its operand."""

    def __init__(self, num_values: int, positions: tuple[int, ...]) -> None:
        super().__init__()
        self.num_values = num_values
        self.positions = positions

    def forward(self, *operands: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = self.num_values
        arguments = [operands[k] for k in self.positions]
        return tuple((p.float() + r.float()).to(p.dtype).contiguous()
                     for p, r in zip(arguments[:n], arguments[n:2 * n]))


class _ComputeBranch(torch.nn.Module):
    """``(partners, residuals, middle_inputs) -> middle(middle_inputs)``, fresh and contiguous."""

    def __init__(self, middle: torch.nn.Module, num_values: int, positions: tuple[int, ...]) -> None:
        super().__init__()
        self.middle = middle
        self.num_values = num_values
        self.positions = positions

    def forward(self, *operands: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arguments = [operands[k] for k in self.positions]
        outputs = self.middle(*arguments[2 * self.num_values:])
        return tuple(o.clone(memory_format=torch.contiguous_format) for o in outputs)


def _distinct(arguments: tuple[torch.Tensor, ...]) -> tuple[tuple[torch.Tensor, ...], tuple[int, ...]]:
    """The arguments without repeats (``torch.cond`` refuses an operand passed twice) and, per
    argument, the index of its operand."""
    operands: list[torch.Tensor] = []
    index: dict[int, int] = {}
    positions = []
    for value in arguments:
        if id(value) not in index:
            index[id(value)] = len(operands)
            operands.append(value)
        positions.append(index[id(value)])
    return tuple(operands), tuple(positions)


def _decide(settings: torch.Tensor, mask: torch.Tensor, step: torch.Tensor, cached_steps: torch.Tensor,
            continuous: torch.Tensor, accumulated: torch.Tensor, has_residual: torch.Tensor,
            diff: torch.Tensor) -> torch.Tensor:
    """``policy.should_cache`` on tensors (shape [1], bool)."""
    def setting(slot: int) -> torch.Tensor:
        return settings[slot:slot + 1]

    warm = (step < setting(MAX_WARMUP).to(torch.int64)) & (step % setting(WARMUP_INTERVAL).to(torch.int64) == 0)
    allowed = ~warm & torch.isfinite(diff) & (mask.index_select(0, step.clamp(max=mask.shape[0] - 1)) == 0)
    max_cached, max_continuous = setting(MAX_CACHED).to(torch.int64), setting(MAX_CONTINUOUS).to(torch.int64)
    dynamic = (allowed & ~((max_cached >= 0) & (cached_steps >= max_cached))
               & ~((max_continuous >= 0) & (continuous >= max_continuous))
               & (accumulated < setting(MAX_ACCUMULATED)) & (setting(THRESHOLD) > 0) & (diff < setting(THRESHOLD)))
    return torch.where(setting(STATIC_MASK) > 0, allowed, dynamic) & has_residual


def _log_step(state: dict[str, torch.Tensor], boundary: torch.Tensor, step: torch.Tensor, cache: torch.Tensor,
              has_residual: torch.Tensor, diff: torch.Tensor) -> None:
    """Clear the log at a boundary, then record this step (steps past ``LOG_CAPACITY`` are not logged)."""
    kept = (~boundary).to(torch.int64)
    index = step.clamp(max=LOG_CAPACITY - 1)
    logging = step < LOG_CAPACITY
    entries = (("log_cached", cache.to(torch.int64)), ("log_has_diff", has_residual.to(torch.int64)),
               ("log_diff", torch.where(has_residual, diff, 0.0)))
    for name, value in entries:
        log = state[name]
        log.copy_(log * kept.to(log.dtype))
        log.index_copy_(0, index, torch.where(logging, value, log.index_select(0, index)))


def logged_summary(state: dict[str, torch.Tensor]) -> CacheSummary:
    """The latest generation's statistics from the step's state (``LOGGED_STATE`` by name)."""
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
