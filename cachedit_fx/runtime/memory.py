"""What the cache keeps alive per stream, against the activations it carries.

``held_bytes``: every distinct storage a stream's state owns (the Fn residual, the middle's
histories, DBPrune's per-block inputs and residuals); ``carried_bytes``: one copy of the values
the cached region hands on (the middle's outputs, or for DBPrune the largest block's). Both
count storages, not views, so a buffer is counted once however it is referenced.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from cachedit_fx.runtime.histories import FocaHistory, RegionHistory, TaylorLadder
from cachedit_fx.runtime.stream_state import StreamState


@dataclass(frozen=True)
class StreamMemory:
    stream: str
    held_bytes: int
    carried_bytes: int

    @property
    def ratio(self) -> float:
        """Held over carried: at most (calibrator order + 2) for DBCache and TaylorSeer."""
        return self.held_bytes / self.carried_bytes if self.carried_bytes else 0.0


def stream_memory(stream: StreamState) -> StreamMemory:
    storages: dict[int, int] = {}
    for tensor in _held_tensors(stream):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    carried = max((_carried(region) for region in _regions(stream)), default=0)
    return StreamMemory(stream.name, sum(storages.values()), carried)


def _regions(stream: StreamState) -> list[RegionHistory]:
    """The middle's history and every pruned block's."""
    return [stream.middle] + [block.residuals for block in stream.blocks.values()]


def _held_tensors(stream: StreamState) -> Iterator[torch.Tensor]:
    compared = [stream.fn_residual] + [block.input for block in stream.blocks.values()]
    for value in compared:
        if value.buffer is not None:
            yield value.buffer
    for region in _regions(stream):
        for history in region.values or ():
            yield from _history_tensors(history)


def _history_tensors(history: "TaylorLadder | FocaHistory") -> Iterator[torch.Tensor]:
    if isinstance(history, TaylorLadder):
        yield history.ladder
    else:
        yield from (history.full, history.full_prev, history.k, history.km1)


def _carried(region: Optional[RegionHistory]) -> int:
    if region is None or not region.values:
        return 0
    return sum(h.like.numel() * h.like.element_size() for h in region.values)
