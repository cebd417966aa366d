"""Cache state of one compiled model: its streams, the generation they share, the decision.

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
  * a residual is applied only within the generation and stream that computed it: any
    boundary (step count reached, timestep rising, a stream's input shapes/dtypes changed,
    ``refresh``) invalidates every stream's buffers and resets the counters before the step
    is decided;
  * separate-CFG streams (``runtime/cfg.py``) share the generation and the step index and
    nothing else;
  * exactly one host sync per call (timestep and diff sums read together, with the inputs'
    fingerprint at a generation's first two calls);
  * a generation whose second call repeats its first call's inputs exactly starts again there:
    the first was a warm-up call, not a step.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch

from cachedit_fx.config import DBCacheConfig, DBPruneConfig, check_refresh_changes
from cachedit_fx.runtime.arithmetic import CacheArithmetic
from cachedit_fx.runtime.cfg import DEFAULT_STREAM, UNCOND_STREAM, CfgSchedule
from cachedit_fx.runtime.policy import StepCounters, should_cache
from cachedit_fx.runtime.stats import CacheSummary, GenerationStats
from cachedit_fx.runtime.histories import Calibrator, value_plans
from cachedit_fx.runtime.dbcache_step import (
    StepLayout, apply_config, generation_progress, input_sum, logged_summary, request_reset, timestep_level)
from cachedit_fx.runtime.stream_state import ChainShape, StreamState, log_generation_done

log = logging.getLogger("cachedit_fx")
Run = TypeVar("Run", bound=Callable[..., tuple[torch.Tensor, ...]])


def _restart_on_error(run: Run) -> Run:
    """A call that raises part-way (after its step was resolved) restarts the generation, so no
    half-updated counter, CFG schedule or buffer is used by the next call."""

    @functools.wraps(run)
    def guarded(self: "ModelCacheState", *args: Any, **kwargs: Any) -> tuple[torch.Tensor, ...]:
        try:
            return run(self, *args, **kwargs)
        except BaseException:
            self._new_generation("a call raised")
            raise

    return guarded  # type: ignore[return-value]

__all__ = ["ChainShape", "DEFAULT_STREAM", "ModelCacheState", "StreamState"]


class ModelCacheState:
    """Configuration and streams shared by every graph compiled for one model."""

    def __init__(
        self, config: DBCacheConfig, chain: ChainShape, arithmetic: CacheArithmetic,
        calibrator: Optional[Calibrator] = None, context: str = "default",
    ) -> None:
        self.context = context
        """The name of the cache context (``runtime/contexts.py``) this state belongs to."""
        self.calls_made = 0
        """Calls of the compiled model made in this context."""
        self.compiled_config = config
        self.chain = chain
        self.arithmetic = arithmetic
        self.calibrator = calibrator
        self.streams: dict[str, StreamState] = {}
        self.sums_all_reduce: Optional[Callable[[torch.Tensor], object]] = None
        """Applied in place to the fp32 diff sums before they are read (parallel runs)."""
        self.head_sums_stream: Optional[str] = None
        """The stream whose ``prev`` buffer the head piece compared against this call."""
        self.pruning: Optional[_CallPruning] = None
        self.in_graph: Optional[_InGraphState] = None
        """The state tensors of the in-graph step, shared by every graph of the model that makes
        the same layout: the generation follows the context, not the graph Dynamo picks."""
        self.decided_in_graph = False
        """Whether the latest call was decided in the graph (else on the host)."""
        self.in_graph_logged: dict[str, int] = {}
        """Stream -> the generation whose done line was written."""
        self._set_config(config)

    def _set_config(self, config: DBCacheConfig) -> None:
        self.config = config
        self.cfg = CfgSchedule(config.enable_separate_cfg, config.cfg_compute_first)
        self.last_timestep: Optional[float] = None
        self.first_decision: Optional[bool] = None
        self.first_inputs: Optional[tuple] = None
        """(shapes and dtypes, input fingerprint) of the generation's first call."""

    def stream(self, name: str = DEFAULT_STREAM) -> StreamState:
        if name not in self.streams:
            self.streams[name] = StreamState(name, self.chain)
        return self.streams[name]

    def upcoming_stream(self) -> StreamState:
        """The stream the next call will use (before CFG is detected: the first one)."""
        return self.stream(self.cfg.stream_name())

    def rebind(
        self, config: DBCacheConfig, chain: ChainShape, arithmetic: CacheArithmetic,
        calibrator: Optional[Calibrator] = None,
    ) -> None:
        """A new graph of the same model was compiled (e.g. after a shape change). Options
        given to ``refresh`` survive it unless the compile options, calibrator or chain
        changed, in which case everything starts afresh."""
        self.arithmetic = arithmetic
        if config != self.compiled_config or chain != self.chain or calibrator != self.calibrator:
            self.compiled_config = config
            self.chain = chain
            self.calibrator = calibrator
            self.streams.clear()
            self.in_graph = None
            self.in_graph_logged.clear()
            self.decided_in_graph = False
            self._set_config(config)

    def refresh(self, num_inference_steps: Optional[int] = None, **config_changes) -> None:
        """Start a new generation on every stream, optionally with new settings."""
        changes = dict(config_changes)
        if num_inference_steps is not None:
            changes["num_inference_steps"] = num_inference_steps
        if changes:
            self._set_config(check_refresh_changes(changes, self.config))
            if self.in_graph is not None:
                apply_config(self.in_graph.tensors, self.config)
        self._new_generation("refresh")

    def _new_generation(self, reason: str) -> None:
        for stream in self.streams.values():
            stream.start_generation(reason, self.context)
        if self.in_graph is not None:
            request_reset(self.in_graph.tensors)
        self.cfg.restart()
        self.last_timestep = None
        self.first_decision = None
        self.first_inputs = None

    def in_graph_tensors(self, layout: StepLayout, device: torch.device) -> list[torch.Tensor]:
        """The state tensors of the in-graph step for a call whose graph makes ``layout``
        (sized for the call), in ``layout.names`` order. Every graph of the model with an equal
        layout on ``device`` continues one generation (a recompile for grad mode, a concurrent
        cold start); other sizes, dtypes or device start a new one on fresh tensors, as the host
        decision does when input shapes change, and so does a call after a host-decided one
        (its generation lives in the host streams)."""
        entry = self.in_graph
        if entry is None or (entry.layout is not layout and entry.layout != layout) or entry.device != device:
            with torch.inference_mode(False):
                entry = self.in_graph = _InGraphState(layout, device, layout.new_state(self.config, device))
            self.in_graph_logged.clear()
        elif not self.decided_in_graph and self.streams:
            request_reset(entry.tensors)
        self.decided_in_graph = True
        return entry.ordered

    def in_graph_call_done(self) -> None:
        """After an in-graph call: the generation-done INFO line of each stream that has
        reached ``num_inference_steps``, once per generation, as the host decision writes it.
        Reads the small counters (a sync on a GPU) only while INFO logging is on; boundaries
        other than the step count write no line."""
        steps = self.config.num_inference_steps
        if steps is None or not log.isEnabledFor(logging.INFO):
            return
        tensors = self.in_graph.tensors
        generation, progress = generation_progress(tensors)
        for stream, done in progress.items():
            if done >= steps and self.in_graph_logged.get(stream) != generation:
                self.in_graph_logged[stream] = generation
                log_generation_done(logged_summary(tensors, stream), "num_inference_steps reached", self.context,
                                    stream)

    def restart_in_graph(self) -> None:
        """An in-graph call raised: the next call starts a new generation."""
        request_reset(self.in_graph.tensors)

    def summary(self, stream: str = DEFAULT_STREAM) -> CacheSummary:
        if self.decided_in_graph:
            return logged_summary(self.in_graph.tensors, stream)
        stats = self.streams[stream].latest_stats() if stream in self.streams else None
        if stats is None:
            stats = GenerationStats(self.chain.num_blocks, self.chain.Fn + self.chain.Bn)
        return stats.summary()

    @torch.no_grad()
    @_restart_on_error
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
        latent_index: int = -1,
    ) -> tuple[torch.Tensor, ...]:
        """DBCache: run the cached blocks or apply their stored residuals (module invariants).

        ``head_sums``: the diff sums computed inside the head piece against the Fn residual
        of ``head_sums_stream`` (``cache_kernels="inductor-fused"``); ``hidden_position``: the
        index among ``partners`` (and the outputs) of the hidden stream."""
        config = self.config

        def speculative_sums(stream: StreamState) -> Optional[torch.Tensor]:
            if not stream.fn_residual.matches(hidden_cut):
                return None
            if head_sums is not None and self.head_sums_stream == stream.name:
                return head_sums
            return self.arithmetic.diff_sums(stream.fn_residual.buffer, hidden_cut, hidden_entry)

        stream, diff, position, follows_first = self._resolve_call(signature_inputs, timestep, speculative_sums,
                                                                   latent_index)
        prev = stream.fn_residual.buffer_for(hidden_cut.shape, hidden_cut.dtype, hidden_cut.device)
        if follows_first:
            cache = bool(self.first_decision) and stream.middle.updates > 0
        else:
            counters = StepCounters(stream.step, stream.cached_steps, stream.continuous_cached_steps,
                                    stream.accumulated_diff, stream.middle.updates > 0)
            cache, _ = should_cache(config, counters, diff)
        if position == 0:
            self.first_decision = cache
        plans = value_plans(self.calibrator, len(partners), hidden_position)
        outputs = self._region_outputs(stream.middle, cache, middle, middle_inputs, partners, plans, stream.step)
        if cache:
            stream.cached_steps += 1
            stream.continuous_cached_steps += 1
            if diff is not None and diff > 0:
                stream.accumulated_diff += diff
        else:
            torch.sub(hidden_cut, hidden_entry, out=prev)
            stream.fn_residual.valid = True
            stream.continuous_cached_steps = 0
        stream.stats.record(stream.step, cache, diff)
        self._end_step(stream)
        return outputs

    @torch.no_grad()
    @_restart_on_error
    def run_block(
        self,
        index: int,
        block: Callable[..., Sequence[torch.Tensor]],
        block_inputs: Sequence[torch.Tensor],
        partners: Sequence[torch.Tensor],
        hidden_input: torch.Tensor,
        first: bool,
        last: bool,
        signature_inputs: Sequence[torch.Tensor] = (),
        timestep: Optional[torch.Tensor] = None,
        latent_index: int = -1,
    ) -> tuple[torch.Tensor, ...]:
        """DBPrune: run prunable block ``index`` or apply its stored residuals. The first
        prunable block of a call resolves the call (boundaries, stream) in the call's one
        sync; every later block reads its own diff (one sync per block)."""
        config = self.config

        def block_sums(stream: StreamState) -> Optional[torch.Tensor]:
            compared = stream.block(index).input
            if not compared.matches(hidden_input):
                return None
            return self.arithmetic.diff_sums(compared.buffer, hidden_input, None)

        if first:
            stream, diff, _, _ = self._resolve_call(signature_inputs, timestep, block_sums, latent_index)
            self.pruning = _CallPruning(stream)
        else:
            stream = self.pruning.stream
            sums = self._reduced(block_sums(stream))
            diff = _relative(*sums.tolist()) if sums is not None else None
        state = stream.block(index)
        counters = StepCounters(stream.step, stream.cached_steps, state.continuous_pruned,
                                state.accumulated_diff, state.residuals.updates > 0)
        prune, _ = should_cache(config, counters, diff, threshold=self.pruning.threshold(config))
        self.pruning.record(index, diff, prune)
        plans = value_plans(None, len(partners), 0)
        outputs = self._region_outputs(state.residuals, prune, block, block_inputs, partners, plans, stream.step)
        if prune:
            state.continuous_pruned += 1
            if diff is not None and diff > 0:
                state.accumulated_diff += diff
        else:
            state.input.buffer_for(hidden_input.shape, hidden_input.dtype, hidden_input.device).copy_(hidden_input)
            state.input.valid = True
            state.continuous_pruned = 0
        if last:
            pruned = self.pruning.pruned
            stream.stats.record(stream.step, bool(pruned), self.pruning.first_diff, pruned_blocks=pruned)
            stream.cached_steps += bool(pruned)
            self._end_step(stream)
        return outputs

    def _end_step(self, stream: StreamState) -> None:
        stream.step += 1
        steps = self.config.num_inference_steps
        if steps is not None and stream.step >= steps:
            stream.log_generation("num_inference_steps reached", self.context)

    def _region_outputs(self, history, cache: bool, run, inputs, partners, plans, step: int):
        """A cached region's outputs: forecast from ``history``, or ``run`` it and remember."""
        if cache:
            return history.forecast(self.arithmetic, partners, step)
        outputs = tuple(run(*inputs))
        history.push(self.arithmetic, outputs, partners, plans, step)
        return outputs

    def _resolve_call(
        self, signature_inputs: Sequence[torch.Tensor], timestep: Optional[torch.Tensor],
        speculative_sums: Callable[[StreamState], Optional[torch.Tensor]], latent_index: int = -1,
    ) -> tuple[StreamState, Optional[float], int, bool]:
        """Start a call: the diff against the stream the call probably uses and the timestep
        are read in one sync, then generation boundaries and CFG detection are applied (a diff
        taken against the wrong stream or across a boundary is dropped). ``latent_index``: the
        position among ``signature_inputs`` of the latent (-1: unknown). Returns the stream,
        the diff, the call's position in its step and whether it follows the first call's
        decision."""
        signature = tuple((tuple(t.shape), t.dtype) for t in signature_inputs)
        if self.decided_in_graph:  # the generation so far lives in the in-graph state
            self.decided_in_graph = False
            self._new_generation("the decision moved from the graph to the host")
        stream = self.upcoming_stream()
        follows_first = self._follows_first_decision()
        sums = None if follows_first else self._reduced(speculative_sums(stream))
        fingerprint = input_fingerprint(signature_inputs) if self.cfg.calls < 2 and signature_inputs else None
        parts = [v for v in (sums, timestep_level(timestep) if timestep is not None else None, fingerprint)
                 if v is not None]
        host = torch.cat([v.to(torch.float64) for v in parts]).tolist() if parts else []
        diff = _relative(host[0], host[1]) if sums is not None else None
        t = host[2 if sums is not None else 0] if timestep is not None else None
        inputs = tuple(host[len(host) - len(fingerprint):]) if fingerprint is not None else None

        reason = self._boundary(stream, signature, t) or self._repeated(signature, inputs, t, latent_index)
        if reason is not None:
            self._new_generation(reason)
        elif self.cfg.detect(t):
            log.info("cachedit_fx: %s CFG calls detected", "separate" if self.cfg.separate else "no separate")
            if self.cfg.separate and self.config.cfg_compute_first:
                self._swap_cfg_streams()
            reason = self._steps_reached()
            if reason is not None:
                self._new_generation(reason)
        if self.upcoming_stream() is not stream or reason is not None:
            stream = self.upcoming_stream()
            diff = None
            follows_first = self._follows_first_decision()
        stream.signature = signature
        self.last_timestep = t
        if self.cfg.calls == 0:
            self.first_inputs = (signature, inputs)
        position = self.cfg.position()
        self.cfg.record_call(t)
        return stream, diff, position, follows_first

    def _reduced(self, sums: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        """``sums`` after the parallel all-reduce hook, if one is set."""
        if sums is not None and self.sums_all_reduce is not None:
            self.sums_all_reduce(sums)
        return sums

    def _swap_cfg_streams(self) -> None:
        """The first call turned out to be the unconditional one: its stream becomes
        ``uncond`` (the other, invalidated since the generation started, becomes ``default``)."""
        first = self.streams.pop(DEFAULT_STREAM)
        other = self.streams.pop(UNCOND_STREAM, None)
        first.name = UNCOND_STREAM
        self.streams[UNCOND_STREAM] = first
        if other is not None:
            other.name = DEFAULT_STREAM
            self.streams[DEFAULT_STREAM] = other

    def _follows_first_decision(self) -> bool:
        """The second CFG call of a step reuses the first call's decision
        (``cfg_diff_compute_separate=False``)."""
        return bool(self.cfg.separate) and not self.config.cfg_diff_compute_separate and self.cfg.position() == 1

    def _repeated(self, signature, inputs: Optional[tuple[float, ...]], t: Optional[float],
                  latent_index: int) -> Optional[str]:
        """The generation's first call was a warm-up call, not a step, so the generation starts
        again at its second call: when that call repeats the first call's inputs exactly (a CFG
        pair's inputs differ), or, unless separate CFG is forced on, repeats its timestep with
        another latent (a CFG pair repeats the latent)."""
        if self.cfg.calls != 1 or inputs is None or self.first_inputs is None:
            return None
        if self.first_inputs == (signature, inputs):
            return "a call repeated the previous call's inputs (a warm-up call)"
        first_signature, first_values = self.first_inputs
        if (latent_index >= 0 and first_values is not None and self.cfg.forced is not True and t is not None
                and t == self.cfg.first_timestep and first_signature == signature
                and first_values[latent_index] != inputs[latent_index]):
            return "the second call has the first call's timestep but another latent (the first was a warm-up call)"
        return None

    def _boundary(self, stream: StreamState, signature, t: Optional[float]) -> Optional[str]:
        if stream.signature is not None and signature != stream.signature:
            return "input shapes or dtypes changed"
        if t is not None and self.last_timestep is not None and t > self.last_timestep:
            return "timestep rose"
        return self._steps_reached()

    def _steps_reached(self) -> Optional[str]:
        steps = self.config.num_inference_steps
        if self.cfg.separate is None and self.cfg.calls == 1:
            return None  # decided after CFG detection
        if steps is not None and self.cfg.calls >= steps * self.cfg.calls_per_step():
            return "num_inference_steps reached"
        return None


class _InGraphState:
    """The in-graph step's state tensors of one context: by name, in ``layout.names`` order,
    the layout and device they were made for."""

    def __init__(self, layout: StepLayout, device: torch.device, tensors: dict[str, torch.Tensor]) -> None:
        self.layout = layout
        self.device = device
        self.tensors = tensors
        self.ordered = [tensors[name] for name in layout.names]


class _CallPruning:
    """Per-call DBPrune bookkeeping: block diffs so far (for the dynamic threshold) and the
    blocks pruned in this call."""

    def __init__(self, stream: StreamState) -> None:
        self.stream = stream
        self.diffs: list[float] = []
        self.pruned: list[int] = []
        self.first_diff: Optional[float] = None
        self.seen_first = False

    def record(self, index: int, diff: Optional[float], pruned: bool) -> None:
        if not self.seen_first:
            self.first_diff, self.seen_first = diff, True
        if diff is not None:
            self.diffs.append(diff)
        if pruned:
            self.pruned.append(index)

    def threshold(self, config: DBPruneConfig) -> float:
        """The static threshold, or the dynamic one (see ``DBPruneConfig``)."""
        base = config.residual_diff_threshold
        if not config.enable_dynamic_prune_threshold:
            return base
        positive = [d for d in self.diffs[:5] if d > 0]
        if not positive:
            return base
        relaxed = sum(positive) / len(positive) * config.dynamic_prune_threshold_relax_ratio
        ceiling = config.max_dynamic_prune_threshold
        ceiling = 2 * base if ceiling is None else ceiling
        return max(relaxed, base) if relaxed < ceiling else base


def input_fingerprint(inputs: Sequence[torch.Tensor]) -> torch.Tensor:
    """One ``input_sum`` per call input (read at a generation's first two calls only): equal
    fingerprints and shapes mean a repeated call."""
    return torch.stack([input_sum(t) for t in inputs])


def _relative(sum_diff: float, sum_prev: float) -> float:
    if sum_prev == 0.0:
        return 0.0 if sum_diff == 0.0 else float("inf")
    return sum_diff / sum_prev
