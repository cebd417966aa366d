"""Plain-torch implementations of the cache arithmetic.

They define the semantics the Triton kernels must match, serve as the CPU fallback of the
custom ops, and are what the step runs unless ``cache_kernels="triton"`` (the compiler fuses
them into the program). All are pure, accumulate in fp32 and store in the ladder's dtype.

Difference ladder: ``ladder[k]`` holds the k-th divided difference ``Dk`` of a value over
the computed steps (``D0`` = the value itself). A push at gap ``w`` (steps since the previous
push) writes ``D0 = v`` and ``D(k+1) = (Dk_new - Dk_old) / w`` into the first ``levels``
entries; a forecast is ``base + sum_k Dk * weights[k]`` (TaylorSeer: ``elapsed**k / k!``) over
the levels of nonzero weight. ``gap``, ``levels`` and ``weights`` are tensors, so the
arithmetic is traced into the step without a host read.
"""

from __future__ import annotations

from typing import Optional

import torch


def l1_rel_diff_reference(prev: torch.Tensor, cur: torch.Tensor, base: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[sum|prev - (cur - base)|, sum|prev|]`` as a fp32 tensor of shape (2,)."""
    prev32 = prev.float()
    cur32 = cur.float() if base is None else cur.float() - base.float()
    return torch.stack([(prev32 - cur32).abs().sum(), prev32.abs().sum()])


def taylor_push_reference(ladder: torch.Tensor, value: torch.Tensor, base: Optional[torch.Tensor],
                          gap: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """``ladder`` after ``value - base`` is pushed into its first ``levels`` entries (the
    others kept); ``gap``: fp32, ``levels``: int64, one element each."""
    new = value.float() if base is None else value.float() - base.float()
    rows = []
    for k in range(ladder.shape[0]):
        old = ladder[k].float()
        rows.append(torch.where(levels > k, new, old).to(ladder.dtype))
        new = (new - old) / gap
    return torch.stack(rows)


def taylor_forecast_reference(ladder: torch.Tensor, base: Optional[torch.Tensor],
                              weights: torch.Tensor) -> torch.Tensor:
    """``base + sum_k ladder[k] * weights[k]`` over the levels whose fp32 weight is nonzero (a
    level of weight 0 is skipped, never multiplied: it may hold a stale value)."""
    acc = torch.zeros(ladder.shape[1:], dtype=torch.float32, device=ladder.device) if base is None else base.float()
    for k in range(ladder.shape[0]):
        acc = torch.where(weights[k] != 0, acc + ladder[k].float() * weights[k], acc)
    return acc.to(ladder.dtype)
