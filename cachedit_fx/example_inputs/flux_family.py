"""FLUX-like image DiTs: packed latents ``(B, h*w, C)`` with positional ids or image shapes,
text tokens beside them (double-stream then single-stream blocks, or MMDiT blocks)."""

from __future__ import annotations

from typing import Any

import torch

from cachedit_fx.example_inputs.common import GRID_PATCHES, TEXT_TOKENS, ClassSpec, randn, unit_timesteps


def _image_ids() -> torch.Tensor:
    """(0, row, col) ids of the ``GRID_PATCHES x GRID_PATCHES`` image tokens."""
    rows, cols = torch.meshgrid(torch.arange(GRID_PATCHES), torch.arange(GRID_PATCHES), indexing="ij")
    return torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()


def _flux(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels); ids are (0, row, col) for image and 0 for text tokens."""
    inputs = dict(
        hidden_states=randn(gen, batch, GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        pooled_projections=randn(gen, batch, cfg["pooled_projection_dim"]),
        timestep=unit_timesteps(gen, batch),
        img_ids=_image_ids(),
        txt_ids=torch.zeros(TEXT_TOKENS, 3),
    )
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs


def _qwen_image(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels) with ``img_shapes`` in patch units, one frame.

    ``guidance`` is never passed: the class accepts ``guidance_embeds`` but has no guidance embedder."""
    inputs = dict(
        hidden_states=randn(gen, batch, GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        encoder_hidden_states_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        timestep=unit_timesteps(gen, batch),
        img_shapes=[[(1, GRID_PATCHES, GRID_PATCHES)]] * batch,
    )
    if cfg["use_additional_t_cond"]:
        inputs["additional_t_cond"] = torch.zeros(batch, dtype=torch.long)
    return inputs


SPECS: dict[str, ClassSpec] = {
    "FluxTransformer2DModel": ClassSpec(_flux, dict(
        patch_size=1, in_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])),
    "QwenImageTransformer2DModel": ClassSpec(_qwen_image, dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=4,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4))),
}
