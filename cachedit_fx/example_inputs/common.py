"""Shared pieces of the example-input builders: sizes, random draws, timestep conventions and
the ``ClassSpec`` each family module registers per diffusers class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch

GRID_PATCHES = 4
"""Latent grid side, in patches (4x4 image tokens)."""
FRAME_PATCHES = 2
"""Latent frames of video models, in temporal patches."""
TEXT_TOKENS = 8
"""Text tokens, unless the architecture fixes the text length."""
IMAGE_EMBED_TOKENS = 4
"""Image-encoder tokens (CLIP / SigLIP conditions)."""

InputsBuilder = Callable[[dict[str, Any], torch.Generator, int], dict[str, Any]]
"""``builder(resolved_config, generator, batch) -> forward kwargs`` (without ``return_dict``)."""


@dataclass(frozen=True)
class ClassSpec:
    """How to feed one diffusers transformer class.

    ``inputs`` builds forward kwargs from any config of the class; ``tiny_config`` is a small
    random-init configuration (a few blocks, widths of 16-64) that builds offline in well under
    a second; ``latent`` names the input a sampler moves from step to step and ``timestep`` the
    input that falls along a generation (None: the forward takes no timestep)."""

    inputs: InputsBuilder
    tiny_config: dict[str, Any]
    latent: str = "hidden_states"
    timestep: Optional[str] = "timestep"
    notes: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def latent_grid(patch_t: int, patch_h: int, patch_w: Optional[int] = None) -> tuple[int, int, int]:
    """(frames, height, width) of a video latent of ``FRAME_PATCHES`` x ``GRID_PATCHES`` x
    ``GRID_PATCHES`` patches of the given patch sizes."""
    return FRAME_PATCHES * patch_t, GRID_PATCHES * patch_h, GRID_PATCHES * (patch_h if patch_w is None else patch_w)


def randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def integer_timesteps(gen: torch.Generator, batch: int) -> torch.Tensor:
    """Integer-valued (long) timesteps in [0, 1000), one per sample."""
    return torch.randint(0, 1000, (batch,), generator=gen)


def float_timesteps(gen: torch.Generator, batch: int) -> torch.Tensor:
    """Integer-valued float timesteps in [0, 1000), one per sample."""
    return integer_timesteps(gen, batch).float()


def unit_timesteps(gen: torch.Generator, batch: int) -> torch.Tensor:
    """Float timesteps in [0, 1), one per sample (models that scale by 1000 internally)."""
    return torch.rand(batch, generator=gen)
