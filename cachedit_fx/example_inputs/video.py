"""Video DiTs outside the Wan family: CogVideoX- (ConsisID), HunyuanVideo- (1.5, Framepack), LTX- (LTX-2),
Mochi-, Allegro-, Latte- and EasyAnimate-like models."""

from __future__ import annotations

from typing import Any

import torch

from cachedit_fx.example_inputs.common import (
    latent_grid,
    FRAME_PATCHES, GRID_PATCHES, IMAGE_EMBED_TOKENS, TEXT_TOKENS, ClassSpec, float_timesteps, integer_timesteps,
    randn,
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


def _consisid(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """CogVideoX inputs (latents (B, F, C, H, W), where C = in_channels holds the noise and the image
    latents side by side) plus, with ``is_train_face``, the face condition: ``id_cond`` (B, LFE_id_dim)
    and ``id_vit_hidden``, a list of ``LFE_num_scale`` ViT hidden states (B, tokens, LFE_vit_dim)."""
    inputs = _cogvideox(dict(cfg, patch_size_t=None, ofs_embed_dim=None), gen, batch)
    if cfg["is_train_face"]:
        inputs["id_cond"] = randn(gen, batch, cfg["LFE_id_dim"])
        inputs["id_vit_hidden"] = [randn(gen, batch, IMAGE_EMBED_TOKENS, cfg["LFE_vit_dim"])
                                   for _ in range(cfg["LFE_num_scale"])]
    return inputs


def _hunyuan_video(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W), an all-ones text mask, guidance scale 6 (x1000) when embedded."""
    patch, patch_t = cfg["patch_size"], cfg["patch_size_t"]
    inputs = dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], *latent_grid(patch_t, patch)),
        timestep=float_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_embed_dim"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS),
        pooled_projections=randn(gen, batch, cfg["pooled_projection_dim"]),
    )
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.full((batch,), 6000.0)
    return inputs


def _hunyuan_video15(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W), C = in_channels (noise, condition latents and mask stacked as the
    pipelines do); MLLM and ByT5 text tokens with all-ones masks and image-encoder tokens (random, so the
    image-to-video branch is taken). MeanFlow configs get ``timestep_r``, a smaller (next) timestep."""
    patch, patch_t = cfg["patch_size"], cfg["patch_size_t"]
    inputs = dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], *latent_grid(patch_t, patch)),
        timestep=float_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_embed_dim"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        encoder_hidden_states_2=randn(gen, batch, TEXT_TOKENS, cfg["text_embed_2_dim"]),
        encoder_attention_mask_2=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        image_embeds=randn(gen, batch, IMAGE_EMBED_TOKENS, cfg["image_embed_dim"]),
    )
    if cfg["use_meanflow"]:
        inputs["timestep_r"] = torch.floor(inputs["timestep"] * 0.9)
    return inputs


FRAMEPACK_HISTORY_FRAMES = (1, 2, 16)
"""Clean-history latent frames at 1x, 2x and 4x compression, as the Framepack pipeline fixes them."""


def _hunyuan_video_framepack(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """HunyuanVideo inputs plus SigLIP image tokens and the clean history the pipeline always passes,
    laid out as its anti-drifting sampling does: frame indices [prefix, latents, 1x, 2x, 4x history];
    the clean latents are the prefix (first image) frame and the 1x history. All history latents are
    (B, C, F, H, W) at the latents' resolution (the model compresses the 2x / 4x ones itself)."""
    inputs = _hunyuan_video(cfg, gen, batch)
    channels, frames, height, width = inputs["hidden_states"].shape[1:]
    frames_1x, frames_2x, frames_4x = FRAMEPACK_HISTORY_FRAMES
    indices = torch.arange(1 + frames + sum(FRAMEPACK_HISTORY_FRAMES))
    prefix, latents, history_1x, history_2x, history_4x = indices.split([1, frames, *FRAMEPACK_HISTORY_FRAMES])
    inputs.update(
        image_embeds=randn(gen, batch, IMAGE_EMBED_TOKENS, cfg["image_proj_dim"]),
        indices_latents=latents,
        latents_clean=randn(gen, batch, channels, 1 + frames_1x, height, width),
        indices_latents_clean=torch.cat([prefix, history_1x]),
        latents_history_2x=randn(gen, batch, channels, frames_2x, height, width),
        indices_latents_history_2x=history_2x,
        latents_history_4x=randn(gen, batch, channels, frames_4x, height, width),
        indices_latents_history_4x=history_4x,
    )
    return inputs


LTX_ROPE_INTERPOLATION_SCALE = (8 / 25, 32.0, 32.0)
"""(VAE temporal compression / frame rate, spatial compression, spatial compression) of the LTX pipelines
at their default 25 fps."""


def _ltx_video(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, F*H*W, in_channels) (patches already folded into the channels, as the pipeline
    packs them) with the latent grid size in patches, the pipeline's rope interpolation scale, and text
    tokens with an all-ones mask."""
    return dict(
        hidden_states=randn(gen, batch, FRAME_PATCHES * GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["caption_channels"]),
        timestep=float_timesteps(gen, batch),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        num_frames=FRAME_PATCHES,
        height=GRID_PATCHES,
        width=GRID_PATCHES,
        rope_interpolation_scale=LTX_ROPE_INTERPOLATION_SCALE,
    )


LTX2_FPS = 24.0
"""Frame rate of the LTX-2 forward's (and pipeline's) default; it sets the audio length of a clip."""


def _ltx2_video(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed video latents (B, F*H*W, in_channels) and packed audio latents (B, L, audio_in_channels), L the
    audio latent frames of the clip's duration (its pixel frames at 24 fps, as the pipeline computes it);
    text tokens per modality (caption width with the LTX-2.0 caption projections, else the connector outputs
    at the cross-attention widths) with all-ones masks. As the pipeline does, ``sigma`` is the timestep and
    the cross-attention modulation uses the other modality's sigma (``use_cross_timestep``)."""
    patch_t = cfg["patch_size_t"]
    pixel_frames = (FRAME_PATCHES * patch_t - 1) * cfg["vae_scale_factors"][0] + 1
    audio_latents_per_second = cfg["audio_sampling_rate"] / cfg["audio_hop_length"] / cfg["audio_scale_factor"]
    audio_frames = round(pixel_frames / LTX2_FPS * audio_latents_per_second)
    if cfg["use_prompt_embeddings"]:
        text_width = audio_text_width = cfg["caption_channels"]
    else:
        text_width, audio_text_width = cfg["cross_attention_dim"], cfg["audio_cross_attention_dim"]
    timestep = float_timesteps(gen, batch)
    return dict(
        hidden_states=randn(gen, batch, FRAME_PATCHES * GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        audio_hidden_states=randn(gen, batch, audio_frames // cfg["audio_patch_size_t"], cfg["audio_in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, text_width),
        audio_encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, audio_text_width),
        timestep=timestep,
        sigma=timestep,
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        audio_encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        num_frames=FRAME_PATCHES * patch_t,
        height=GRID_PATCHES * cfg["patch_size"],
        width=GRID_PATCHES * cfg["patch_size"],
        fps=LTX2_FPS,
        audio_num_frames=audio_frames,
        use_cross_timestep=True,
    )


def _mochi(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W) (only H, W are patched), text tokens with an all-true boolean mask
    (the attention processor keeps the tokens the mask marks, sample by sample)."""
    patch = cfg["patch_size"]
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], FRAME_PATCHES, GRID_PATCHES * patch, GRID_PATCHES * patch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_embed_dim"]),
        timestep=float_timesteps(gen, batch),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.bool),
    )


def _allegro(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W), text tokens with an all-ones mask, and the rotary tables
    (per-axis frequencies and token positions) the pipeline computes for the token grid."""
    from diffusers.models.embeddings import get_3d_rotary_pos_embed_allegro

    patch, patch_t = cfg["patch_size"], cfg["patch_size_t"]
    frames = FRAME_PATCHES * patch_t
    freqs_t, freqs_h, freqs_w, grid_t, grid_h, grid_w = get_3d_rotary_pos_embed_allegro(
        embed_dim=cfg["attention_head_dim"], crops_coords=((0, 0), (GRID_PATCHES, GRID_PATCHES)),
        grid_size=(GRID_PATCHES, GRID_PATCHES), temporal_size=frames,
        interpolation_scale=(cfg["interpolation_scale_t"], cfg["interpolation_scale_h"],
                             cfg["interpolation_scale_w"]))
    positions = torch.cartesian_prod(grid_t.long(), grid_h.long(), grid_w.long()).transpose(0, 1).reshape(3, 1, -1)
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], frames, GRID_PATCHES * patch, GRID_PATCHES * patch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["caption_channels"]),
        timestep=float_timesteps(gen, batch),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        image_rotary_emb=((freqs_t, freqs_h, freqs_w), tuple(positions.contiguous())),
    )


def _latte(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W) with exactly ``video_length`` frames (the temporal position embedding
    is sized for it) and text tokens, no mask (the pipeline passes none)."""
    side = GRID_PATCHES * cfg["patch_size"]
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], cfg["video_length"], side, side),
        timestep=integer_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["caption_channels"]),
    )


def _easyanimate(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W) with C = out_channels (the output is unpatchified with the input's
    channel count); when ``in_channels`` is larger, the rest comes in ``inpaint_latents`` (mask and masked
    video latents). Text tokens, plus T5 tokens when ``text_embed_dim_t5`` is set."""
    patch = cfg["patch_size"]
    channels = cfg["out_channels"] or cfg["in_channels"]
    shape = (FRAME_PATCHES, GRID_PATCHES * patch, GRID_PATCHES * patch)
    inputs = dict(
        hidden_states=randn(gen, batch, channels, *shape),
        timestep=float_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_embed_dim"]),
    )
    if cfg["text_embed_dim_t5"] is not None:
        inputs["encoder_hidden_states_t5"] = randn(gen, batch, TEXT_TOKENS, cfg["text_embed_dim_t5"])
    if cfg["in_channels"] > channels:
        inputs["inpaint_latents"] = randn(gen, batch, cfg["in_channels"] - channels, *shape)
    return inputs


SPECS: dict[str, ClassSpec] = {
    "CogVideoXTransformer3DModel": ClassSpec(_cogvideox, dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
        text_embed_dim=8, num_layers=4, sample_width=8, sample_height=8, sample_frames=8, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8)),
    "ConsisIDTransformer3DModel": ClassSpec(_consisid, dict(
        num_attention_heads=3, attention_head_dim=16, in_channels=8, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=4, sample_width=8, sample_height=8, sample_frames=5, patch_size=2,
        max_text_seq_length=8, use_rotary_positional_embeddings=True, is_train_face=True, cross_attn_interval=2,
        cross_attn_dim_head=8, cross_attn_num_heads=2, LFE_id_dim=16, LFE_vit_dim=16, LFE_depth=2,
        LFE_dim_head=8, LFE_num_heads=2, LFE_num_id_token=2, LFE_num_querie=4, LFE_output_dim=32,
        LFE_ff_mult=2, LFE_num_scale=2),
        notes="perceiver_cross_attention (num_layers // cross_attn_interval) runs after every "
              "cross_attn_interval-th block, adding the face tokens; LFE_output_dim must be 2/3 of the inner dim; "
              "the latent holds noise and image latents (in_channels), the output out_channels (noise only)"),
    "HunyuanVideoTransformer3DModel": ClassSpec(_hunyuan_video, dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
        num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None)),
    "HunyuanVideo15Transformer3DModel": ClassSpec(_hunyuan_video15, dict(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4,
        num_refiner_layers=2, patch_size=1, patch_size_t=1, text_embed_dim=16, text_embed_2_dim=16,
        image_embed_dim=16, rope_axes_dim=(4, 6, 6)),
        notes="context_embedder_2 (ByT5 projection) has a fixed 2048 hidden width: ~4.3M params in the tiny "
              "config; context_embedder.token_refiner.refiner_blocks refine the text before the main blocks; "
              "the latent holds noise, condition latents and mask (in_channels), the output out_channels"),
    "HunyuanVideoFramepackTransformer3DModel": ClassSpec(_hunyuan_video_framepack, dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=4,
        num_single_layers=4, num_refiner_layers=2, patch_size=2, patch_size_t=1, guidance_embeds=True,
        text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None,
        has_image_proj=True, image_proj_dim=16, has_clean_x_embedder=True),
        notes="the forward needs has_image_proj and has_clean_x_embedder and all history inputs (it fails "
              "without them); clean / 2x / 4x history tokens are concatenated before the latent tokens and "
              "the output keeps only the last latent tokens"),
    "LTXVideoTransformer3DModel": ClassSpec(_ltx_video, dict(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
        num_layers=4, caption_channels=16)),
    "LTX2VideoTransformer3DModel": ClassSpec(_ltx2_video, dict(
        in_channels=8, out_channels=8, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
        audio_in_channels=8, audio_out_channels=8, audio_num_attention_heads=2, audio_attention_head_dim=8,
        audio_cross_attention_dim=16, num_layers=4, caption_channels=16),
        notes="audio-video model: every block updates a video and an audio stream (a2v / v2a cross-attention "
              "between them); the forward returns (video, audio), the first is the latent's prediction"),
    "MochiTransformer3DModel": ClassSpec(_mochi, dict(
        patch_size=2, num_attention_heads=2, attention_head_dim=16, num_layers=4, pooled_projection_dim=16,
        in_channels=4, text_embed_dim=16, time_embed_dim=16)),
    "AllegroTransformer3DModel": ClassSpec(_allegro, dict(
        patch_size=2, patch_size_t=1, num_attention_heads=2, attention_head_dim=12, in_channels=4,
        out_channels=4, num_layers=4, cross_attention_dim=24, sample_height=8, sample_width=8, sample_frames=2,
        caption_channels=16)),
    "LatteTransformer3DModel": ClassSpec(_latte, dict(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=4,
        cross_attention_dim=16, attention_bias=True, sample_size=8, patch_size=2, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        caption_channels=16, video_length=FRAME_PATCHES),
        notes="transformer_blocks (spatial, frames on the batch axis) and temporal_transformer_blocks (tokens on "
              "the batch axis) alternate pairwise, with a transpose between each; the frame count is fixed to "
              "video_length; out_channels = 2 x in_channels (learned variance) as in the Latte checkpoint"),
    "EasyAnimateTransformer3DModel": ClassSpec(_easyanimate, dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, patch_size=2, num_layers=4,
        mmdit_layers=4, time_embed_dim=16, text_embed_dim=16)),
}
