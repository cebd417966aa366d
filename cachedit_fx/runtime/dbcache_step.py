"""The whole DBCache step as tensor code: the decision, the middle-or-cached branch as
``torch.cond``, and every piece of cache state as a tensor written in place.

Traced into the program that calls it (``passes/insert_in_graph_step.py``), so AOTAutograd,
Inductor and ``torch.export`` see one graph: no host read, no Python between pieces. The state
tensors (``StepLayout.names``) are arguments: graph inputs chosen per cache context by the
backend's shim, or buffers of an exported program. Semantics are cache-dit's (DESIGN section 3),
with any calibrator (none, TaylorSeer, FoCa), separate-CFG streams included: generation boundaries (a reset request, the timestep rising, the
step count reached, a warm-up call repeated) and CFG detection, then warmup, step mask,
max_cached, max_continuous, max_accumulated, threshold, no previous residual, diff < threshold
(strict). A cached step forecasts each carried value from its history by its
``ValuePlan`` (``runtime/calibration.py``; order 0: the last residual); the
FoCa prediction is computed before the branch (it also updates the history), the Taylor series
inside it.

Invariants:
  * the ``torch.cond`` branches are pure (no state writes, fresh contiguous outputs); every
    update happens after it with ``torch.where`` and ``copy_``;
  * counters and settings live in tensors of two or more elements (AOTInductor folds
    one-element attributes into constants, so a mutated scalar buffer would never advance);
  * every setting ``refresh`` may change (threshold, limits, warmup, step count, mask and its
    policy, the CFG options) is a tensor value, never a graph constant: refreshing never
    recompiles;
  * a stream's ladders are read only when its ``stream_counters[HAS_RESIDUAL]`` says a computed
    step of this generation wrote them, and only the levels its ``UPDATES`` filled; a boundary
    clears every stream's counters;
  * the per-step log (cached flag, diff) holds the latest generation's steps until the next
    one rewrites them, so statistics are read from the tensors alone (``logged_summary``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional, Sequence

import torch

from cachedit_fx.config import DBCacheConfig, DBPruneConfig
from cachedit_fx.kernels import TORCH_KERNELS, StepKernels
from cachedit_fx.runtime.cond_operands import CondOperands
from cachedit_fx.runtime.stats import CacheSummary, GenerationStats

DEFAULT_STREAM = "default"
UNCOND_STREAM = "uncond"
STREAMS = (DEFAULT_STREAM, UNCOND_STREAM)
"""The separate-CFG streams: the conditional call's ("default") and the unconditional one's.
With ``enable_separate_cfg=None`` two calls per step are detected at a generation's second
call (the same timestep as the first); ``cfg_compute_first=True``: the unconditional call
comes first. Call ``c`` of a CFG generation is position ``c % 2`` of step ``c // 2``."""


def check_stream_name(stream: object) -> None:
    """Raise ``ValueError`` unless ``stream`` names a stream ("default" or "uncond")."""
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}: the streams are {', '.join(map(repr, STREAMS))}")


CALLS, RESET, GENERATIONS, NUM_BLOCKS, SKIPPED_BLOCKS, MODE, SWAP, FIRST_DECISION = range(8)
COUNTERS = 8
"""``counters``: calls this generation, reset request, generations started, chain shape, CFG mode
(-1 undecided, 0 one stream, 1 separate), stream swap (the first call's stream was relabelled
"uncond"), the decision of the step's first call."""
STEP, CACHED, CONTINUOUS, HAS_RESIDUAL, UPDATES, LAST_COMPUTED, ANCHORS, SEEN = range(8)
STREAM_COUNTERS = 8
"""``stream_counters`` per stream: its step, cached steps, cached in a row, a residual written,
computed steps pushed into the ladders (capped at the deepest ladder), the last computed step,
and the FoCa histories' computed anchors and values seen (each capped at 2)."""
FULL, FULL_PREV, LATEST, PREVIOUS = range(4)
"""Levels of a FoCa history: the two latest computed values, the two latest values seen."""
LAST_TIMESTEP, HAS_LAST_TIMESTEP, FIRST_TIMESTEP = range(3)
FLOATS = 3
ACCUMULATED = 0
STREAM_FLOATS = 2
(THRESHOLD, MAX_WARMUP, WARMUP_INTERVAL, MAX_CACHED, MAX_CONTINUOUS, MAX_ACCUMULATED, STEPS,
 STATIC_MASK, FORCED_MODE, COMPUTE_FIRST, DIFF_SEPARATE, DYNAMIC_THRESHOLD, MAX_DYNAMIC, RELAX) = range(14)
SETTINGS = 14
"""``settings``: every option ``refresh`` may change; the last three are DBPrune's dynamic
threshold (on, its ceiling or NaN for twice the threshold, the relax ratio)."""
LOG_CAPACITY = 1000
"""Steps logged per stream and generation, and the longest step mask (later steps are decided
and counted exactly, not listed; a mask entry past it means "compute")."""
FIXED_STATE = ("counters", "stream_counters", "floats", "stream_floats", "settings", "mask", "fingerprint",
               "log_cached", "log_has_diff", "log_diff")
LOGGED_STATE = ("counters", "stream_counters", "log_cached", "log_has_diff", "log_diff")
PRUNE_LOGGED_STATE = ("log_pruned", "pruned_index")
"""The state tensors ``logged_summary`` reads (the second group: DBPrune only)."""
STREAM_INDEX = {name: row for row, name in enumerate(STREAMS)}


@dataclass(frozen=True)
class ValueLadder:
    """How one carried value is remembered (``runtime/calibration.py``): its shape and dtype, its
    ``kind`` ("taylor": a difference ladder of ``order + 1`` levels, order 0 being the last
    residual of plain DBCache; "foca": the four levels ``FULL .. PREVIOUS``) and whether it holds
    the residual ``out - in`` or the output itself."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    order: int = 0
    residual: bool = True
    kind: str = "taylor"
    fitted: tuple[int, ...] = ()
    """Dimensions whose size depends on data (a count from ``.item()``): stored at their upper
    bound, read and written as the call's leading part (``fit`` / ``padded``)."""

    @property
    def levels(self) -> int:
        return 4 if self.kind == "foca" else self.order + 1

    @property
    def flat_in_branch(self) -> bool:
        """Whether a ``torch.cond`` branch returns this value as a 1-d view (``branch_outputs``):
        a symbolic size's strides (``20*Max(1, u)``) are not the plain products ``torch.cond``
        can match between branches."""
        return bool(self.fitted) or not all(isinstance(d, int) for d in self.shape)

    def fit(self, stored: torch.Tensor, like: torch.Tensor, lead: int = 0) -> torch.Tensor:
        """``stored`` (this value's storage after ``lead`` leading dimensions) narrowed to the
        sizes ``like`` has in the fitted dimensions."""
        for dim in self.fitted:
            stored = stored.narrow(lead + dim, 0, like.shape[dim])
        return stored

    def padded(self, value: torch.Tensor, lead: int = 0) -> torch.Tensor:
        """``value`` zero-padded back to the stored sizes in the fitted dimensions."""
        if not self.fitted:
            return value
        pad = [0] * (2 * value.dim())
        for dim in self.fitted:
            pad[2 * (value.dim() - 1 - lead - dim) + 1] = self.shape[dim] - value.shape[lead + dim]
        return torch.nn.functional.pad(value, pad)


@dataclass(frozen=True)
class PrunedBlockLayout:
    """One prunable block's state (DBPrune): its chain index, the input its diff compares
    (``block_<index>_input``) and the residual of each value it hands on (one-level ladders,
    ``block_<index>_residual_<k>``), per stream."""

    index: int
    input: ValueLadder
    values: tuple[ValueLadder, ...]

    @property
    def num_data_sizes(self) -> int:
        """The data-dependent sizes of its input and values (``block_<index>_sizes`` per stream)."""
        return sum(len(v.fitted) for v in (self.input, *self.values))

    @property
    def sizes_name(self) -> str:
        return f"block_{self.index}_sizes"

    def names(self) -> tuple[str, ...]:
        prefix = f"block_{self.index}_"
        return (prefix + "input", prefix + "counters", prefix + "accumulated",
                *(f"{prefix}residual_{k}" for k in range(len(self.values))),
                *((self.sizes_name,) if self.num_data_sizes else ()))


@dataclass(frozen=True)
class StepLayout:
    """Shapes of a step's state, per stream (``streams``: 2 when separate-CFG streams may occur,
    else 1). DBCache: the hidden cut (``prev_fn``) and each carried value's ladder
    (``residual_k``: ``ValueLadder.levels``); DBPrune (``blocks``, ``hidden`` None): each
    prunable block's state and the log of pruned blocks. ``num_fingerprints``: the call inputs
    compared to spot a warm-up call or a CFG partner."""

    hidden: Optional[ValueLadder]
    values: tuple[ValueLadder, ...]
    num_fingerprints: int
    num_blocks: int
    skipped_blocks: int
    streams: int
    latent_index: int = -1
    """The fingerprinted input that is the latent (a CFG pair repeats it); -1: none is named so."""
    inputs: tuple[tuple[tuple[int, ...], torch.dtype], ...] = ()
    """Shape and dtype of each fingerprinted call input: a state serves calls of these inputs
    only (another text length starts a new generation)."""
    blocks: tuple[PrunedBlockLayout, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        if self.blocks:
            return FIXED_STATE + ("log_pruned", "pruned_index") + tuple(n for b in self.blocks for n in b.names())
        sizes = ("data_sizes",) if self.num_data_sizes else ()
        return FIXED_STATE + sizes + ("prev_fn",) + tuple(f"residual_{k}" for k in range(len(self.values)))

    @property
    def num_data_sizes(self) -> int:
        """The data-dependent sizes of a DBCache call's carried values (``ValueLadder.fitted``):
        the sizes its ``data_sizes`` state remembers per stream."""
        return sum(len(v.fitted) for v in (self.hidden, *self.values)) if self.hidden is not None else 0

    def shapes(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shape and dtype of every state tensor, by name (in ``names`` order)."""
        n = self.streams
        shapes = {
            "counters": ((COUNTERS,), torch.int64), "stream_counters": ((n, STREAM_COUNTERS), torch.int64),
            "floats": ((FLOATS,), torch.float64), "stream_floats": ((n, STREAM_FLOATS), torch.float64),
            "settings": ((SETTINGS,), torch.float64), "mask": ((LOG_CAPACITY + 1,), torch.int64),
            "fingerprint": ((max(self.num_fingerprints, 2),), torch.float64),
            "log_cached": ((n, LOG_CAPACITY), torch.int64), "log_has_diff": ((n, LOG_CAPACITY), torch.int64),
            "log_diff": ((n, LOG_CAPACITY), torch.float64),
        }
        if self.blocks:
            shapes["log_pruned"] = ((n, LOG_CAPACITY, len(self.blocks)), torch.int8)
            shapes["pruned_index"] = ((max(len(self.blocks), 2),), torch.int64)
            for block in self.blocks:
                input_name, counters_name, accumulated_name, *residuals = block.names()
                shapes[input_name] = ((n, *block.input.shape), block.input.dtype)
                shapes[counters_name] = ((n, 2), torch.int64)
                shapes[accumulated_name] = ((n, 2), torch.float64)
                shapes.update({name: ((n, 1, *v.shape), v.dtype) for name, v in zip(residuals, block.values)})
                if block.num_data_sizes:
                    shapes[block.sizes_name] = ((n, block.num_data_sizes), torch.int64)
            return shapes
        if self.num_data_sizes:
            shapes["data_sizes"] = ((n, self.num_data_sizes), torch.int64)
        shapes["prev_fn"] = ((n, *self.hidden.shape), self.hidden.dtype)
        shapes.update({f"residual_{k}": ((n, v.levels, *v.shape), v.dtype) for k, v in enumerate(self.values)})
        return shapes

    def sized(self, size: Callable[[Any], int]) -> "StepLayout":
        """This layout with every symbolic dimension replaced by ``size(dimension)`` (a graph
        compiled for dynamic shapes: the sizes of the call at hand)."""
        def shape(dims: tuple[Any, ...]) -> tuple[int, ...]:
            return tuple(d if isinstance(d, int) else size(d) for d in dims)

        def ladders(values: tuple[ValueLadder, ...]) -> tuple[ValueLadder, ...]:
            return tuple(dataclasses.replace(v, shape=shape(v.shape)) for v in values)

        return dataclasses.replace(
            self, hidden=self.hidden and ladders((self.hidden,))[0], values=ladders(self.values),
            inputs=tuple((shape(dims), dtype) for dims, dtype in self.inputs),
            blocks=tuple(dataclasses.replace(b, input=ladders((b.input,))[0], values=ladders(b.values))
                         for b in self.blocks))

    def new_state(self, config: DBCacheConfig, device: torch.device) -> dict[str, torch.Tensor]:
        """Fresh state tensors for ``config`` on ``device`` (a new generation requested)."""
        state = {name: torch.zeros(shape, dtype=dtype, device=device) for name, (shape, dtype) in self.shapes().items()}
        state["counters"][NUM_BLOCKS], state["counters"][SKIPPED_BLOCKS] = self.num_blocks, self.skipped_blocks
        if self.blocks:
            state["pruned_index"][: len(self.blocks)] = torch.tensor([b.index for b in self.blocks])
        apply_config(state, config)
        return state


def streams_for(config: DBCacheConfig) -> int:
    """Streams a step compiled for ``config`` holds: one when separate CFG is off."""
    return 1 if config.enable_separate_cfg is False else 2


def apply_config(state: dict[str, torch.Tensor], config: DBCacheConfig) -> None:
    """Write the settings of ``config`` into ``state`` and request a new generation."""
    limit = config.max_accumulated_residual_diff_threshold
    mask = config.steps_computation_mask
    if mask is not None and len(mask) > LOG_CAPACITY:
        raise ValueError(f"steps_computation_mask has {len(mask)} entries; the in-graph step holds {LOG_CAPACITY}")
    if streams_for(config) > state["stream_counters"].shape[0]:
        raise ValueError("enable_separate_cfg: this program was compiled with enable_separate_cfg=False and holds "
                         "one stream; compile again to allow separate CFG streams")
    values = [0.0] * SETTINGS
    values[THRESHOLD] = config.residual_diff_threshold
    values[MAX_WARMUP], values[WARMUP_INTERVAL] = config.max_warmup_steps, config.warmup_interval
    values[MAX_CACHED], values[MAX_CONTINUOUS] = config.max_cached_steps, config.max_continuous_cached_steps
    values[MAX_ACCUMULATED] = math.inf if limit is None else limit
    values[STEPS] = -1 if config.num_inference_steps is None else config.num_inference_steps
    values[STATIC_MASK] = float(mask is not None and config.steps_computation_policy == "static")
    values[FORCED_MODE] = -1.0 if config.enable_separate_cfg is None else float(config.enable_separate_cfg)
    values[COMPUTE_FIRST] = float(config.cfg_compute_first)
    values[DIFF_SEPARATE] = float(config.cfg_diff_compute_separate)
    if isinstance(config, DBPruneConfig):
        ceiling = config.max_dynamic_prune_threshold
        values[DYNAMIC_THRESHOLD] = float(config.enable_dynamic_prune_threshold)
        values[MAX_DYNAMIC] = math.nan if ceiling is None else ceiling
        values[RELAX] = config.dynamic_prune_threshold_relax_ratio
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


def _one(t: torch.Tensor, slot: int) -> torch.Tensor:
    """Element ``slot`` of a 1-d state tensor as a [1] view."""
    return t[slot:slot + 1]


class CallStart(NamedTuple):
    """A call's place in its generation, after this call's boundary: (boundary, CFG mode, stream
    swap, calls so far, position in the step, stream row, ``kept``: 0 at a boundary else 1),
    all shape [1], then the timestep level (None: no timestep input) and the call's fingerprint."""

    boundary: torch.Tensor
    mode: torch.Tensor
    swap: torch.Tensor
    calls: torch.Tensor
    position: torch.Tensor
    stream: torch.Tensor
    kept: torch.Tensor
    level: Optional[torch.Tensor]
    fingerprint: torch.Tensor


def start_call(layout: StepLayout, named: dict[str, torch.Tensor], timestep: Optional[torch.Tensor],
               fingerprint_inputs: Sequence[torch.Tensor], reset: Optional[torch.Tensor],
               device: torch.device) -> CallStart:
    """Generation boundaries and CFG detection, in ``ModelCacheState._resolve_call``'s order, then
    the call's stream: call ``c`` of a CFG generation is position ``c % 2`` of its step; with
    ``cfg_compute_first`` the first call's stream is relabelled "uncond" (``swap``)."""
    counters, floats, settings = named["counters"], named["floats"], named["settings"]
    level = timestep_level(timestep) if timestep is not None else None
    fingerprint = _fingerprint(fingerprint_inputs, named["fingerprint"].shape[0], device)
    calls, mode = _one(counters, CALLS), _one(counters, MODE)
    steps = _one(settings, STEPS)

    def steps_reached(mode: torch.Tensor) -> torch.Tensor:
        return (steps >= 0) & (calls.to(torch.float64) >= steps * torch.where(mode == 1, 2.0, 1.0))

    boundary = _one(counters, RESET) > 0
    if reset is not None:
        boundary = boundary | (reset.reshape(-1) != 0).any().reshape(1)
    if level is not None:
        boundary = boundary | ((_one(floats, HAS_LAST_TIMESTEP) > 0) & (level > _one(floats, LAST_TIMESTEP)))
    boundary = boundary | (steps_reached(mode) & ~((mode < 0) & (calls == 1)))
    if layout.num_fingerprints > 0:
        boundary = boundary | ((calls == 1) & (fingerprint == named["fingerprint"]).all().reshape(1))
    forced = _one(settings, FORCED_MODE).to(torch.int64)
    same_timestep = (level == _one(floats, FIRST_TIMESTEP)) if level is not None else torch.zeros_like(boundary)
    latent = layout.latent_index
    if latent >= 0:
        same_latent = _one(fingerprint, latent) == _one(named["fingerprint"], latent)
        boundary = boundary | ((calls == 1) & same_timestep & ~same_latent & (forced != 1))
        same_timestep = same_timestep & same_latent
    detect = ~boundary & (mode < 0) & (calls == 1)
    separate_now = detect & same_timestep
    mode = torch.where(detect, separate_now.to(torch.int64), mode)
    swap = torch.where(separate_now & (_one(settings, COMPUTE_FIRST) > 0), 1, _one(counters, SWAP))
    boundary = boundary | (detect & steps_reached(mode))
    mode, swap, calls = torch.where(boundary, forced, mode), torch.where(boundary, 0, swap), torch.where(boundary, 0, calls)
    separate = mode == 1
    position = torch.where(separate, calls % 2, 0)
    stream = (separate & ((position == 1) != (_one(settings, COMPUTE_FIRST) > 0))).to(torch.int64) ^ swap
    return CallStart(boundary, mode, swap, calls, position, stream, (~boundary).to(torch.int64), level, fingerprint)


def finish_call(named: dict[str, torch.Tensor], call: CallStart, first_decision: torch.Tensor) -> None:
    """Write the call's generation counters, timestep and fingerprint (after every other write
    of the call); ``first_decision``: what ``FIRST_DECISION`` holds next."""
    counters, floats = named["counters"], named["floats"]
    counters.copy_(torch.cat([
        call.calls + 1, torch.zeros_like(call.calls), _one(counters, GENERATIONS) + call.boundary.to(torch.int64),
        counters[NUM_BLOCKS:MODE], call.mode, call.swap, first_decision,
    ]))
    if call.level is not None:
        floats.copy_(torch.cat([call.level, torch.ones_like(call.level),
                                torch.where(call.calls == 0, call.level, _one(floats, FIRST_TIMESTEP))]))
    named["fingerprint"].copy_(torch.where(call.calls == 0, call.fingerprint, named["fingerprint"]))


def relative_diff(sums: torch.Tensor, group: Optional[str]) -> torch.Tensor:
    """``sum|prev - cur| / sum|prev|`` (fp64, shape [1]) from diff sums, added over ``group``'s
    ranks first (tensor / context parallelism: every rank then decides alike); 0 / 0 is 0,
    x / 0 is inf."""
    if group is not None:
        sums = torch.ops._c10d_functional.wait_tensor(torch.ops._c10d_functional.all_reduce(sums, "sum", group))
    sums = sums.to(torch.float64)
    return torch.where(sums[1:2] == 0, torch.where(sums[0:1] == 0, 0.0, math.inf), sums[0:1] / sums[1:2])


def stream_row(stacked: torch.Tensor, stream: torch.Tensor) -> torch.Tensor:
    """The ``stream`` row of a per-stream tensor (a plain view when there is one stream)."""
    return stacked[0] if stacked.shape[0] == 1 else stacked.index_select(0, stream)[0]


def with_stream_row(stacked: torch.Tensor, stream: torch.Tensor, row: torch.Tensor) -> torch.Tensor:
    """``stacked`` with its ``stream`` row replaced by ``row`` (out of place)."""
    return row.unsqueeze(0) if stacked.shape[0] == 1 else stacked.index_copy(0, stream, row.unsqueeze(0))


def write_stream_row(stacked: torch.Tensor, stream: torch.Tensor, row: torch.Tensor) -> None:
    """Write ``row`` into the ``stream`` row of ``stacked`` in place."""
    if stacked.shape[0] == 1:
        stacked[0].copy_(row)
    else:
        stacked.index_copy_(0, stream, row.unsqueeze(0))


class DBCacheStep(torch.nn.Module):
    """``forward(state, hidden_entry, hidden_cut, timestep, fingerprint_inputs, partners,
    middle_inputs, reset)`` returns the middle's outputs, computed by ``middle`` or forecast
    from the residuals; ``state``: the tensors named ``StepLayout.names``, in order.

    ``partners[k]``: the head value middle output k continues; ``timestep``: the call's
    timestep input (None: the graph has none); ``reset``: an input that starts a new generation
    when any element is nonzero (the exported program's refresh). Separate-CFG streams follow
    ``STREAMS``; they share the call count and nothing else."""

    def __init__(self, middle: torch.nn.Module, layout: StepLayout, sums_group: Optional[str] = None,
                 kernels: StepKernels = TORCH_KERNELS) -> None:
        super().__init__()
        self.region = middle
        """What the compute branch runs: the middle piece (``compile_regions`` may replace it)."""
        self.layout = layout
        self.sums_group = sums_group
        """The process group (by name) whose ranks' diff sums are added before the decision
        (tensor / context parallelism: every rank then takes the same branch)."""
        self.kernels = kernels
        """The diff sums, ladder push and forecast: torch ops the compiler fuses into the
        program, or the custom ops (``cache_kernels="triton"``)."""

    def forward(self, state: Sequence[torch.Tensor], hidden_entry: torch.Tensor, hidden_cut: torch.Tensor,
                timestep: Optional[torch.Tensor], fingerprint_inputs: Sequence[torch.Tensor],
                partners: Sequence[torch.Tensor], middle_inputs: Sequence[torch.Tensor],
                reset: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.layout.names, state))
        counters, settings = named["counters"], named["settings"]
        call = start_call(self.layout, named, timestep, fingerprint_inputs, reset, hidden_cut.device)
        boundary, mode, swap, calls, position, stream, kept = call[:7]
        separate, second = mode == 1, position == 1
        stream_counters = named["stream_counters"] * kept
        stream_floats = torch.where(boundary, 0.0, named["stream_floats"])
        mine = stream_row(stream_counters, stream)
        step, cached_steps, continuous = _one(mine, STEP), _one(mine, CACHED), _one(mine, CONTINUOUS)
        has_residual = _one(mine, HAS_RESIDUAL) > 0
        updates, last_computed = _one(mine, UPDATES), _one(mine, LAST_COMPUTED)
        anchors, seen = _one(mine, ANCHORS), _one(mine, SEEN)
        stored = (self.layout.hidden, *self.layout.values)
        sizes = data_sizes(stored, (hidden_cut, *partners), hidden_cut.device)
        if sizes is not None:  # another size than the stored values': none of them is read
            same = (stream_row(named["data_sizes"], stream) == sizes).all().reshape(1)
            has_residual = has_residual & same
            updates, anchors, seen = (torch.where(same, c, 0) for c in (updates, anchors, seen))
        accumulated = _one(stream_row(stream_floats, stream), ACCUMULATED)
        prev_fn = self.layout.hidden.fit(stream_row(named["prev_fn"], stream), hidden_cut)
        ladders = [plan.fit(stream_row(named[f"residual_{k}"], stream), partner, lead=1)
                   for k, (plan, partner) in enumerate(zip(self.layout.values, partners))]
        elapsed = (step - last_computed).to(torch.float64)
        series, weights, predictions = [], [], {}
        for k, (ladder, plan) in enumerate(zip(ladders, self.layout.values)):
            if plan.kind == "foca":  # the forecast itself, as a one-level series of weight 1
                value, predictions[k] = foca_forecast(ladder, anchors, seen)
                series.append(value.unsqueeze(0))
                weights.append(forecast_weights(1, torch.ones_like(updates), elapsed))
            else:
                series.append(ladder)
                weights.append(forecast_weights(ladder.shape[0], updates, elapsed))

        diff = relative_diff(self.kernels.diff_sums(prev_fn, hidden_cut, hidden_entry), self.sums_group)
        follows = separate & (_one(settings, DIFF_SEPARATE) == 0) & second
        decided = decide(settings, named["mask"], step, cached_steps, continuous, accumulated, has_residual, diff)
        cache = torch.where(follows, (_one(counters, FIRST_DECISION) > 0) & has_residual, decided)
        has_diff = has_residual & ~follows

        branch_arguments = (*partners, *series, *weights)
        operands = CondOperands((*branch_arguments, *middle_inputs))
        plans = tuple(v.residual for v in self.layout.values)
        flat = tuple(v.flat_in_branch for v in self.layout.values)
        outputs = unflattened(torch.ops.higher_order.cond(
            cache.reshape(()), CachedBranch(plans, operands, self.kernels.forecast, flat),
            ComputeBranch(self.region, len(branch_arguments), operands, flat), tuple(operands.operands)), partners)

        gap = torch.where(updates > 0, step - last_computed, 1).to(torch.float32)
        for k, (out, partner, ladder, plan) in enumerate(zip(outputs, partners, ladders, self.layout.values)):
            base = partner if plan.residual else None
            if k in predictions:
                kept_history = foca_after_forecast(ladder, predictions[k], seen)
                pushed = foca_push(ladder, out.float() if base is None else out.float() - base.float())
            else:
                kept_history = ladder
                pushed = self.kernels.ladder_push(ladder, out, base, gap, (updates + 1).clamp(max=ladder.shape[0]))
            write_stream_row(named[f"residual_{k}"], stream, plan.padded(torch.where(cache, kept_history, pushed), 1))
        fresh_fn = torch.where(cache, prev_fn, (hidden_cut.float() - hidden_entry.float()).to(prev_fn.dtype))
        write_stream_row(named["prev_fn"], stream, self.layout.hidden.padded(fresh_fn))
        if sizes is not None:
            write_stream_row(named["data_sizes"], stream, sizes)
        log_step(named, stream, step, cache, has_diff, diff)
        cached = cache.to(torch.int64)
        positive = has_diff & torch.isfinite(diff) & (diff > 0)
        deepest = max(v.order for v in self.layout.values) + 1
        named["stream_counters"].copy_(with_stream_row(stream_counters, stream, torch.cat([
            step + 1, cached_steps + cached, (continuous + cached) * cached, (has_residual | ~cache).to(torch.int64),
            torch.where(cache, updates, (updates + 1).clamp(max=deepest)), torch.where(cache, last_computed, step),
            torch.where(cache, anchors, (anchors + 1).clamp(max=2)), torch.where(cache, seen, (seen + 1).clamp(max=2)),
        ])))
        named["stream_floats"].copy_(with_stream_row(stream_floats, stream, torch.cat([
            accumulated + torch.where(cache & positive, diff, 0.0), torch.zeros_like(accumulated)])))
        finish_call(named, call, torch.where(position == 0, cached, _one(counters, FIRST_DECISION)))
        return outputs


class CachedBranch(torch.nn.Module):
    """``(partners, ladders, forecast weights, middle_inputs)`` -> per carried value its
    forecast by ``forecast`` (``taylor_forecast_reference``'s signature) from its ladder, based
    on the partner for a residual ladder; the arguments arrive as ``CondOperands``."""

    def __init__(self, residual_plans: tuple[bool, ...], layout: CondOperands,
                 forecast: Callable[..., torch.Tensor], flat: tuple[bool, ...] = ()) -> None:
        super().__init__()
        self.residual_plans = residual_plans
        self.layout = layout
        self.forecast = forecast
        self.flat = flat

    def forward(self, *operands: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(self.residual_plans)
        arguments = self.layout.arguments(operands)
        partners, ladders, weights = arguments[:n], arguments[n:2 * n], arguments[2 * n:3 * n]
        outputs = [self.forecast(ladder, partner if residual else None, weight).contiguous()
                   for partner, ladder, weight, residual in zip(partners, ladders, weights, self.residual_plans)]
        return branch_outputs(outputs, self.flat)


class ComputeBranch(torch.nn.Module):
    """``(partners, ladders, forecast weights, middle_inputs) -> middle(middle_inputs)``, fresh and
    contiguous; the middle's inputs start after the first ``num_branch_arguments`` arguments."""

    def __init__(self, middle: torch.nn.Module, num_branch_arguments: int, layout: CondOperands,
                 flat: tuple[bool, ...] = ()) -> None:
        super().__init__()
        self.middle = middle
        self.num_branch_arguments = num_branch_arguments
        self.layout = layout
        self.flat = flat

    def forward(self, *operands: torch.Tensor) -> tuple[torch.Tensor, ...]:
        arguments = self.layout.arguments(operands)
        outputs = self.middle(*arguments[self.num_branch_arguments:])
        return branch_outputs([o.clone(memory_format=torch.contiguous_format) for o in outputs], self.flat)


def branch_outputs(outputs: Sequence[torch.Tensor], flat: tuple[bool, ...]) -> tuple[torch.Tensor, ...]:
    """A branch's contiguous outputs, those marked ``flat`` (``ValueLadder.flat_in_branch``) as
    1-d views; the step views them back to their shapes (``unflattened``)."""
    return tuple(o.reshape(-1) if flat and flat[k] else o for k, o in enumerate(outputs))


def unflattened(outputs: Sequence[torch.Tensor], like: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``branch_outputs`` in the shapes of ``like``."""
    return tuple(o.view(l.shape) if o.dim() != l.dim() else o for o, l in zip(outputs, like))


def data_sizes(stored: Sequence[ValueLadder], values: Sequence[torch.Tensor], device: torch.device
               ) -> Optional[torch.Tensor]:
    """The sizes of ``values`` in their ``stored`` layouts' fitted dimensions (int64), or None
    when no dimension is fitted."""
    sizes = [value.shape[dim] for plan, value in zip(stored, values) for dim in plan.fitted]
    if not sizes:
        return None
    return torch.cat([torch.full((1,), size, dtype=torch.int64, device=device) for size in sizes])


def forecast_weights(levels: int, updates: torch.Tensor, elapsed: torch.Tensor) -> torch.Tensor:
    """The forecast's weight of each ladder level (fp32): ``elapsed**k / k!`` for the first
    ``min(updates, levels)`` levels, 0 (not used) for the others."""
    k = torch.arange(levels, device=updates.device)
    factorials = torch.tensor([float(math.factorial(i)) for i in range(levels)], dtype=torch.float64,
                              device=updates.device)
    weights = (elapsed.pow(k.to(torch.float64)) / factorials).to(torch.float32)
    return torch.where(k < updates.clamp(max=levels), weights, 0.0)


def foca_forecast(history: torch.Tensor, anchors: torch.Tensor, seen: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``FocaHistory.forecast`` as a pure function: (the forecast value in fp32, the
    prediction it stores); the latest value seen while fewer than two were, else the BDF2
    step plus the Heun correction once two anchors exist."""
    latest, previous = history[LATEST].float(), history[PREVIOUS].float()
    predicted = 2.0 * latest - previous
    corrected = predicted + 0.5 * ((history[FULL].float() - history[FULL_PREV].float()) - (latest - previous))
    predicted = torch.where(anchors == 2, corrected, predicted)
    return torch.where(seen < 2, latest, predicted), predicted


def foca_after_forecast(history: torch.Tensor, predicted: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """A FoCa history after a cached step: the prediction becomes the latest value seen (once
    two were seen; before that nothing changes)."""
    advanced = torch.stack([history[FULL], history[FULL_PREV], predicted.to(history.dtype), history[LATEST]])
    return torch.where(seen >= 2, advanced, history)


def foca_push(history: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """A FoCa history after a computed step: ``value`` becomes the latest anchor and the latest
    value seen."""
    value = value.to(history.dtype)
    return torch.stack([value, history[FULL], value, history[LATEST]])


def decide(settings: torch.Tensor, mask: torch.Tensor, step: torch.Tensor, cached_steps: torch.Tensor,
           continuous: torch.Tensor, accumulated: torch.Tensor, has_residual: torch.Tensor,
           diff: torch.Tensor, threshold: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``policy.should_cache`` on tensors (shape [1], bool); ``threshold`` replaces the
    configured one (DBPrune's dynamic threshold)."""
    def setting(slot: int) -> torch.Tensor:
        return settings[slot:slot + 1]

    threshold = setting(THRESHOLD) if threshold is None else threshold
    warm = (step < setting(MAX_WARMUP).to(torch.int64)) & (step % setting(WARMUP_INTERVAL).to(torch.int64) == 0)
    allowed = ~warm & torch.isfinite(diff) & (mask.index_select(0, step.clamp(max=mask.shape[0] - 1)) == 0)
    max_cached, max_continuous = setting(MAX_CACHED).to(torch.int64), setting(MAX_CONTINUOUS).to(torch.int64)
    dynamic = (allowed & ~((max_cached >= 0) & (cached_steps >= max_cached))
               & ~((max_continuous >= 0) & (continuous >= max_continuous))
               & (accumulated < setting(MAX_ACCUMULATED)) & (threshold > 0) & (diff < threshold))
    return torch.where(setting(STATIC_MASK) > 0, allowed, dynamic) & has_residual


def log_step(state: dict[str, torch.Tensor], stream: torch.Tensor, step: torch.Tensor, cache: torch.Tensor,
             has_diff: torch.Tensor, diff: torch.Tensor, pruned: Optional[torch.Tensor] = None) -> None:
    """Record this step in its stream's row of the log, in place (steps past ``LOG_CAPACITY``
    are not logged); ``pruned``: DBPrune's flag per prunable block. Rows are never cleared: a
    generation writes step ``s`` before any reader looks at it, and readers look only at the
    steps of the latest generation."""
    index = stream * LOG_CAPACITY + step.clamp(max=LOG_CAPACITY - 1)
    logging = step < LOG_CAPACITY
    entries = [("log_cached", cache.to(torch.int64)), ("log_has_diff", has_diff.to(torch.int64)),
               ("log_diff", torch.where(has_diff, diff, 0.0))]
    if pruned is not None:
        entries.append(("log_pruned", pruned))
    for name, value in entries:
        log = state[name]
        flat = log.view(log.shape[0] * log.shape[1], -1)
        entry = torch.where(logging, value.to(log.dtype).reshape(1, -1), flat.index_select(0, index))
        flat.index_copy_(0, index, entry)


def generation_progress(state: dict[str, torch.Tensor]) -> tuple[int, dict[str, int]]:
    """(generations started, steps so far per stream name) from the step's state."""
    counters = state["counters"].tolist()
    steps = state["stream_counters"][:, STEP].tolist()
    return counters[GENERATIONS], {name: steps[stream_row_of(counters, name)] for name, row in STREAM_INDEX.items()
                                   if row < len(steps)}


def stream_row_of(counters: list[int], stream: str) -> int:
    """The row of ``stream`` in the per-stream state, given the ``counters`` state read as a
    list (the first call's row holds "uncond" once the streams were swapped)."""
    return STREAM_INDEX[stream] ^ counters[SWAP]


def logged_summary(state: dict[str, torch.Tensor], stream: str = "default") -> CacheSummary:
    """The latest generation's statistics of ``stream`` from the step's state (``LOGGED_STATE``
    by name, and ``PRUNE_LOGGED_STATE`` for DBPrune)."""
    check_stream_name(stream)
    counters = state["counters"].tolist()
    row = stream_row_of(counters, stream)
    num_blocks = counters[NUM_BLOCKS]
    stats = GenerationStats(num_blocks, num_blocks - counters[SKIPPED_BLOCKS])
    if row >= state["stream_counters"].shape[0]:
        return stats.summary()
    steps, total_cached = state["stream_counters"][row, STEP:CACHED + 1].tolist()
    cached, has_diff, diffs = (state[name][row].tolist() for name in LOGGED_STATE[2:])
    pruned = state["log_pruned"][row].tolist() if "log_pruned" in state else None
    index = state["pruned_index"].tolist() if pruned is not None else []
    for step in range(min(steps, LOG_CAPACITY)):
        blocks = [index[k] for k, flag in enumerate(pruned[step]) if flag] if pruned is not None else None
        stats.record(step, bool(cached[step]), diffs[step] if has_diff[step] else None, pruned_blocks=blocks)
    stats.steps = steps
    stats.unlisted_cached_steps = total_cached - len(stats.cached_steps)
    return stats.summary()


def timestep_level(timestep: torch.Tensor) -> torch.Tensor:
    """The timestep input as one number (fp64, shape [1]) for boundary and CFG detection: the sum
    over all its elements, so per-frame or per-token timesteps (one frame pinned at 0, the others
    falling) compare as a whole."""
    return timestep.reshape(-1).to(torch.float64).sum().reshape(1)


def input_sum(value: torch.Tensor) -> torch.Tensor:
    """A call input's fingerprint: the fp64 sum of its elements (of the real and imaginary parts
    of a complex input: rotary embeddings), 0-d."""
    parts = torch.view_as_real(value) if value.is_complex() else value
    return parts.reshape(-1).to(torch.float64).sum()


def _fingerprint(inputs: Sequence[torch.Tensor], size: int, device: torch.device) -> torch.Tensor:
    """One ``input_sum`` per call input, padded to ``size`` (a repeated call repeats it exactly)."""
    sums = [input_sum(t).reshape(1) for t in inputs]
    padding = [torch.zeros(size - len(sums), dtype=torch.float64, device=device)] if size > len(sums) else []
    return torch.cat(sums + padding)
