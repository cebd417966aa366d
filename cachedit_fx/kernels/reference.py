"""Plain-torch implementations of the cache arithmetic.

They define the semantics the Triton kernels must match, serve as the CPU fallback of the
custom ops, and are the ``cache_kernels="torch"`` choice of the runtime. All accumulate in
fp32 and store in the destination's dtype.

Difference ladder: ``ladder[k]`` holds the k-th divided difference ``Dk`` of a value over
the computed steps (``D0`` = the value itself). An update at gap ``w`` (steps since the
previous update) writes ``D0 = v`` and ``D(k+1) = (Dk_new - Dk_old) / w`` for the first
``levels`` entries; a forecast ``elapsed`` steps after the last update is
``base + sum_k Dk * elapsed**k / k!`` over ``k <= order``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch


def l1_rel_diff_reference(prev: torch.Tensor, cur: torch.Tensor, base: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[sum|prev - (cur - base)|, sum|prev|]`` as a fp32 tensor of shape (2,)."""
    prev32 = prev.float()
    cur32 = cur.float() if base is None else cur.float() - base.float()
    return torch.stack([(prev32 - cur32).abs().sum(), prev32.abs().sum()])


def taylor_update_reference_(
    ladder: torch.Tensor, value: torch.Tensor, base: Optional[torch.Tensor], gap: float, levels: int
) -> None:
    """Push ``value - base`` into the first ``levels`` entries of ``ladder`` (in place)."""
    new = value.float() if base is None else value.float() - base.float()
    for k in range(levels):
        old = ladder[k].to(torch.float32, copy=True) if k + 1 < levels else None
        ladder[k].copy_(new)
        if old is not None:
            new = (new - old) / gap


def taylor_forecast_reference(
    ladder: torch.Tensor, base: Optional[torch.Tensor], elapsed: float, order: int, out: torch.Tensor
) -> None:
    """Write ``base + sum_{k<=order} ladder[k] * elapsed**k / k!`` into ``out``."""
    acc = torch.zeros(out.shape, dtype=torch.float32, device=out.device) if base is None else base.float()
    for k in range(order + 1):
        acc = acc + ladder[k].float() * (elapsed**k / math.factorial(k))
    out.copy_(acc)
