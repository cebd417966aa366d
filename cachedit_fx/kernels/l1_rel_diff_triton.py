"""Triton kernels of ``l1_rel_diff``: a deterministic two-stage reduction.

Stage 1: program ``p`` reduces ``BLOCKS_PER_PROGRAM`` consecutive blocks of ``BLOCK``
elements into two fp32 partial sums. Stage 2: one program adds the partials in index order.
The program count depends only on the element count, so a given input always reduces in
the same order: results are bitwise reproducible run to run.
"""

from typing import Optional

import torch
import triton
import triton.language as tl

from cachedit_fx.kernels.triton_support import block_size, on_device_of


@triton.jit
def partial_sums_kernel(
    prev_ptr, cur_ptr, base_ptr, partial_ptr, n, num_programs,
    HAS_BASE: tl.constexpr, BLOCK: tl.constexpr, BLOCKS_PER_PROGRAM: tl.constexpr,
):
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * (BLOCK * BLOCKS_PER_PROGRAM)
    acc_diff = tl.zeros([BLOCK], dtype=tl.float32)
    acc_prev = tl.zeros([BLOCK], dtype=tl.float32)
    for i in tl.static_range(BLOCKS_PER_PROGRAM):
        offs = start + i * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        prev = tl.load(prev_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        cur = tl.load(cur_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_BASE:
            cur = cur - tl.load(base_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        acc_diff += tl.abs(prev - cur)
        acc_prev += tl.abs(prev)
    tl.store(partial_ptr + pid, tl.sum(acc_diff, axis=0))
    tl.store(partial_ptr + num_programs + pid, tl.sum(acc_prev, axis=0))


@triton.jit
def final_sums_kernel(partial_ptr, out_ptr, num_programs, BLOCK: tl.constexpr):
    acc_diff = tl.zeros([BLOCK], dtype=tl.float32)
    acc_prev = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, num_programs, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < num_programs
        acc_diff += tl.load(partial_ptr + offs, mask=mask, other=0.0)
        acc_prev += tl.load(partial_ptr + num_programs + offs, mask=mask, other=0.0)
    tl.store(out_ptr, tl.sum(acc_diff, axis=0))
    tl.store(out_ptr + 1, tl.sum(acc_prev, axis=0))


# 2048 elements x 8 warps: 8 bf16 (one 16-byte load) per thread and block; 16 blocks a
# program once the tensor is large, so big activations launch a few thousand programs.
GPU_BLOCK = 2048
LARGE_TENSOR = 1 << 22


def l1_rel_diff_triton(prev: torch.Tensor, cur: torch.Tensor, base: Optional[torch.Tensor]) -> torch.Tensor:
    """Launch both stages on contiguous inputs of equal shape; returns fp32 ``[diff, prev]``."""
    n = prev.numel()
    out = torch.empty(2, dtype=torch.float32, device=prev.device)
    if n == 0:
        return out.zero_()
    block = block_size(GPU_BLOCK)
    blocks_per_program = 16 if n >= LARGE_TENSOR else 1
    num_programs = -(-n // (block * blocks_per_program))
    partials = torch.empty(2 * num_programs, dtype=torch.float32, device=prev.device)
    with on_device_of(prev):
        partial_sums_kernel[(num_programs,)](
            prev, cur, base if base is not None else prev, partials, n, num_programs,
            HAS_BASE=base is not None, BLOCK=block, BLOCKS_PER_PROGRAM=blocks_per_program, num_warps=8,
        )
        final_sums_kernel[(1,)](partials, out, num_programs, BLOCK=1024, num_warps=4)
    return out
