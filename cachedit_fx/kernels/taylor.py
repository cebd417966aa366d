"""``cachedit_fx::taylor_update_`` and ``cachedit_fx::taylor_forecast``: the calibrator's
difference ladder (semantics in ``reference.py``).

``ladder`` is one contiguous tensor of shape ``(max_levels, *value.shape)``; it is updated in
place and must be contiguous (it is owned state). Value, base and out may have any layout:
non-contiguous value/base are copied once; ``out`` is written through a contiguous staging
tensor when it is not contiguous.
"""

from __future__ import annotations

from typing import Optional

import torch

from cachedit_fx.kernels.l1_rel_diff import _check_operands
from cachedit_fx.kernels.reference import taylor_forecast_reference, taylor_update_reference_
from cachedit_fx.kernels.triton_support import runs_triton


@torch.library.custom_op("cachedit_fx::taylor_update_", mutates_args=("ladder",))
def taylor_update_op(
    ladder: torch.Tensor, value: torch.Tensor, base: Optional[torch.Tensor], gap: float, levels: int
) -> None:
    _check_ladder(ladder, value, levels, "levels")
    _check_operands("taylor_update_", value, base)
    if levels > 1 and gap <= 0:
        raise ValueError(f"taylor_update_: gap must be > 0 when differences are taken, got {gap}")
    if runs_triton(ladder):
        from cachedit_fx.kernels.taylor_triton import taylor_update_triton

        taylor_update_triton(ladder, value.contiguous(), None if base is None else base.contiguous(), gap, levels)
    else:
        taylor_update_reference_(ladder, value, base, gap, levels)


@taylor_update_op.register_fake
def _(ladder: torch.Tensor, value: torch.Tensor, base: Optional[torch.Tensor], gap: float, levels: int) -> None:
    _check_ladder(ladder, value, levels, "levels")
    return None


@torch.library.custom_op("cachedit_fx::taylor_forecast", mutates_args=("out",))
def taylor_forecast_op(
    ladder: torch.Tensor, base: Optional[torch.Tensor], elapsed: float, order: int, out: torch.Tensor
) -> None:
    _check_ladder(ladder, out, order + 1, "order + 1")
    _check_operands("taylor_forecast", out, base)
    if runs_triton(ladder):
        from cachedit_fx.kernels.taylor_triton import taylor_forecast_triton

        target = out if out.is_contiguous() else torch.empty_like(out, memory_format=torch.contiguous_format)
        taylor_forecast_triton(ladder, None if base is None else base.contiguous(), elapsed, order, target)
        if target is not out:
            out.copy_(target)
    else:
        taylor_forecast_reference(ladder, base, elapsed, order, out)


@taylor_forecast_op.register_fake
def _(ladder: torch.Tensor, base: Optional[torch.Tensor], elapsed: float, order: int, out: torch.Tensor) -> None:
    _check_ladder(ladder, out, order + 1, "order + 1")
    return None


def taylor_update_(
    ladder: torch.Tensor, value: torch.Tensor, gap: float = 1.0, levels: Optional[int] = None,
    base: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Push ``value - base`` into the ladder: ``D0`` and the next ``levels - 1`` differences
    (all of them by default) at step gap ``gap``. Returns ``ladder``."""
    taylor_update_op(ladder, value, base, float(gap), ladder.shape[0] if levels is None else int(levels))
    return ladder


def taylor_forecast(
    ladder: torch.Tensor, elapsed: float, order: int, base: Optional[torch.Tensor] = None,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """``base + sum_{k<=order} ladder[k] * elapsed**k / k!`` in one pass (into ``out`` if given)."""
    if out is None:
        out = torch.empty(ladder.shape[1:], dtype=ladder.dtype if base is None else base.dtype, device=ladder.device)
    taylor_forecast_op(ladder, base, float(elapsed), int(order), out)
    return out


def _check_ladder(ladder: torch.Tensor, value: torch.Tensor, levels: int, what: str) -> None:
    if ladder.dim() < 1 or tuple(ladder.shape[1:]) != tuple(value.shape):
        raise ValueError(
            f"ladder shape {tuple(ladder.shape)} must be (levels, *{tuple(value.shape)})"
        )
    if not ladder.is_contiguous():
        raise ValueError("ladder must be contiguous (it is updated in place)")
    if not 1 <= levels <= ladder.shape[0]:
        raise ValueError(f"{what} = {levels} must be in [1, {ladder.shape[0]}] for a ladder of {ladder.shape[0]} levels")
    if not ladder.is_floating_point():
        raise ValueError(f"ladder must be floating point, got {ladder.dtype}")
