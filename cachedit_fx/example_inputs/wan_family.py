"""Wan-like video DiTs: latents ``(B, C, F, H, W)``, text (and optional image) conditions
attended through cross-attention in every block. Variants with another latent layout (per-frame
``(B, F, C, H, W)``, patchified rows, per-sample lists) say so in their builders."""

from __future__ import annotations

from typing import Any

import torch

from cachedit_fx.example_inputs.common import (
    latent_grid,
    FRAME_PATCHES, GRID_PATCHES, IMAGE_EMBED_TOKENS, TEXT_TOKENS, ClassSpec, float_timesteps, integer_timesteps, randn,
    unit_timesteps,
)

WAN_TEXT_TOKENS_WITH_IMAGE = 512
"""Text length the Wan image-to-video attention processor hard-codes."""
WAN_VAE_TEMPORAL_FACTOR = 4
"""Pixel frames per latent frame of the Wan VAE (a segment of T latent frames is 4 (T - 1) + 1 frames)."""
WAN_VAE_SPATIAL_FACTOR = 8
"""Pixels per latent side of the Wan VAE."""
WAN_ANIMATE_2_CLIP_DIM = 1280
"""Width of the CLIP image tokens ``WanAnimate2Transformer3DModel`` projects (fixed in the class)."""
MINIMAX_H3_AUDIO_LATENTS = 4
"""Audio latents per channel of the MiniMax-H3 soundtrack (stereo, packed channel-major)."""


def _wan(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W) and the text (and image) conditions of ``_wan_conditions``."""
    p_t, p_h, p_w = cfg["patch_size"]
    inputs = dict(hidden_states=randn(gen, batch, cfg["in_channels"], *latent_grid(p_t, p_h, p_w)),
                  timestep=integer_timesteps(gen, batch))
    return {**inputs, **_wan_conditions(cfg, gen, batch)}


def _wan_conditions(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Text tokens and, when ``image_dim`` is set, CLIP image tokens. With ``added_kv_proj_dim``
    (image-to-video) the text length is the 512 the attention processor hard-codes; with
    ``pos_embed_seq_len`` two images per sample are stacked on the batch axis."""
    text_tokens = WAN_TEXT_TOKENS_WITH_IMAGE if cfg["added_kv_proj_dim"] is not None else TEXT_TOKENS
    inputs = dict(encoder_hidden_states=randn(gen, batch, text_tokens, cfg["text_dim"]))
    if cfg["image_dim"] is not None:
        if cfg["pos_embed_seq_len"] is not None:
            image_shape = (2 * batch, cfg["pos_embed_seq_len"] // 2, cfg["image_dim"])
        else:
            image_shape = (batch, IMAGE_EMBED_TOKENS, cfg["image_dim"])
        inputs["encoder_hidden_states_image"] = randn(gen, *image_shape)
    return inputs


def _wan_vace(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Wan inputs plus VACE control latents (B, vace_in_channels, F, H, W) on the latent grid (masked
    video latents and the pixel mask folded into channels, as the pipeline concatenates them); the
    per-VACE-layer scale is left at its default of ones."""
    inputs = _wan(cfg, gen, batch)
    _, _, frames, height, width = inputs["hidden_states"].shape
    inputs["control_hidden_states"] = randn(gen, batch, cfg["vace_in_channels"], frames, height, width)
    return inputs


def _wan_animate(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, 2C + 4, 1 + T, H, W): the noisy segment with the reference latent frame prepended and
    the mask / conditioning channels concatenated, as the pipeline does; pose latents (B, C, T, H, W);
    the face video in pixels (B, 3, 4 (T - 1) + 1, S, S) in [-1, 1] at the motion encoder's size, so the
    face encoder's 4x temporal downsampling gives back T frames (+ a padding frame) to match 1 + T."""
    latent_channels = (cfg["in_channels"] - 4) // 2 if cfg["latent_channels"] is None else cfg["latent_channels"]
    in_channels = cfg["in_channels"] or 2 * latent_channels + 4
    p_t, p_h, p_w = cfg["patch_size"]
    frames, height, width = latent_grid(p_t, p_h, p_w)
    face_frames = WAN_VAE_TEMPORAL_FACTOR * (frames - 1) + 1
    size = cfg["motion_encoder_size"]
    inputs = dict(
        hidden_states=randn(gen, batch, in_channels, 1 + frames, height, width),
        timestep=integer_timesteps(gen, batch),
        pose_hidden_states=randn(gen, batch, latent_channels, frames, height, width),
        face_pixel_values=torch.rand(batch, 3, face_frames, size, size, generator=gen) * 2 - 1,
    )
    inputs.update(_wan_conditions(cfg, gen, batch))
    return inputs


def _skyreels_v2(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Wan inputs. Configs with ``inject_sample_info`` (the diffusion-forcing checkpoints) are run as
    the diffusion-forcing pipeline runs them: one integer timestep per latent frame (B, F),
    ``enable_diffusion_forcing`` and the fps class (1: not 16 fps), given once for the whole batch: the
    pipeline's one-per-sample list only broadcasts against the per-frame modulation at batch 1."""
    inputs = _wan(cfg, gen, batch)
    if cfg["inject_sample_info"]:
        frames = inputs["hidden_states"].shape[2] // cfg["patch_size"][0]
        inputs["timestep"] = integer_timesteps(gen, batch * frames).view(batch, frames)
        inputs["enable_diffusion_forcing"] = True
        inputs["fps"] = [1]
    return inputs


def _helios(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W) for the chunk being denoised, with the pipeline's multi-term memory
    as history latents on the same H, W: long (4 latent frames, patched 4x coarser), mid (2 frames, 2x
    coarser) and short (a first-frame prefix + 1 frame), and (1, n) frame indices laid out as
    [prefix, long, mid, 1x, chunk] in the pipeline's ``keep_first_frame`` order. Timesteps are
    sigma * 1000 floats."""
    p_t, p_h, p_w = cfg["patch_size"]
    frames, height, width = latent_grid(p_t, p_h, p_w)
    sizes = [1, 4 * p_t, 2 * p_t, 1, frames]
    prefix, long, mid, short_1x, chunk = torch.arange(sum(sizes)).split(sizes)
    channels = cfg["in_channels"]
    return dict(
        hidden_states=randn(gen, batch, channels, frames, height, width),
        timestep=float_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_dim"]),
        indices_hidden_states=chunk.unsqueeze(0),
        indices_latents_history_short=torch.cat([prefix, short_1x]).unsqueeze(0),
        indices_latents_history_mid=mid.unsqueeze(0),
        indices_latents_history_long=long.unsqueeze(0),
        latents_history_short=randn(gen, batch, channels, 1 + sizes[3], height, width),
        latents_history_mid=randn(gen, batch, channels, sizes[2], height, width),
        latents_history_long=randn(gen, batch, channels, sizes[1], height, width),
    )


def _anyflow(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Per-frame latents (B, F, C, H, W). Flow-map timesteps per frame (B, F) in train-timestep units
    [0, 1000): the source ``timestep`` t and the cleaner target ``r_timestep`` r < t, each the same over
    the frames of a sample, as the pipeline repeats them."""
    p_t, p_h, p_w = cfg["patch_size"]
    frames = FRAME_PATCHES * p_t
    timestep = float_timesteps(gen, batch)
    r_timestep = timestep * unit_timesteps(gen, batch)
    inputs = dict(
        hidden_states=randn(gen, batch, frames, cfg["in_channels"], GRID_PATCHES * p_h, GRID_PATCHES * p_w),
        timestep=timestep[:, None].repeat(1, frames),
        r_timestep=r_timestep[:, None].repeat(1, frames),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_dim"]),
    )
    if cfg["image_dim"] is not None:
        inputs["encoder_hidden_states_image"] = randn(gen, batch, IMAGE_EMBED_TOKENS, cfg["image_dim"])
    return inputs


def _anyflow_far(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """One autoregressive denoising step of the pipeline's KV-cache path: per-frame latents
    (B, F, C, H, W) of the last of ``full_chunk_limit + 1`` chunks of F frames, so the cache holds one
    compressed chunk and ``full_chunk_limit - 1`` full-resolution chunks, filled with random pre-RoPE
    keys / values in the pipeline's cache layout (2, B, heads, tokens, head_dim) per layer. Flow-map
    timesteps as for AnyFlow."""
    inputs = _anyflow(cfg, gen, batch)
    frames, _, height, width = inputs["hidden_states"].shape[1:]
    limit, (_, p_h, p_w), (_, c_h, c_w) = cfg["full_chunk_limit"], cfg["patch_size"], cfg["compressed_patch_size"]
    chunk_partition = [frames] * (limit + 1)
    heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
    full_tokens = limit * frames * (height // p_h) * (width // p_w)
    compressed_tokens = (len(chunk_partition) - limit + 1) * frames * (height // c_h) * (width // c_w)
    inputs.update(
        chunk_partition=chunk_partition,
        kv_cache={layer: dict(full_cache=randn(gen, 2, batch, heads, full_tokens, head_dim),
                              compressed_cache=randn(gen, 2, batch, heads, compressed_tokens, head_dim))
                  for layer in range(cfg["num_layers"])},
        kv_cache_flag={"num_cached_chunks": limit, "is_cache_step": False},
    )
    return inputs


def _joyimage_edit(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Multi-item latents (B, 2, C, T, H, W): the reference image latent then the noisy target, one
    temporal patch each, as the editing pipeline stacks them; timesteps are sigma * 1000 floats."""
    p_t, p_h, p_w = cfg["patch_size"]
    return dict(
        hidden_states=randn(gen, batch, 2, cfg["in_channels"], p_t, GRID_PATCHES * p_h, GRID_PATCHES * p_w),
        timestep=float_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_dim"]),
    )


def _joyimage_edit_plus(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Pre-patchified latents (B, N, C, pt, ph, pw): the noisy target's patches then one reference
    image's (each a 1 x GRID x GRID patch grid, listed per sample in ``shape_list``); an all-ones text
    mask as the pipeline passes; timesteps are sigma * 1000 floats."""
    patch = tuple(cfg["patch_size"])
    grid = (1, GRID_PATCHES, GRID_PATCHES)
    num_patches = 2 * GRID_PATCHES * GRID_PATCHES
    return dict(
        hidden_states=randn(gen, batch, num_patches, cfg["in_channels"], *patch),
        timestep=float_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_dim"]),
        encoder_hidden_states_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        shape_list=[[grid, grid] for _ in range(batch)],
    )


def _motif_video(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W) whose channels are the pipeline's [noise | first-frame condition |
    mask] concatenation (``in_channels`` in all); an all-ones text mask; vision-encoder tokens in
    ``image_embeds`` when ``image_embed_dim`` is set; timesteps are sigma * 1000 floats."""
    patch, patch_t = cfg["patch_size"], cfg["patch_size_t"]
    inputs = dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], *latent_grid(patch_t, patch)),
        timestep=float_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_embed_dim"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
    )
    if cfg["image_embed_dim"] is not None:
        inputs["image_embeds"] = randn(gen, batch, IMAGE_EMBED_TOKENS, cfg["image_embed_dim"])
    return inputs


def _wan_animate_2(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """One denoising step of the pipeline's ``kv_cache_mode="cached"`` pass. Per-sample lists: noisy
    latents (C, 1 + T, H, W) (reference-image slot + T segment frames, C = (in_dim - 4) / 2), condition
    latents (in_dim - C, 1 + T, H, W) and unpadded text (TEXT_TOKENS, text_dim). The reference K/V cache
    that the ``extract`` pass of the driving video would fill holds random pre-RoPE keys / values
    (B, T*h*w, heads, head_dim) per layer; ``origin_len`` / ``origin_area`` describe the segment in pixels
    (4 (T - 1) + 1 frames). CLIP tokens only when ``use_img_emb``."""
    from diffusers.models.transformers.transformer_wan_animate_2 import WanAnimate2KVCache

    p_t, p_h, p_w = cfg["patch_size"]
    frames, height, width = latent_grid(p_t, p_h, p_w)
    latent_channels = (cfg["in_dim"] - 4) // 2
    heads = cfg["num_heads"]
    grid = (frames // p_t, height // p_h, width // p_w)
    kv_cache = WanAnimate2KVCache(cfg["num_layers"])
    for layer in range(cfg["num_layers"]):
        kv_cache.get(layer).store(*(randn(gen, batch, grid[0] * grid[1] * grid[2], heads, cfg["dim"] // heads)
                                    for _ in range(2)))
    inputs = dict(
        hidden_states=[randn(gen, latent_channels, 1 + frames, height, width) for _ in range(batch)],
        timestep=float_timesteps(gen, batch),
        encoder_hidden_states=[randn(gen, TEXT_TOKENS, cfg["text_dim"]) for _ in range(batch)],
        condition_latents=[randn(gen, cfg["in_dim"] - latent_channels, 1 + frames, height, width)
                           for _ in range(batch)],
        kv_cache=kv_cache,
        kv_cache_mode="cached",
        seq_len=(1 + grid[0]) * grid[1] * grid[2],
        reference_grid_sizes=torch.tensor([grid] * batch),
        origin_len=WAN_VAE_TEMPORAL_FACTOR * (frames - 1) + 1,
        origin_area=[height * WAN_VAE_SPATIAL_FACTOR, width * WAN_VAE_SPATIAL_FACTOR],
    )
    if cfg["use_img_emb"]:
        inputs["encoder_hidden_states_image"] = randn(gen, batch, IMAGE_EMBED_TOKENS, WAN_ANIMATE_2_CLIP_DIM)
    return inputs


def _minimax_h3(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """The packed ``[text | audio | video]`` sequence of the pipeline's text-to-video+audio layout (no
    keyframes), built with the pipeline's own layout helpers: patchified video rows (B, F*h*w,
    C * prod(patch)), channel-major stereo audio rows (B, 2 * MINIMAX_H3_AUDIO_LATENTS, audio_in_channels),
    text rows, (seq, 3) rotary coordinates, per-row modality tags and row indices. ``timestep`` holds the
    distinct timesteps of the sequence (video, audio) in [0, 1], unscaled, shared by the batch, and
    ``timestep_indices`` each row's index into it."""
    from diffusers.modular_pipelines.minimax_h3.before_denoise import (
        MiniMaxH3PrepareLayoutStep, MiniMaxH3SetTimestepsStep,
    )
    from diffusers.modular_pipelines.minimax_h3.modular_pipeline import (
        MINIMAX_H3_AUDIO_CHANNELS, MINIMAX_H3_AUDIO_TAG, MINIMAX_H3_TEXT_TAG, MINIMAX_H3_VIDEO_TAG,
    )

    p_t, p_h, p_w = cfg["patch_size"]
    frames, height, width = latent_grid(p_t, p_h, p_w)
    position_ids, token_tags, video_indices, audio_indices, text_indices, _, _ = (
        MiniMaxH3PrepareLayoutStep.build_packed_sequence(
            torch.full((TEXT_TOKENS,), MINIMAX_H3_TEXT_TAG), frames // p_t, height, width, MINIMAX_H3_AUDIO_LATENTS,
            tuple(cfg["patch_size"]), MINIMAX_H3_AUDIO_CHANNELS, MINIMAX_H3_AUDIO_TAG, MINIMAX_H3_VIDEO_TAG))
    video_timestep, audio_timestep = unit_timesteps(gen, 2).tolist()
    timestep, timestep_indices = MiniMaxH3SetTimestepsStep.build_row_timesteps(
        video_indices, audio_indices, 0, 0, TEXT_TOKENS, video_timestep, audio_timestep, video_timestep, 1.0)
    return dict(
        hidden_states=randn(gen, batch, video_indices.numel(), cfg["in_channels"] * p_t * p_h * p_w),
        audio_hidden_states=randn(gen, batch, audio_indices.numel(), cfg["audio_in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_dim"]),
        timestep=timestep,
        timestep_indices=timestep_indices,
        token_tags=token_tags,
        position_ids=position_ids,
        video_indices=video_indices,
        audio_indices=audio_indices,
        text_indices=text_indices,
    )


SPECS: dict[str, ClassSpec] = {
    "WanTransformer3DModel": ClassSpec(_wan, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32)),
    "WanVACETransformer3DModel": ClassSpec(_wan_vace, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, vace_layers=[0, 2], vace_in_channels=8),
        notes="side list vace_blocks (2) runs first as a chain on the control stream; its outputs are added "
              "after main blocks 0 and 2 (vace_layers)"),
    "WanAnimateTransformer3DModel": ClassSpec(_wan_animate, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=12, latent_channels=4,
        out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=4, image_dim=16,
        motion_encoder_channel_sizes={"8": 8, "4": 8}, motion_encoder_size=8, motion_style_dim=16, motion_dim=4,
        motion_encoder_dim=16, face_encoder_hidden_dim=16, face_encoder_num_heads=2, inject_face_latents_blocks=2),
        notes="latent has 2C+4 channels and one extra (reference) frame, the output C channels; side list "
              "face_adapter (2) is applied after main blocks 0 and 2 (every inject_face_latents_blocks)"),
    "WanAnimate2Transformer3DModel": ClassSpec(_wan_animate_2, dict(
        patch_size=(1, 2, 2), text_len=16, in_dim=12, dim=24, ffn_dim=32, freq_dim=32, text_dim=16, out_dim=4,
        num_heads=2, num_layers=4, use_img_emb=False),
        notes="cached (denoising) pass: latents and output are per-sample lists; random reference KV cache "
              "stands in for the extract pass; self-attention is flex attention over a BlockMask that the first "
              "forward builds with create_block_mask(_compile=True) (tens of seconds on CPU, then memoized)"),
    "SkyReelsV2Transformer3DModel": ClassSpec(_skyreels_v2, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_max_seq_len=32, inject_sample_info=True),
        notes="tiny config is a diffusion-forcing one (inject_sample_info): per-frame timesteps (B, F), one fps "
              "class for the batch"),
    "ChronoEditTransformer3DModel": ClassSpec(_wan, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=12, out_channels=4,
        text_dim=16, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", image_dim=16, added_kv_proj_dim=24, rope_max_seq_len=32,
        rope_temporal_skip_len=8),
        notes="image-to-video: latent is noise + mask + image-condition channels (2C+4), output C channels; "
              "2 latent frames take the temporal-skip RoPE branch (frames 0 and skip_len-1); 512 text tokens"),
    "HeliosTransformer3DModel": ClassSpec(_helios, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", rope_dim=(4, 4, 4)),
        notes="history tokens (long, mid, short memory latents) are concatenated before the chunk tokens "
              "and run through every block at timestep 0; only the chunk tokens are output"),
    "AnyFlowTransformer3DModel": ClassSpec(_anyflow, dict(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
        text_dim=16, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True, rope_max_seq_len=32)),
    "AnyFlowFARTransformer3DModel": ClassSpec(_anyflow_far, dict(
        patch_size=(1, 2, 2), compressed_patch_size=(1, 4, 4), full_chunk_limit=2, num_attention_heads=2,
        attention_head_dim=12, in_channels=4, out_channels=4, text_dim=16, freq_dim=256, ffn_dim=32, num_layers=4,
        cross_attn_norm=True, rope_max_seq_len=32, chunk_partition=(2, 2, 2)),
        notes="KV-cache inference step (the sampler's step); the random kv_cache stands in for the pipeline's "
              "cache-prefill passes; kv_cache_flag is mutated in place; returns (sample, kv_cache)"),
    "JoyImageEditTransformer3DModel": ClassSpec(_joyimage_edit, dict(
        patch_size=[1, 2, 2], in_channels=4, out_channels=4, hidden_size=32, num_attention_heads=2, text_dim=16,
        mlp_width_ratio=2.0, num_layers=4, rope_dim_list=[4, 6, 6]),
        notes="double-stream blocks (image and text streams, joint attention); the reference item is part of "
              "the latent and is restored by the pipeline each step"),
    "JoyImageEditPlusTransformer3DModel": ClassSpec(_joyimage_edit_plus, dict(
        patch_size=[1, 2, 2], in_channels=4, out_channels=4, hidden_size=32, num_attention_heads=2, text_dim=16,
        mlp_width_ratio=2.0, num_layers=4, rope_dim_list=[4, 6, 6]),
        notes="latent is already patchified (B, N, C, pt, ph, pw), target + reference patches padded to one N; "
              "double-stream blocks; reference patches are restored by the pipeline each step"),
    "MotifVideoTransformer3DModel": ClassSpec(_motif_video, dict(
        in_channels=9, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4,
        num_single_layers=4, num_decoder_layers=2, mlp_ratio=2.0, patch_size=2, patch_size_t=1, text_embed_dim=16,
        rope_axes_dim=(4, 6, 6)),
        notes="latent has 2C+1 channels, output C; dual-stream transformer_blocks then single_transformer_blocks, "
              "whose last num_decoder_layers (2 of 4) are decoder blocks: they restart from the patch-embedded "
              "input (a skip from before the stack), with the encoder blocks' video tokens as their second stream"),
    "MiniMaxH3Transformer3DModel": ClassSpec(_minimax_h3, dict(
        num_attention_heads=2, attention_head_dim=16, hidden_size=32, num_layers=4, num_refiner_layers=2, ffn_dim=64,
        in_channels=4, audio_in_channels=8, patch_size=(1, 2, 2), text_dim=16, freq_dim=32, time_embed_hidden_dim=32,
        time_embed_dim=16, rope_freq_dim=2),
        notes="one packed [text | audio | video] sequence through every block; refiner list "
              "token_refiner.refiner_blocks (2) runs on the text first; timestep is the (2,) distinct video/audio "
              "values, addressed per row; returns (video rows, audio rows)"),
}
