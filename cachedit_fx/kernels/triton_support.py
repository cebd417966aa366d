"""When the Triton kernels run.

Triton runs on CUDA tensors, and on CPU tensors when ``TRITON_INTERPRET=1`` (its
interpreter; CI has no GPU). Triton reads that variable when it is first imported, so it must
be set before anything imports triton (``tests/conftest.py`` does this first thing).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from typing import ContextManager

import torch

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_runs_on(device: torch.device) -> bool:
    """Triton runs on ``device``: CUDA, or CPU under ``TRITON_INTERPRET=1``."""
    if not TRITON_INSTALLED:
        return False
    return device.type == "cuda" or (device.type == "cpu" and interpreting())


def runs_triton(t: torch.Tensor) -> bool:
    """Triton handles ``t`` (see ``triton_runs_on``)."""
    return triton_runs_on(t.device)


def block_size(gpu_block: int) -> int:
    """Elements per program: ``gpu_block`` on a GPU; the interpreter runs each program as
    numpy ops, so it gets one large block instead."""
    return 1 << 16 if interpreting() else gpu_block


def on_device_of(t: torch.Tensor) -> ContextManager[object]:
    """Triton launches on the current CUDA device: this makes it ``t``'s (a tensor on
    ``cuda:1`` while ``cuda:0`` is current would otherwise be read from the wrong device)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()
