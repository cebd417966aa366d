"""Wan-like video DiTs: latents ``(B, C, F, H, W)``, text (and optional image) conditions
attended through cross-attention in every block."""

from __future__ import annotations

from typing import Any

import torch

from cachedit_fx.example_inputs.common import (
    FRAME_PATCHES, GRID_PATCHES, IMAGE_EMBED_TOKENS, TEXT_TOKENS, ClassSpec, integer_timesteps, randn,
)

WAN_TEXT_TOKENS_WITH_IMAGE = 512
"""Text length the Wan image-to-video attention processor hard-codes."""


def _wan(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W). With ``added_kv_proj_dim`` (image-to-video) the text length is the
    512 the attention processor hard-codes, and CLIP image tokens go in ``encoder_hidden_states_image``
    (two images per sample, stacked on the batch axis, when ``pos_embed_seq_len`` is set)."""
    p_t, p_h, p_w = cfg["patch_size"]
    text_tokens = WAN_TEXT_TOKENS_WITH_IMAGE if cfg["added_kv_proj_dim"] is not None else TEXT_TOKENS
    inputs = dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], FRAME_PATCHES * p_t, GRID_PATCHES * p_h,
                            GRID_PATCHES * p_w),
        encoder_hidden_states=randn(gen, batch, text_tokens, cfg["text_dim"]),
        timestep=integer_timesteps(gen, batch),
    )
    if cfg["image_dim"] is not None:
        if cfg["pos_embed_seq_len"] is not None:
            image_shape = (2 * batch, cfg["pos_embed_seq_len"] // 2, cfg["image_dim"])
        else:
            image_shape = (batch, IMAGE_EMBED_TOKENS, cfg["image_dim"])
        inputs["encoder_hidden_states_image"] = randn(gen, *image_shape)
    return inputs


SPECS: dict[str, ClassSpec] = {
    "WanTransformer3DModel": ClassSpec(_wan, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32)),
}
