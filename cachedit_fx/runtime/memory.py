"""What the cache keeps alive per stream, against the activations it carries.

``held_bytes``: the stored values of one stream row of the step's state (DBCache: the Fn
residual and each carried value's ladder; DBPrune: every prunable block's input and residuals);
``carried_bytes``: one copy of the values the cached region hands on (the middle's outputs, or
for DBPrune the largest block's). Counters, settings and the step log are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cachedit_fx.runtime.dbcache_step import StepLayout, generation_progress, stream_row_of
from cachedit_fx.runtime.state import ModelCacheState


@dataclass(frozen=True)
class StreamMemory:
    stream: str
    held_bytes: int
    carried_bytes: int

    @property
    def ratio(self) -> float:
        """Held over carried: at most (calibrator order + 2) for DBCache and TaylorSeer."""
        return self.held_bytes / self.carried_bytes if self.carried_bytes else 0.0


def stream_memory(state: ModelCacheState) -> list[StreamMemory]:
    """One entry per stream that ran a step of the current generation (none before the first
    call). A state that may hold separate-CFG streams keeps a second row whether it is used or
    not (``enable_separate_cfg=False`` holds one)."""
    if state.step_tensors is None:
        return []
    layout, tensors = state.step_tensors.layout, state.step_tensors.tensors
    counters = tensors["counters"].tolist()
    _, progress = generation_progress(tensors)
    return [StreamMemory(name, sum(tensors[stored][stream_row_of(counters, name)].nbytes
                                   for stored in _stored_names(layout)), _carried_bytes(layout))
            for name, done in progress.items() if done > 0]


def _stored_names(layout: StepLayout) -> list[str]:
    if layout.blocks:
        stored = []
        for block in layout.blocks:
            input_name, _counters, _accumulated, *rest = block.names()
            stored += [input_name, *rest[:len(block.values)]]
        return stored
    return ["prev_fn", *(f"residual_{k}" for k in range(len(layout.values)))]


def _carried_bytes(layout: StepLayout) -> int:
    return max(sum(math.prod(v.shape) * v.dtype.itemsize for v in values)
               for values in ([b.values for b in layout.blocks] or [layout.values]))
