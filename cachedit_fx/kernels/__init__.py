"""Per-step cache arithmetic as torch custom ops (Triton on CUDA, torch fallback on CPU).

    l1_rel_diff(prev, cur, base=None)           -> (sum|prev-(cur-base)|, sum|prev|)
    taylor_update_(ladder, value, gap, levels)  in-place difference-ladder update
    taylor_forecast(ladder, elapsed, order)     Taylor extrapolation in one pass
"""

from cachedit_fx.kernels.l1_rel_diff import l1_rel_diff, l1_rel_diff_op
from cachedit_fx.kernels.reference import (
    l1_rel_diff_reference,
    taylor_forecast_reference,
    taylor_update_reference_,
)
from cachedit_fx.kernels.taylor import taylor_forecast, taylor_forecast_op, taylor_update_, taylor_update_op
from cachedit_fx.kernels.triton_support import TRITON_INSTALLED, runs_triton

__all__ = [
    "TRITON_INSTALLED",
    "l1_rel_diff",
    "l1_rel_diff_op",
    "l1_rel_diff_reference",
    "runs_triton",
    "taylor_forecast",
    "taylor_forecast_op",
    "taylor_forecast_reference",
    "taylor_update_",
    "taylor_update_op",
    "taylor_update_reference_",
]
