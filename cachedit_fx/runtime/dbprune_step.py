"""The DBPrune step as tensor code: one ``torch.cond`` per prunable block, each on its own diff.

Each prunable block of the program is replaced by a ``PrunedBlockStep`` (``passes/
insert_prune_steps.py``). The first one of a call starts it (``start_call``: boundaries, CFG
streams, as DBCache does), the call's progress (``PruneCall``) flows from block to block as
graph values, and the last one finishes it (step counters, the per-step log, ``finish_call``).
Semantics are cache-dit's DBPrune: every rule is DBCache's (``decide``,
``CachedBranch``, ``ComputeBranch``, the ladder push with one-level ladders), applied per block
with the block's own counters (pruned in a row, accumulated diff, a residual written) and the
call's step counters (a step that pruned any block counts as cached); the diff compares the
block's hidden input with the one it saw at its last computed step. With
``enable_dynamic_prune_threshold`` a block's threshold comes from the diffs of the blocks
before it in the call (``dynamic_threshold``).

Invariants: as ``runtime/dbcache_step.py``; a block's state is read only when its counters say
a computed step of this generation wrote it (a boundary clears every block's counters); the
call's step counters change only at the last block, so every block of a call sees the same
step, cached-step count and stream.
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Sequence

import torch

from cachedit_fx.kernels import TORCH_KERNELS, StepKernels
from cachedit_fx.runtime.cond_operands import CondOperands
from cachedit_fx.runtime.dbcache_step import (
    CACHED, DYNAMIC_THRESHOLD, MAX_DYNAMIC, RELAX, STEP, THRESHOLD, CachedBranch, CallStart,
    ComputeBranch, StepLayout, data_sizes, decide, finish_call, forecast_weights, log_step, relative_diff,
    start_call, unflattened, stream_row, with_stream_row, write_stream_row)

DYNAMIC_DIFFS = 5
"""The dynamic threshold averages the positive ones among a call's first five block diffs."""


class PruneCall(NamedTuple):
    """A call's progress through its prunable blocks: where it stands (``CallStart``), its
    stream's step and cached steps, the first ``DYNAMIC_DIFFS`` diffs taken and their count, the
    first block's diff and whether it had one, and one pruned flag per prunable block."""

    start: CallStart
    step: torch.Tensor
    cached_steps: torch.Tensor
    diffs: torch.Tensor
    num_diffs: torch.Tensor
    first_diff: torch.Tensor
    has_first_diff: torch.Tensor
    pruned: torch.Tensor


class PrunedBlockStep(torch.nn.Module):
    """``forward(state, call, hidden_input, partners, block_inputs)`` returns the block's
    outputs (computed by ``block`` or its inputs plus the stored residuals) and, unless it is
    the last prunable block, the ``PruneCall`` for the next one. ``call`` is that of the block
    before, or for the first block ``(timestep, fingerprint_inputs, reset)`` to start the call;
    ``position``: this block's rank among the prunable blocks."""

    def __init__(self, block: torch.nn.Module, layout: StepLayout, position: int, sums_group: Optional[str] = None,
                 kernels: StepKernels = TORCH_KERNELS) -> None:
        super().__init__()
        self.region = block
        """What the compute branch runs: the block piece (``compile_regions`` may replace it)."""
        self.layout = layout
        self.position = position
        self.sums_group = sums_group
        self.kernels = kernels

    @property
    def first(self) -> bool:
        return self.position == 0

    @property
    def last(self) -> bool:
        return self.position == len(self.layout.blocks) - 1

    def forward(self, state: Sequence[torch.Tensor], call, hidden_input: torch.Tensor,
                partners: Sequence[torch.Tensor], block_inputs: Sequence[torch.Tensor]):
        named = dict(zip(self.layout.names, state))
        if self.first:
            call = self._start(named, *call, hidden_input.device)
        start = call.start
        settings = named["settings"]
        layout = self.layout.blocks[self.position]
        input_name, counters_name, accumulated_name, *residual_names = layout.names()
        residual_names = residual_names[:len(layout.values)]
        block_counters = named[counters_name] * start.kept
        block_floats = torch.where(start.boundary, 0.0, named[accumulated_name])
        mine = stream_row(block_counters, start.stream)
        continuous, has_residual = mine[0:1], mine[1:2] > 0
        sizes = data_sizes((layout.input, *layout.values), (hidden_input, *partners), hidden_input.device)
        if sizes is not None:  # another size than the stored values': none of them is read
            stored_sizes = stream_row(named[layout.sizes_name], start.stream)
            has_residual = has_residual & (stored_sizes == sizes).all().reshape(1)
        accumulated = stream_row(block_floats, start.stream)[0:1]
        previous = layout.input.fit(stream_row(named[input_name], start.stream), hidden_input)
        ladders = [plan.fit(stream_row(named[name], start.stream), partner, lead=1)
                   for name, plan, partner in zip(residual_names, layout.values, partners)]

        diff = relative_diff(self.kernels.diff_sums(previous, hidden_input, None), self.sums_group)
        threshold = dynamic_threshold(settings, call.diffs, call.num_diffs)
        prune = decide(settings, named["mask"], call.step, call.cached_steps, continuous, accumulated, has_residual,
                       diff, threshold)

        weights = (forecast_weights(1, has_residual.to(torch.int64), torch.zeros_like(diff)),) * len(ladders)
        branch_arguments = (*partners, *ladders, *weights)
        operands = CondOperands((*branch_arguments, *block_inputs))
        flat = tuple(v.flat_in_branch for v in layout.values)
        outputs = unflattened(torch.ops.higher_order.cond(
            prune.reshape(()), CachedBranch((True,) * len(ladders), operands, self.kernels.forecast, flat),
            ComputeBranch(self.region, len(branch_arguments), operands, flat), tuple(operands.operands)), partners)

        one, gap = torch.ones_like(call.step), torch.ones(1, dtype=torch.float32, device=diff.device)
        for name, plan, out, partner, ladder in zip(residual_names, layout.values, outputs, partners, ladders):
            pushed = self.kernels.ladder_push(ladder, out, partner, gap, one)
            write_stream_row(named[name], start.stream, plan.padded(torch.where(prune, ladder, pushed), 1))
        compared = torch.where(prune, previous, hidden_input)
        write_stream_row(named[input_name], start.stream, layout.input.padded(compared))
        if sizes is not None:
            write_stream_row(named[layout.sizes_name], start.stream, sizes)
        pruned = prune.to(torch.int64)
        named[counters_name].copy_(with_stream_row(block_counters, start.stream, torch.cat([
            (continuous + pruned) * pruned, (has_residual | ~prune).to(torch.int64)])))
        positive = has_residual & torch.isfinite(diff) & (diff > 0)
        named[accumulated_name].copy_(with_stream_row(block_floats, start.stream, torch.cat([
            accumulated + torch.where(prune & positive, diff, 0.0), torch.zeros_like(accumulated)])))

        slot = call.num_diffs.clamp(max=DYNAMIC_DIFFS - 1)
        taken = has_residual & (call.num_diffs < DYNAMIC_DIFFS)
        call = call._replace(
            diffs=call.diffs.index_copy(0, slot, torch.where(taken, diff, call.diffs.index_select(0, slot))),
            num_diffs=call.num_diffs + has_residual.to(torch.int64),
            first_diff=diff if self.first else call.first_diff,
            has_first_diff=has_residual if self.first else call.has_first_diff,
            pruned=torch.cat([call.pruned[:self.position], pruned, call.pruned[self.position + 1:]]))
        if not self.last:
            return (*outputs, call)
        self._finish(named, call)
        return tuple(outputs)

    def _start(self, named: dict[str, torch.Tensor], timestep: Optional[torch.Tensor],
               fingerprint_inputs: Sequence[torch.Tensor], reset: Optional[torch.Tensor],
               device: torch.device) -> PruneCall:
        start = start_call(self.layout, named, timestep, fingerprint_inputs, reset, device)
        mine = stream_row(named["stream_counters"] * start.kept, start.stream)
        zero = torch.zeros(1, dtype=torch.float64, device=device)
        return PruneCall(start, mine[STEP:STEP + 1], mine[CACHED:CACHED + 1],
                         torch.zeros(DYNAMIC_DIFFS, dtype=torch.float64, device=device),
                         torch.zeros(1, dtype=torch.int64, device=device), zero, torch.zeros_like(zero, dtype=torch.bool),
                         torch.zeros(len(self.layout.blocks), dtype=torch.int64, device=device))

    def _finish(self, named: dict[str, torch.Tensor], call: PruneCall) -> None:
        """The call's step: counted as cached when any block was pruned, logged with the first
        block's diff and the pruned blocks."""
        start = call.start
        any_pruned = call.pruned.amax().reshape(1) > 0
        stream_counters = named["stream_counters"] * start.kept
        row = stream_row(stream_counters, start.stream)
        named["stream_counters"].copy_(with_stream_row(stream_counters, start.stream, torch.cat([
            call.step + 1, call.cached_steps + any_pruned.to(torch.int64), row[CACHED + 1:]])))
        log_step(named, start.stream, call.step, any_pruned, call.has_first_diff, call.first_diff,
                 call.pruned)
        finish_call(named, start, any_pruned.to(torch.int64))


def dynamic_threshold(settings: torch.Tensor, diffs: torch.Tensor, num_diffs: torch.Tensor) -> torch.Tensor:
    """The threshold of a block (fp64, [1]): the configured one, or with the dynamic threshold on
    and a positive diff among the call's first ``DYNAMIC_DIFFS`` block diffs so far, their mean
    times the relax ratio when that is below the ceiling (the configured ``max``, or twice the
    threshold), never below the configured threshold."""
    base = settings[THRESHOLD:THRESHOLD + 1]
    taken = torch.arange(DYNAMIC_DIFFS, device=diffs.device) < num_diffs
    positive = taken & (diffs > 0)
    count = positive.sum().reshape(1)
    mean = torch.where(positive, diffs, 0.0).sum().reshape(1) / count.clamp(min=1)
    relaxed = mean * settings[RELAX:RELAX + 1]
    ceiling = settings[MAX_DYNAMIC:MAX_DYNAMIC + 1]
    ceiling = torch.where(torch.isnan(ceiling), 2 * base, ceiling)
    on = (settings[DYNAMIC_THRESHOLD:DYNAMIC_THRESHOLD + 1] > 0) & (count > 0) & (relaxed < ceiling)
    return torch.where(on, torch.maximum(relaxed, base), base)
