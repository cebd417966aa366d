"""``cachedit_fx::taylor_push`` and ``cachedit_fx::taylor_forecast``: the difference ladder of
the TaylorSeer forecast (semantics in ``reference.py``), pure custom ops the step calls inside
the compiled program with ``cache_kernels="triton"``.

``ladder`` is ``(levels, *value.shape)``; ``gap`` (fp32), ``levels`` (int64) and ``weights``
(fp32, one per level) are tensors on the ladder's device, read by the kernel, never by the
host. Non-contiguous operands are copied once.
"""

from __future__ import annotations

from typing import Optional

import torch

from cachedit_fx.kernels.l1_rel_diff import _check_operands
from cachedit_fx.kernels.reference import taylor_forecast_reference, taylor_push_reference
from cachedit_fx.kernels.triton_support import runs_triton


@torch.library.custom_op("cachedit_fx::taylor_push", mutates_args=())
def taylor_push_op(ladder: torch.Tensor, value: torch.Tensor, base: Optional[torch.Tensor], gap: torch.Tensor,
                   levels: torch.Tensor) -> torch.Tensor:
    _check_ladder("taylor_push", ladder, value, gap=(gap, 1), levels=(levels, 1))
    _check_operands("taylor_push", value, base)
    if runs_triton(ladder):
        from cachedit_fx.kernels.taylor_triton import taylor_push_triton

        return taylor_push_triton(*(_contiguous(t) for t in (ladder, value, base, gap, levels)))
    return taylor_push_reference(ladder, value, base, gap, levels)


@taylor_push_op.register_fake
def _(ladder: torch.Tensor, value: torch.Tensor, base: Optional[torch.Tensor], gap: torch.Tensor,
      levels: torch.Tensor) -> torch.Tensor:
    _check_ladder("taylor_push", ladder, value, gap=(gap, 1), levels=(levels, 1))
    return torch.empty_like(ladder, memory_format=torch.contiguous_format)


@torch.library.custom_op("cachedit_fx::taylor_forecast", mutates_args=())
def taylor_forecast_op(ladder: torch.Tensor, base: Optional[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    _check_ladder("taylor_forecast", ladder, base, weights=(weights, ladder.shape[0]))
    if runs_triton(ladder):
        from cachedit_fx.kernels.taylor_triton import taylor_forecast_triton

        return taylor_forecast_triton(*(_contiguous(t) for t in (ladder, base, weights)))
    return taylor_forecast_reference(ladder, base, weights).contiguous()


@taylor_forecast_op.register_fake
def _(ladder: torch.Tensor, base: Optional[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    _check_ladder("taylor_forecast", ladder, base, weights=(weights, ladder.shape[0]))
    return ladder.new_empty(ladder.shape[1:])


def _contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()


def _check_ladder(name: str, ladder: torch.Tensor, value: Optional[torch.Tensor],
                  **per_level: tuple[torch.Tensor, int]) -> None:
    """``ValueError`` naming ``name`` unless ``ladder`` is a floating ``(levels, *value.shape)``
    tensor and each ``per_level`` tensor (its name -> (tensor, element count)) holds that many
    elements on the ladder's device (the kernels read exactly that many)."""
    if not ladder.is_floating_point():
        raise ValueError(f"{name}: ladder must be floating point, got {ladder.dtype}")
    if ladder.dim() < 1 or (value is not None and tuple(ladder.shape[1:]) != tuple(value.shape)):
        shape = "(levels, ...)" if value is None else f"(levels, *{tuple(value.shape)})"
        raise ValueError(f"{name}: ladder shape {tuple(ladder.shape)} must be {shape}")
    for what, (tensor, count) in per_level.items():
        if tensor.device != ladder.device:
            raise ValueError(f"{name}: devices differ {ladder.device} vs {what} on {tensor.device}")
        if tensor.numel() != count:
            raise ValueError(f"{name}: {what} must hold {count} element(s), got {tensor.numel()}")
