"""Image DiTs with latents ``(B, C, H, W)``: SD3-, PixArt-, Sana-, Lumina-like models."""

from __future__ import annotations

from typing import Any

import torch

from cachedit_fx.example_inputs.common import GRID_PATCHES, TEXT_TOKENS, ClassSpec, integer_timesteps, randn


def _sd3(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W); the position embedding is cropped from ``pos_embed_max_size``."""
    side = GRID_PATCHES * cfg["patch_size"]
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        pooled_projections=randn(gen, batch, cfg["pooled_projection_dim"]),
        timestep=integer_timesteps(gen, batch),
    )


def _pixart(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W); text width is ``caption_channels`` when a caption projection exists.
    Resolution / aspect-ratio conditions are given when the model uses them (``None`` config means
    ``sample_size == 128``, as in the class)."""
    side = GRID_PATCHES * cfg["patch_size"]
    inner_dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    text_width = cfg["caption_channels"] or cfg["cross_attention_dim"] or inner_dim
    uses_conditions = cfg["use_additional_conditions"]
    if uses_conditions is None:
        uses_conditions = cfg["sample_size"] == 128
    if uses_conditions:
        added_cond_kwargs = {"resolution": torch.tensor([[float(side), float(side)]]).repeat(batch, 1),
                             "aspect_ratio": torch.ones(batch, 1)}
    else:
        added_cond_kwargs = {"resolution": None, "aspect_ratio": None}
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        timestep=integer_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, text_width),
        added_cond_kwargs=added_cond_kwargs,
    )


SPECS: dict[str, ClassSpec] = {
    "SD3Transformer2DModel": ClassSpec(_sd3, dict(
        sample_size=32, patch_size=1, in_channels=4, num_layers=4, attention_head_dim=8, num_attention_heads=4,
        caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64, out_channels=4,
        pos_embed_max_size=96, dual_attention_layers=(), qk_norm=None)),
    "PixArtTransformer2DModel": ClassSpec(_pixart, dict(
        sample_size=8, num_layers=4, patch_size=2, attention_head_dim=2, num_attention_heads=2, in_channels=4,
        cross_attention_dim=8, out_channels=8, attention_bias=True, activation_fn="gelu-approximate",
        num_embeds_ada_norm=8, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        use_additional_conditions=False, caption_channels=None)),
}
