"""Which stream a call belongs to: separate classifier-free-guidance (CFG) calls.

A pipeline that calls the transformer twice per step (conditional and unconditional) gets two
streams sharing the step index: ``"default"`` (the conditional call) and ``"uncond"``. With
``enable_separate_cfg=None`` it is detected at the generation's second call: the same timestep
as the first call means two calls per step. ``cfg_compute_first=True`` means the unconditional
call comes first in each step. Invariant: within a generation, call ``c`` of a CFG run is
position ``c % 2`` of step ``c // 2``.
"""

from __future__ import annotations

from typing import Optional

DEFAULT_STREAM = "default"
UNCOND_STREAM = "uncond"
STREAMS = (DEFAULT_STREAM, UNCOND_STREAM)


def check_stream_name(stream: object) -> None:
    """Raise ``ValueError`` unless ``stream`` names a stream ("default" or "uncond")."""
    if stream not in STREAMS:
        raise ValueError(f"unknown stream {stream!r}: the streams are {', '.join(map(repr, STREAMS))}")


class CfgSchedule:
    """Call counting and CFG detection for the current generation."""

    def __init__(self, enable_separate_cfg: Optional[bool], cfg_compute_first: bool) -> None:
        self.forced = enable_separate_cfg
        self.cfg_compute_first = cfg_compute_first
        self.restart()

    def restart(self) -> None:
        self.calls = 0
        self.separate: Optional[bool] = self.forced
        self.first_timestep: Optional[float] = None

    def position(self, call: Optional[int] = None) -> int:
        """0 for the first call of a step, 1 for the second (always 0 without CFG)."""
        call = self.calls if call is None else call
        return call % 2 if self.separate else 0

    def stream_name(self, call: Optional[int] = None) -> str:
        if not self.separate:
            return DEFAULT_STREAM
        second = self.position(call) == 1
        return UNCOND_STREAM if second != self.cfg_compute_first else DEFAULT_STREAM

    def calls_per_step(self) -> int:
        return 2 if self.separate else 1

    def detect(self, timestep: Optional[float]) -> bool:
        """At the second call of an undecided generation, decide from the timestep; returns
        True when the decision was made now."""
        if self.separate is not None or self.calls != 1:
            return False
        self.separate = timestep is not None and timestep == self.first_timestep
        return True

    def record_call(self, timestep: Optional[float]) -> None:
        if self.calls == 0:
            self.first_timestep = timestep
        self.calls += 1
