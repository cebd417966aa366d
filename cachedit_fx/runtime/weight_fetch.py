"""Offloaded weights fetched to the compute device: the counted custom op
``cachedit_fx::fetch_weight`` and the prefetch that runs one block ahead of it.

A fetched weight's group is the block (a ``ModuleList`` member) holding it. Per thread, the
fetches learn which group followed which; a group's first fetch copies the weights of the group
that followed it last time ahead (on CUDA on a side stream, overlapping the current block),
unless the group is a stop (``stop_prefetch_after``: a cache decision may skip its successor,
or it is the chain's last block: nothing is held between calls) or a CUDA graph records (it
replays its own copies).

Invariants: every copy is counted in ``fetched_bytes``, prefetched or not; a weight is copied
at most once per use; what is learned holds weights weakly (a deleted model frees them); no
weight of a block behind a cache decision is copied before the decision took it; a prefetched
copy is used by the fetch of the same stored tensor, or dropped (still counted) when the
thread moves to a group that was not predicted.
"""

from __future__ import annotations

import threading
import weakref
from typing import Iterable, NamedTuple, Optional

import torch

NO_GROUP = -1
"""The group of a fetched weight outside every block list."""


class _Copy(NamedTuple):
    group: int
    value: torch.Tensor
    ready: Optional[torch.cuda.Event]


class _Fetches(threading.local):
    """One thread's fetches: bytes copied, the current group, what it learned, copies ahead."""

    def __init__(self) -> None:
        self.bytes = 0
        self.ahead_bytes = 0
        self.group = NO_GROUP
        self.successor: dict[int, int] = {}
        self.members: dict[int, dict[tuple[int, torch.device], weakref.ref[torch.Tensor]]] = {}
        self.ahead: dict[tuple[int, torch.device], _Copy] = {}


_FETCHES = _Fetches()
_STOPS: set[int] = set()
_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def stop_prefetch_after(groups: Iterable[int]) -> None:
    """Groups past which nothing is copied ahead (module docstring)."""
    _STOPS.update(groups)


def fetched_bytes(reset: bool = False) -> int:
    """Weight bytes copied to the compute device by this thread since the last reset."""
    total = _FETCHES.bytes
    if reset:
        _FETCHES.bytes = 0
    return total


def prefetched_bytes(reset: bool = False) -> int:
    """The part of ``fetched_bytes`` copied ahead of use, since the last reset."""
    total = _FETCHES.ahead_bytes
    if reset:
        _FETCHES.ahead_bytes = 0
    return total


def _copy(stored: torch.Tensor, device: torch.device, group: int, ahead: bool) -> _Copy:
    """``stored`` copied to ``device`` (a copy even on its own device, so every fetch counts
    alike); ahead of use on CUDA, on a side stream with an event to wait for."""
    _FETCHES.bytes += stored.nbytes
    _FETCHES.ahead_bytes += stored.nbytes if ahead else 0
    if not (ahead and device.type == "cuda"):
        return _Copy(group, stored.to(device, copy=True, non_blocking=stored.is_pinned()), None)
    stream = _STREAMS.get(device) or _STREAMS.setdefault(device, torch.cuda.Stream(device))
    with torch.cuda.stream(stream):  # reads pinned host memory no kernel writes: no wait needed
        return _Copy(group, stored.to(device, copy=True, non_blocking=stored.is_pinned()), stream.record_event())


def _enter(group: int) -> None:
    """The thread moves to ``group``: learn the transition, drop copies made for another
    group, copy the predicted next group's weights ahead."""
    fetches = _FETCHES
    if fetches.group != NO_GROUP:
        fetches.successor[fetches.group] = group
    fetches.group = group
    following = fetches.successor.get(group)
    fetches.ahead = {k: c for k, c in fetches.ahead.items() if c.group == group}
    if following is None or following == group or group in _STOPS or _capturing():
        return
    for key, held in fetches.members.get(following, {}).items():
        stored = held()
        if stored is not None and key not in fetches.ahead:
            fetches.ahead[key] = _copy(stored, key[1], following, ahead=True)


def _capturing() -> bool:
    """A CUDA graph is being recorded (a copy made ahead on the side stream would not replay)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@torch.library.custom_op("cachedit_fx::fetch_weight", mutates_args=())
def fetch_weight(stored: torch.Tensor, device: torch.device, group: int) -> torch.Tensor:
    """``stored`` on ``device``: the copy made ahead for it, else a copy made now."""
    device = torch.device(device)
    key = (stored.data_ptr(), device)
    if group != NO_GROUP:
        if group != _FETCHES.group:
            _enter(group)
        _FETCHES.members.setdefault(group, {}).setdefault(key, weakref.ref(stored))
    made = _FETCHES.ahead.pop(key, None)
    if made is None or (made.ready is not None and _capturing()):
        return _copy(stored, device, group, ahead=False).value
    if made.ready is not None:
        current = torch.cuda.current_stream(device)
        current.wait_event(made.ready)
        made.value.record_stream(current)
    return made.value


@fetch_weight.register_fake
def _(stored: torch.Tensor, device: torch.device, group: int) -> torch.Tensor:
    return torch.empty_like(stored, device=device)
