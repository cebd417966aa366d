"""Video DiTs outside the Wan family: CogVideoX-, HunyuanVideo-, LTX-, Mochi-like models."""

from __future__ import annotations

from typing import Any

import torch

from cachedit_fx.example_inputs.common import (
    FRAME_PATCHES, GRID_PATCHES, TEXT_TOKENS, ClassSpec, float_timesteps, integer_timesteps, randn,
)


def _cogvideox(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, F, C, H, W) and exactly ``max_text_seq_length`` text tokens (the joint position
    embedding is sized for it). Learned position embeddings pin H, W to the sample size; rotary
    configs get ``image_rotary_emb`` for the token grid, as the pipelines compute it."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed

    patch, patch_t = cfg["patch_size"], cfg["patch_size_t"] or 1
    if cfg["use_learned_positional_embeddings"]:
        height, width = cfg["sample_height"], cfg["sample_width"]
    else:
        height = width = GRID_PATCHES * patch
    frames = FRAME_PATCHES * patch_t
    inputs = dict(
        hidden_states=randn(gen, batch, frames, cfg["in_channels"], height, width),
        encoder_hidden_states=randn(gen, batch, cfg["max_text_seq_length"], cfg["text_embed_dim"]),
        timestep=integer_timesteps(gen, batch),
    )
    if cfg["ofs_embed_dim"]:
        inputs["ofs"] = torch.full((batch,), 2.0)
    if cfg["use_rotary_positional_embeddings"]:
        grid = (height // patch, width // patch)
        inputs["image_rotary_emb"] = get_3d_rotary_pos_embed(
            embed_dim=cfg["attention_head_dim"], crops_coords=((0, 0), grid), grid_size=grid,
            temporal_size=FRAME_PATCHES, use_real=True)
    return inputs


def _hunyuan_video(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W), an all-ones text mask, guidance scale 6 (x1000) when embedded."""
    patch, patch_t = cfg["patch_size"], cfg["patch_size_t"]
    inputs = dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], FRAME_PATCHES * patch_t, GRID_PATCHES * patch,
                            GRID_PATCHES * patch),
        timestep=float_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_embed_dim"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS),
        pooled_projections=randn(gen, batch, cfg["pooled_projection_dim"]),
    )
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.full((batch,), 6000.0)
    return inputs


SPECS: dict[str, ClassSpec] = {
    "CogVideoXTransformer3DModel": ClassSpec(_cogvideox, dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=8, num_layers=4, sample_width=8, sample_height=8, sample_frames=8, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8)),
    "HunyuanVideoTransformer3DModel": ClassSpec(_hunyuan_video, dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None)),
}
