"""Triton kernels of the ladder push and the Taylor forecast.

Both are single elementwise passes: the push reads the value (and base) and every ladder
level and writes a new ladder; the forecast reads the levels (and base) and writes one
tensor. ``gap``, ``levels`` and the weights are loaded from device memory. Arithmetic is fp32;
stores take the ladder's dtype.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from cachedit_fx.kernels.triton_support import block_size, on_device_of


@triton.jit
def ladder_push_kernel(
    ladder_ptr, value_ptr, base_ptr, gap_ptr, levels_ptr, out_ptr, n,
    HAS_BASE: tl.constexpr, MAX_LEVELS: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    level = tl.zeros_like(offs) + n  # the ladder's level stride, in int64 (k * n overflows int32)
    gap = tl.load(gap_ptr).to(tl.float32)
    levels = tl.load(levels_ptr)
    new = tl.load(value_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_BASE:
        new = new - tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for k in tl.static_range(MAX_LEVELS):
        old = tl.load(ladder_ptr + k * level + offs, mask=mask, other=0.0).to(tl.float32)
        row = tl.where(levels > k, new, old)
        tl.store(out_ptr + k * level + offs, row.to(out_ptr.dtype.element_ty), mask=mask)
        new = (new - old) / gap


@triton.jit
def forecast_kernel(
    ladder_ptr, base_ptr, weights_ptr, out_ptr, n,
    HAS_BASE: tl.constexpr, MAX_LEVELS: tl.constexpr, BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    level = tl.zeros_like(offs) + n
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    if HAS_BASE:
        acc = tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    for k in tl.static_range(MAX_LEVELS):
        weight = tl.load(weights_ptr + k).to(tl.float32)
        term = acc + tl.load(ladder_ptr + k * level + offs, mask=mask, other=0.0).to(tl.float32) * weight
        acc = tl.where(weight != 0, term, acc)
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


GPU_BLOCK = 1024


def taylor_push_triton(ladder: torch.Tensor, value: torch.Tensor, base: Optional[torch.Tensor], gap: torch.Tensor,
                       levels: torch.Tensor) -> torch.Tensor:
    out = torch.empty_like(ladder)
    n = value.numel()
    if n:
        block = block_size(GPU_BLOCK)
        with on_device_of(ladder):
            ladder_push_kernel[(-(-n // block),)](
                ladder, value, value if base is None else base, gap, levels, out, n,
                HAS_BASE=base is not None, MAX_LEVELS=ladder.shape[0], BLOCK=block, num_warps=4)
    return out


def taylor_forecast_triton(ladder: torch.Tensor, base: Optional[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    out = ladder.new_empty(ladder.shape[1:])
    n = out.numel()
    if n:
        block = block_size(GPU_BLOCK)
        with on_device_of(ladder):
            forecast_kernel[(-(-n // block),)](
                ladder, out if base is None else base, weights, out, n,
                HAS_BASE=base is not None, MAX_LEVELS=ladder.shape[0], BLOCK=block, num_warps=4)
    return out
