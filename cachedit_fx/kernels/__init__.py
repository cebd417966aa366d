"""The step's arithmetic as torch custom ops (Triton on CUDA, torch fallback on CPU).

    l1_rel_diff(prev, cur, base=None)                -> (sum|prev-(cur-base)|, sum|prev|)
    taylor_push_op(ladder, value, base, gap, levels) -> the ladder after a computed step
    taylor_forecast_op(ladder, base, weights)        -> the forecast of a cached step

``step_kernels`` picks, for option ``cache_kernels``, these ops or their torch references.
"""

from typing import Callable, NamedTuple

import torch

from cachedit_fx.kernels.l1_rel_diff import l1_rel_diff, l1_rel_diff_op
from cachedit_fx.kernels.reference import l1_rel_diff_reference, taylor_forecast_reference, taylor_push_reference
from cachedit_fx.kernels.taylor import taylor_forecast_op, taylor_push_op
from cachedit_fx.kernels.triton_support import TRITON_INSTALLED, runs_triton


class StepKernels(NamedTuple):
    """What the step calls for its diff sums, ladder push and forecast (signatures of
    ``l1_rel_diff_reference``, ``taylor_push_reference``, ``taylor_forecast_reference``)."""

    diff_sums: Callable[..., torch.Tensor]
    ladder_push: Callable[..., torch.Tensor]
    forecast: Callable[..., torch.Tensor]


TORCH_KERNELS = StepKernels(l1_rel_diff_reference, taylor_push_reference, taylor_forecast_reference)
CUSTOM_OP_KERNELS = StepKernels(l1_rel_diff_op, taylor_push_op, taylor_forecast_op)


def step_kernels(cache_kernels: str) -> StepKernels:
    """The custom ops for "triton" (Triton on CUDA); else torch ops, which the compiler fuses
    with the program ("inductor-fused" by construction; "auto" keeps the fusion rather than
    call a kernel)."""
    return CUSTOM_OP_KERNELS if cache_kernels == "triton" else TORCH_KERNELS


__all__ = [
    "CUSTOM_OP_KERNELS",
    "StepKernels",
    "TORCH_KERNELS",
    "TRITON_INSTALLED",
    "l1_rel_diff",
    "l1_rel_diff_op",
    "l1_rel_diff_reference",
    "runs_triton",
    "step_kernels",
    "taylor_forecast_op",
    "taylor_forecast_reference",
    "taylor_push_op",
    "taylor_push_reference",
]
