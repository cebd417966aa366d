"""Allocation of owned state buffers.

Invariant: every buffer that outlives a call is allocated with inference mode off, so a
generation run under ``torch.inference_mode`` leaves buffers that a later call under
``torch.no_grad`` (or the other way round) can still write in place.
"""

from __future__ import annotations

from typing import Sequence

import torch


def owned_buffer(shape: Sequence[int], dtype: torch.dtype, device: torch.device, zeroed: bool = False) -> torch.Tensor:
    with torch.inference_mode(False):
        return (torch.zeros if zeroed else torch.empty)(tuple(shape), dtype=dtype, device=device)
