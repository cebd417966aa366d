"""``cachedit_fx::l1_rel_diff``: the two sums of the cache decision in one pass.

``l1_rel_diff(prev, cur)`` returns ``(sum|prev - cur|, sum|prev|)`` as fp32 0-d tensors on
the inputs' device; with ``base``, ``cur - base`` is compared instead (the Fn residual
``hF - x0`` without materialising it). Triton runs it on CUDA and on CPU under
``TRITON_INTERPRET=1``; elsewhere the torch reference does. NaN/inf inputs make the sums
NaN/inf, so a ratio test against a threshold fails and the step computes.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from cachedit_fx.kernels.reference import l1_rel_diff_reference
from cachedit_fx.kernels.triton_support import runs_triton


@torch.library.custom_op("cachedit_fx::l1_rel_diff", mutates_args=())
def l1_rel_diff_op(prev: torch.Tensor, cur: torch.Tensor, base: Optional[torch.Tensor]) -> torch.Tensor:
    _check_operands("l1_rel_diff", prev, cur, base)
    if runs_triton(prev):
        from cachedit_fx.kernels.l1_rel_diff_triton import l1_rel_diff_triton

        return l1_rel_diff_triton(prev.contiguous(), cur.contiguous(), None if base is None else base.contiguous())
    return l1_rel_diff_reference(prev, cur, base)


@l1_rel_diff_op.register_fake
def _(prev: torch.Tensor, cur: torch.Tensor, base: Optional[torch.Tensor]) -> torch.Tensor:
    _check_operands("l1_rel_diff", prev, cur, base)
    return prev.new_empty((2,), dtype=torch.float32)


def l1_rel_diff(
    prev: torch.Tensor,
    cur: torch.Tensor,
    base: Optional[torch.Tensor] = None,
    *,
    all_reduce: Optional[Callable[[torch.Tensor], object]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum|prev - (cur - base)|, sum|prev|)``; ``all_reduce`` (e.g. a SUM all-reduce over
    ranks) is applied in place to the stacked sums before they are split."""
    sums = l1_rel_diff_op(prev, cur, base)
    if all_reduce is not None:
        all_reduce(sums)
    return sums[0], sums[1]


def _check_operands(name: str, first: torch.Tensor, *others: Optional[torch.Tensor]) -> None:
    for other in others:
        if other is None:
            continue
        if other.shape != first.shape:
            raise ValueError(f"{name}: shapes differ {tuple(first.shape)} vs {tuple(other.shape)}")
        if other.device != first.device:
            raise ValueError(f"{name}: devices differ {first.device} vs {other.device}")
    for t in (first, *others):
        if t is not None and not t.is_floating_point():
            raise ValueError(f"{name}: expected floating-point tensors, got {t.dtype}")
