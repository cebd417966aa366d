"""Relative L1 difference sums."""

from __future__ import annotations

import torch


def l1_rel_diff(prev: torch.Tensor, cur: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(sum|prev - cur|, sum|prev|)`` as fp32 scalars on the inputs' device.

    ``prev`` and ``cur`` must have equal shapes; NaN/inf inputs propagate into the sums, so a
    caller comparing ``sum_diff / sum_prev`` against a threshold computes the step.
    """
    if prev.shape != cur.shape:
        raise ValueError(f"l1_rel_diff: shapes differ {tuple(prev.shape)} vs {tuple(cur.shape)}")
    diff = (prev.float() - cur.float()).abs().sum()
    base = prev.float().abs().sum()
    return diff, base
