"""The trained digits DiT: a FLUX-architecture transformer (2 double-stream + 6 single-stream
blocks, 0.7M parameters) on 2x2 patches of 16x16 digits (64 image tokens of 4 channels), with
a learned class conditioner standing in for the text encoder (2 "text" tokens and a pooled
vector per class). Its weights ship in ``weights/digits_flux.safetensors``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from benchmarks.models import FLUX_BLOCKS, BenchModel
from benchmarks.quality.data import IMAGE_SIZE, NUM_CLASSES

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MODEL_WEIGHTS = WEIGHTS_DIR / "digits_flux.safetensors"
CLASSIFIER_WEIGHTS = WEIGHTS_DIR / "digits_classifier.safetensors"

PATCH = 2
GRID = IMAGE_SIZE // PATCH
TEXT_TOKENS = 2
JOINT_DIM = 32
POOLED_DIM = 32
TRANSFORMER_CONFIG: dict[str, Any] = dict(
    patch_size=1, in_channels=PATCH * PATCH, num_layers=2, num_single_layers=6, attention_head_dim=32,
    num_attention_heads=2, joint_attention_dim=JOINT_DIM, pooled_projection_dim=POOLED_DIM, guidance_embeds=False,
    axes_dims_rope=[8, 12, 12])


class ClassConditioner(nn.Module):
    """Class label -> (encoder_hidden_states ``(B, 2, 32)``, pooled_projections ``(B, 32)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(NUM_CLASSES, TEXT_TOKENS * JOINT_DIM)
        self.pooled = nn.Embedding(NUM_CLASSES, POOLED_DIM)

    def forward(self, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.tokens(labels).view(-1, TEXT_TOKENS, JOINT_DIM), self.pooled(labels)


def patchify(images: torch.Tensor) -> torch.Tensor:
    """``(B, 1, 16, 16)`` -> ``(B, 64, 4)``: token ``row * 8 + col``, channel ``dy * 2 + dx``."""
    batch = images.shape[0]
    patches = images.view(batch, GRID, PATCH, GRID, PATCH).permute(0, 1, 3, 2, 4)
    return patches.reshape(batch, GRID * GRID, PATCH * PATCH)


def unpatchify(tokens: torch.Tensor) -> torch.Tensor:
    """Inverse of ``patchify``."""
    batch = tokens.shape[0]
    patches = tokens.reshape(batch, GRID, GRID, PATCH, PATCH).permute(0, 1, 3, 2, 4)
    return patches.reshape(batch, 1, IMAGE_SIZE, IMAGE_SIZE)


def position_ids(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(img_ids ``(64, 3)`` holding (0, row, col), txt_ids ``(2, 3)`` zeros)."""
    ids = torch.zeros(GRID, GRID, 3)
    ids[..., 1] = torch.arange(GRID)[:, None]
    ids[..., 2] = torch.arange(GRID)[None, :]
    return ids.reshape(-1, 3).to(device, dtype), torch.zeros(TEXT_TOKENS, 3, device=device, dtype=dtype)


def new_transformer(seed: int) -> nn.Module:
    import diffusers

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return diffusers.FluxTransformer2DModel(**TRANSFORMER_CONFIG)


def load_trained(path: Path = MODEL_WEIGHTS) -> tuple[nn.Module, ClassConditioner]:
    """The shipped transformer and conditioner, in eval mode with gradients off."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    transformer, conditioner = new_transformer(0), ClassConditioner()
    transformer.load_state_dict({k[len("transformer."):]: v for k, v in state.items() if k.startswith("transformer.")})
    conditioner.load_state_dict({k[len("conditioner."):]: v for k, v in state.items() if k.startswith("conditioner.")})
    return transformer.eval().requires_grad_(False), conditioner.eval().requires_grad_(False)


def balanced_labels(per_class: int) -> torch.Tensor:
    """``per_class`` of each digit, in order 0..9, 0..9, ..."""
    return torch.arange(NUM_CLASSES).repeat(per_class)


def digits_bench_model(per_class: int, noise_seed: int = 1, weights: Optional[Path] = None) -> BenchModel:
    """The trained model as a ``BenchModel``: ``build`` loads the shipped weights, and a
    generation samples ``per_class`` images of every digit from seeded noise."""
    path = weights or MODEL_WEIGHTS
    labels = balanced_labels(per_class)
    with torch.no_grad():
        tokens, pooled = load_trained(path)[1](labels)

    def make_inputs(gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        noise = torch.randn(len(labels), GRID * GRID, PATCH * PATCH, generator=torch.Generator().manual_seed(noise_seed))
        img_ids, txt_ids = position_ids(device, dtype)
        return dict(hidden_states=noise.to(device, dtype), encoder_hidden_states=tokens.to(device, dtype),
                    pooled_projections=pooled.to(device, dtype), img_ids=img_ids, txt_ids=txt_ids)

    def build(device: torch.device, dtype: torch.dtype) -> nn.Module:
        return load_trained(path)[0].to(device, dtype)

    return BenchModel(f"digits-flux ({len(labels)} samples)", "FluxTransformer2DModel", TRANSFORMER_CONFIG,
                      FLUX_BLOCKS, make_inputs, builder=build)
