"""Which implementation does the per-step cache arithmetic (option ``cache_kernels``).

    "auto"            "triton" where Triton runs on the model's device (CUDA, or CPU under
                      TRITON_INTERPRET=1), else "torch" (the ops would only add dispatch cost)
    "triton"          the ``cachedit_fx::`` custom ops: Triton on CUDA (and on CPU under
                      TRITON_INTERPRET=1), the torch reference elsewhere
    "torch"           the plain-torch reference functions, called directly
    "inductor-fused"  the diff sums are computed inside the compiled head piece (the
                      ``fuse_diff_into_head`` pass); ladder updates/forecasts use the ops
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from cachedit_fx.config import CACHE_KERNELS
from cachedit_fx.kernels import (
    l1_rel_diff_op,
    l1_rel_diff_reference,
    taylor_forecast_op,
    taylor_forecast_reference,
    taylor_update_op,
    taylor_update_reference_,
)
from cachedit_fx.kernels.triton_support import triton_runs_on

DiffSums = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor]], torch.Tensor]
LadderUpdate = Callable[[torch.Tensor, torch.Tensor, Optional[torch.Tensor], float, int], None]
Forecast = Callable[[torch.Tensor, Optional[torch.Tensor], float, int, torch.Tensor], None]


@dataclass(frozen=True)
class CacheArithmetic:
    """``diff_sums(prev, cur, base)`` -> fp32 ``[sum|prev-(cur-base)|, sum|prev|]``;
    ``ladder_update_(ladder, value, base, gap, levels)``;
    ``forecast(ladder, base, elapsed, order, out)``."""

    name: str
    diff_sums: DiffSums
    ladder_update_: LadderUpdate
    forecast: Forecast


def cache_arithmetic(name: str, device: Optional[torch.device] = None) -> CacheArithmetic:
    """The implementation called ``name`` (``device``: where the model runs, for "auto")."""
    if name == "auto":
        name = "triton" if device is not None and triton_runs_on(device) else "torch"
    if name == "torch":
        return CacheArithmetic(name, l1_rel_diff_reference, taylor_update_reference_, taylor_forecast_reference)
    if name in ("triton", "inductor-fused"):
        return CacheArithmetic(name, l1_rel_diff_op, taylor_update_op, taylor_forecast_op)
    raise ValueError(f"cache_kernels must be one of {CACHE_KERNELS}, got {name!r}")
