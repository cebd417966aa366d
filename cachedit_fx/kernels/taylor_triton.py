"""Triton kernels of the difference-ladder update and the Taylor forecast.

Both are single elementwise passes: the update reads the value (and base) and the
``levels - 1`` old differences it needs and writes ``levels`` entries; the forecast reads
``order + 1`` entries (and base) and writes one tensor. Arithmetic is fp32; stores take the
destination dtype.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from cachedit_fx.kernels.triton_support import block_size, on_device_of


@triton.jit
def ladder_update_kernel(
    ladder_ptr, value_ptr, base_ptr, n, levels, inv_gap,
    HAS_BASE: tl.constexpr, MAX_LEVELS: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    level = tl.zeros_like(offs) + n  # the ladder's level stride, in int64 (k * n overflows int32)
    new = tl.load(value_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BASE:
        new = new - tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    written = tl.full([BLOCK], levels, tl.int32)
    for k in tl.static_range(MAX_LEVELS):
        ptr = ladder_ptr + k * level + offs
        if k + 1 < MAX_LEVELS:
            old = tl.load(ptr, mask=mask & (written > k + 1), other=0.0).to(tl.float32)
        tl.store(ptr, new.to(ladder_ptr.dtype.element_ty), mask=mask & (written > k))
        if k + 1 < MAX_LEVELS:
            new = (new - old) * inv_gap


@triton.jit
def forecast_kernel(
    ladder_ptr, base_ptr, out_ptr, n, elapsed,
    HAS_BASE: tl.constexpr, ORDER: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    level = tl.zeros_like(offs) + n  # the ladder's level stride, in int64 (k * n overflows int32)
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_BASE:
        acc = tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    coeff = 1.0
    for k in tl.static_range(ORDER + 1):
        acc += coeff * tl.load(ladder_ptr + k * level + offs, mask=mask, other=0.0).to(tl.float32)
        coeff = coeff * elapsed / (k + 1)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


GPU_BLOCK = 1024


def taylor_update_triton(
    ladder: torch.Tensor, value: torch.Tensor, base: Optional[torch.Tensor], gap: float, levels: int
) -> None:
    n = value.numel()
    if n == 0:
        return
    block = block_size(GPU_BLOCK)
    with on_device_of(ladder):
        ladder_update_kernel[(-(-n // block),)](
            ladder, value, base if base is not None else value, n, levels, 1.0 / gap if levels > 1 else 0.0,
            HAS_BASE=base is not None, MAX_LEVELS=ladder.shape[0], BLOCK=block, num_warps=4,
        )


def taylor_forecast_triton(
    ladder: torch.Tensor, base: Optional[torch.Tensor], elapsed: float, order: int, out: torch.Tensor
) -> None:
    n = out.numel()
    if n == 0:
        return
    block = block_size(GPU_BLOCK)
    with on_device_of(out):
        forecast_kernel[(-(-n // block),)](
            ladder, base if base is not None else out, out, n, float(elapsed),
            HAS_BASE=base is not None, ORDER=order, BLOCK=block, num_warps=4,
        )
