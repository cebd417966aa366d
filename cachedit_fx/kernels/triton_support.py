"""When the Triton kernels run, and how they are JIT-compiled.

Triton decides at ``triton.jit`` time whether a kernel is interpreted (``TRITON_INTERPRET=1``).
Kernels here are wrapped lazily, on first launch, once per interpreter setting, so setting
the variable in a running process (tests) takes effect without re-importing the package.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Callable

import torch

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def runs_triton(t: torch.Tensor) -> bool:
    """Triton handles ``t``: a CUDA tensor, or any CPU tensor under ``TRITON_INTERPRET=1``."""
    if not TRITON_INSTALLED:
        return False
    if t.device.type == "cuda":
        return True
    return t.device.type == "cpu" and interpreting()


class LazyKernel:
    """A Triton kernel body, JIT-wrapped on first use under the current interpreter setting."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def __getitem__(self, grid: Any) -> Callable[..., Any]:
        return _jit(self.fn, interpreting())[grid]


@functools.lru_cache(maxsize=None)
def _jit(fn: Callable[..., Any], interpret: bool) -> Any:
    import triton

    return triton.jit(fn)


def block_size(gpu_block: int) -> int:
    """Elements per program: ``gpu_block`` on a GPU; the interpreter runs each program as
    numpy ops, so it gets one large block instead."""
    return 1 << 16 if interpreting() else gpu_block
