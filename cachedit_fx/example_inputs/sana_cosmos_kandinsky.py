"""Sana-family image and video DiTs (linear attention), Cosmos world models and Kandinsky 5/6
video DiTs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from cachedit_fx.example_inputs.common import (
    latent_grid,
    FRAME_PATCHES, GRID_PATCHES, TEXT_TOKENS, ClassSpec, float_timesteps, randn, unit_timesteps,
)

K6_AUDIO_TOKENS = 9
"""Kandinsky 6 audio latents for FRAME_PATCHES latent frames: the pipeline's
ceil(((frames - 1) * 4 + 1) / 24 fps * 44100 Hz / 1024 hop) with its default VAE and audio rates."""

SANA_WM_SPATIAL_STRIDE = 32
"""Pixels per latent side of the LTX-2 VAE SANA-WM runs on (sets the camera intrinsics' pixel scale)."""


def _sana_video(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W), Gemma text tokens of width ``caption_channels`` with an all-ones
    ``encoder_attention_mask`` (the pipelines always pass the prompt mask), one flow-matching timestep in
    [0, 1000) per sample; ``guidance`` (scale 4.5 times ``guidance_embeds_scale``, as Sana-Sprint scales it)
    only when ``guidance_embeds``."""
    p_t, p_h, p_w = cfg["patch_size"]
    inputs = dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], *latent_grid(p_t, p_h, p_w)),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["caption_channels"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS),
        timestep=float_timesteps(gen, batch),
    )
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.full((batch,), 4.5 * cfg["guidance_embeds_scale"])
    return inputs


def _sana_wm(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W) with per-frame timesteps (B, 1, F): 0 on the first frame (the clean image
    anchor the pipeline pins) and one flow-matching value in [0, 1000) on the others. Gemma text tokens
    (B, 1, L, caption_channels) with the required all-ones mask. Camera inputs as the pipeline's
    ``prepare_camera`` builds them for a short forward dolly (``action_string_to_c2w("w-N")``) with a pinhole of
    about 53 degrees: ``camera_conditions`` (B, F, 20) and ``chunk_plucker`` (B, chunk_plucker_channels, F, H, W),
    the VAE time stride being ``chunk_plucker_channels // 6`` and the spatial stride LTX-2's 32."""
    from diffusers.pipelines.sana_wm.cam_utils import action_string_to_c2w, prepare_camera

    p_t, p_h, p_w = cfg["patch_size"]
    frames, height, width = latent_grid(p_t, p_h, p_w)
    time_stride, spatial_stride = cfg["chunk_plucker_channels"] // 6, SANA_WM_SPATIAL_STRIDE
    pixel_frames = (frames - 1) * time_stride + 1
    pixel_height, pixel_width = height * spatial_stride, width * spatial_stride
    poses = action_string_to_c2w(f"w-{pixel_frames - 1}") if pixel_frames > 1 else np.eye(4, dtype=np.float32)[None]
    intrinsics = np.tile(np.array([[pixel_width, pixel_width, pixel_width / 2, pixel_height / 2]], dtype=np.float32),
                         (pixel_frames, 1))
    camera = prepare_camera(poses, intrinsics, target_size=(pixel_height, pixel_width),
                            vae_stride=(time_stride, spatial_stride, spatial_stride))
    timestep = float_timesteps(gen, batch)[:, None, None].repeat(1, 1, frames)
    timestep[:, :, 0] = 0.0
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], frames, height, width),
        timestep=timestep,
        encoder_hidden_states=randn(gen, batch, 1, TEXT_TOKENS, cfg["caption_channels"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        camera_conditions=camera["raymap"].expand(batch, -1, -1).clone(),
        chunk_plucker=camera["chunk_plucker"].expand(batch, -1, -1, -1, -1).clone(),
    )


def _sana_wm_refiner(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Patchified latent tokens (B, N, in_channels) of one autoregressive block starting at frame 0, Gemma
    text tokens (B, L, caption_channels) after the connectors with an all-ones mask, a per-token timestep
    (B, N): one sigma in [0, 1) per sample times ``timestep_scale_multiplier``, and the video RoPE the
    pipeline builds for the block's absolute frame positions (24 fps), computed with the model's own
    rotary module from the config. No KV cache (``kv_cache_mode=None``: plain self-attention over the block)."""
    from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2AudioVideoRotaryPosEmbed

    patch, patch_t = cfg["patch_size"], cfg["patch_size_t"]
    frames, height, width = latent_grid(patch_t, patch)
    tokens = FRAME_PATCHES * GRID_PATCHES * GRID_PATCHES
    rope = SanaWMLTX2AudioVideoRotaryPosEmbed(
        dim=cfg["num_attention_heads"] * cfg["attention_head_dim"], patch_size=patch, patch_size_t=patch_t,
        base_num_frames=cfg["pos_embed_max_pos"], base_height=cfg["base_height"], base_width=cfg["base_width"],
        scale_factors=cfg["vae_scale_factors"], theta=cfg["rope_theta"], causal_offset=cfg["causal_offset"],
        modality="video", double_precision=cfg["rope_double_precision"], rope_type=cfg["rope_type"],
        num_attention_heads=cfg["num_attention_heads"])
    coords = rope.prepare_video_coords(batch, frames, height, width, torch.device("cpu"), fps=24.0)
    sigma = unit_timesteps(gen, batch)
    return dict(
        hidden_states=randn(gen, batch, tokens, cfg["in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["caption_channels"]),
        timestep=(sigma * cfg["timestep_scale_multiplier"])[:, None].expand(batch, tokens).clone(),
        video_rotary_emb=rope(coords),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS),
    )


def _cosmos(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W) with timesteps in [0, 1) (Cosmos 2 / 2.5 pipelines: t = sigma / (sigma + 1)
    or the flow sigma). When ``in_channels`` exceeds ``out_channels`` (video-to-world checkpoints) the latent has
    ``out_channels`` channels and the rest come in as ``condition_mask``; the all-zero ``padding_mask`` (1, 1, H, W)
    is given when ``concat_padding_mask``. Text width is ``crossattn_proj_in_channels`` when the text is projected;
    image-context checkpoints take ``(text, image_context)`` as ``encoder_hidden_states``."""
    p_t, p_h, p_w = cfg["patch_size"]
    frames, height, width = latent_grid(p_t, p_h, p_w)
    cond_channels = cfg["in_channels"] - cfg["out_channels"]
    latent_channels = cfg["out_channels"] if cond_channels > 0 else cfg["in_channels"]
    text_width = cfg["crossattn_proj_in_channels"] if cfg["use_crossattn_projection"] else cfg["text_embed_dim"]
    text = randn(gen, batch, TEXT_TOKENS, text_width)
    inputs = dict(
        hidden_states=randn(gen, batch, latent_channels, frames, height, width),
        timestep=unit_timesteps(gen, batch),
        encoder_hidden_states=text,
    )
    if cfg["img_context_dim_in"]:
        image_context = randn(gen, batch, cfg["img_context_num_tokens"], cfg["img_context_dim_in"])
        inputs["encoder_hidden_states"] = (text, image_context)
    if cond_channels > 0:
        inputs["condition_mask"] = torch.zeros(batch, cond_channels, frames, height, width)
    if cfg["concat_padding_mask"]:
        inputs["padding_mask"] = torch.zeros(1, 1, height, width)
    return inputs


def _cosmos3_omni(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """One packed sequence, no batch axis: TEXT_TOKENS random prompt ids (the causal "understanding" prefix,
    ``und_len``) then the patch tokens of each video latent (1, C, F, H, W) in ``vision_tokens`` (``batch``
    videos after the one prompt), text-to-video style (every frame noisy). mRoPE ``position_ids`` (3, N) as the
    pipeline builds them: text positions on all three axes, video positions offset by the text length plus
    ``unified_3d_mrope_temporal_modality_margin`` in time (spatial axes reset unless configured otherwise; the
    fps modulation is the identity at ``base_fps``). One flow-matching timestep in [0, 1000) per video, repeated
    over its tokens (the model scales it by ``timestep_scale``). No sound or action streams."""
    patch, channels = cfg["latent_patch_size"], cfg["latent_channel"]
    frames, rows, cols = FRAME_PATCHES, GRID_PATCHES, GRID_PATCHES
    per_video = frames * rows * cols
    und_len, sequence_length = TEXT_TOKENS, TEXT_TOKENS + batch * per_video
    position_dtype = torch.float32 if cfg["enable_fps_modulation"] else torch.long
    text_positions = torch.arange(und_len).expand(3, -1)
    offset = und_len + cfg["unified_3d_mrope_temporal_modality_margin"]
    t_ids, h_ids, w_ids = torch.meshgrid(torch.arange(frames), torch.arange(rows), torch.arange(cols), indexing="ij")
    spatial_offset = 0 if cfg["unified_3d_mrope_reset_spatial_ids"] else offset
    video_positions = torch.stack([t_ids.flatten() + offset, h_ids.flatten() + spatial_offset,
                                   w_ids.flatten() + spatial_offset])
    video_indexes = torch.arange(und_len, sequence_length)
    vision_timesteps = float_timesteps(gen, batch).repeat_interleave(per_video)
    return dict(
        input_ids=torch.randint(0, cfg["vocab_size"], (und_len,), generator=gen),
        text_indexes=torch.arange(und_len),
        position_ids=torch.cat([text_positions] + [video_positions] * batch, dim=1).to(position_dtype),
        und_len=und_len,
        sequence_length=sequence_length,
        vision_tokens=[randn(gen, 1, channels, frames, rows * patch, cols * patch) for _ in range(batch)],
        vision_token_shapes=[(frames, rows, cols)] * batch,
        vision_sequence_indexes=video_indexes,
        vision_mse_loss_indexes=video_indexes,
        vision_timesteps=vision_timesteps,
        vision_noisy_frame_indexes=[torch.arange(frames) for _ in range(batch)],
    )


def _kandinsky5(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Channels-last video latents (B, F, H, W, C); with ``visual_cond`` the channels are latent, condition
    latent (zeros) and a zero mask (2C + 1), as the pipelines concatenate them. Integer-valued flow-matching
    timesteps in [0, 1000), Qwen text tokens, a pooled CLIP vector, and the RoPE positions the pipelines
    pass (``arange`` per latent axis in patches, ``arange`` over the text). Dense attention
    (``sparse_params=None``)."""
    p_t, p_h, p_w = cfg["patch_size"]
    frames, rows, cols = FRAME_PATCHES, GRID_PATCHES, GRID_PATCHES
    channels = 2 * cfg["in_visual_dim"] + 1 if cfg["visual_cond"] else cfg["in_visual_dim"]
    return dict(
        hidden_states=randn(gen, batch, frames * p_t, rows * p_h, cols * p_w, channels),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["in_text_dim"]),
        timestep=float_timesteps(gen, batch),
        pooled_projections=randn(gen, batch, cfg["in_text_dim2"]),
        visual_rope_pos=[torch.arange(frames), torch.arange(rows), torch.arange(cols)],
        text_rope_pos=torch.arange(TEXT_TOKENS),
    )


def _kandinsky6(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Channels-last video latents (B, F, H, W, C), with the zero condition latent and zero mask appended
    (2C + 1 channels) when ``visual_cond``, as the text-to-video pipeline does; audio latents
    (B, K6_AUDIO_TOKENS, in_audio_dim) denoised jointly (the pipeline's default ``sample_audio=True``); Qwen
    text tokens, a pooled CLIP vector, one flow-matching timestep in [0, 1000) shared by both modalities.
    Unpadded prompt (no ``encoder_attention_mask``), default RoPE positions, no reference frame."""
    p_t, p_h, p_w = cfg["patch_size"]
    latents = randn(gen, batch, *latent_grid(p_t, p_h, p_w), cfg["in_visual_dim"])
    if cfg["visual_cond"]:
        latents = torch.cat([latents, torch.zeros_like(latents), torch.zeros(*latents.shape[:-1], 1)], dim=-1)
    return dict(
        hidden_states=latents,
        audio_hidden_states=randn(gen, batch, K6_AUDIO_TOKENS, cfg["in_audio_dim"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["in_text_dim"]),
        pooled_projections=randn(gen, batch, cfg["in_text_dim2"]),
        timestep=float_timesteps(gen, batch),
    )


def _kandinsky6_sr(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Channels-last latent tiles (B, F, H, W, 2C + 1): the noisy latent, then the zero anchor latent and zero
    anchor mask of the anchor-free released checkpoints. The NABLA attention groups 8x8 token blocks, so the
    grid is 8x8 patches per frame rather than GRID_PATCHES. Flow-matching timestep in [0, 1000)."""
    from diffusers.models.transformers.transformer_kandinsky6_sr import FRACTAL_BLOCK_SIZE

    p_t, p_h, p_w = cfg["patch_size"]
    latents = randn(gen, batch, FRAME_PATCHES * p_t, FRACTAL_BLOCK_SIZE * p_h, FRACTAL_BLOCK_SIZE * p_w,
                    cfg["in_visual_dim"])
    anchor_mask = torch.zeros(*latents.shape[:-1], 1)
    return dict(
        hidden_states=torch.cat([latents, torch.zeros_like(latents), anchor_mask], dim=-1),
        timestep=float_timesteps(gen, batch),
    )


SPECS: dict[str, ClassSpec] = {
    "SanaVideoTransformer3DModel": ClassSpec(_sana_video, dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=12, num_layers=4,
        num_cross_attention_heads=2, cross_attention_head_dim=12, cross_attention_dim=24, caption_channels=16,
        patch_size=(1, 2, 2), rope_max_seq_len=32)),
    "SanaWMTransformer3DModel": ClassSpec(_sana_wm, dict(
        in_channels=4, num_layers=4, hidden_size=32, num_attention_heads=2, linear_head_dim=16, caption_channels=16,
        mlp_ratio=2.0, chunk_plucker_post_attn_blocks=4),
        notes="every 4th block (softmax_every_n) runs softmax instead of GDN linear attention, in the same block "
              "class; camera conditions feed every block (UCPE ray transforms shared across blocks, Plucker "
              "embedding added after self-attention); a deterministic camera path, not a random draw"),
    "SanaWMLTX2RefinerTransformer3DModel": ClassSpec(_sana_wm_refiner, dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32,
        audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2, audio_attention_head_dim=8,
        audio_cross_attention_dim=16, num_layers=4, caption_channels=16),
        notes="SANA-WM stage-2 refiner (LTX-2 weights), video stream only; tokens come in patchified (B, N, C); the "
              "pipeline denoises each AR block against a sliding-window KV cache (sink + history K/V captured by "
              "extra forwards), left out here; the audio submodules are built but unused"),
    "CosmosTransformer3DModel": ClassSpec(_cosmos, dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4, mlp_ratio=2.0,
        text_embed_dim=16, adaln_lora_dim=8, max_size=(8, 16, 16), patch_size=(1, 2, 2), concat_padding_mask=False),
        notes="tiny config sets concat_padding_mask=False: the padding-mask resize needs torchvision, which this "
              "environment lacks (real checkpoints concatenate it; the builder then passes padding_mask)"),
    "Cosmos3OmniTransformer": ClassSpec(_cosmos3_omni, dict(
        head_dim=16, hidden_size=32, intermediate_size=64, latent_channel=4, latent_patch_size=2, num_attention_heads=2,
        num_hidden_layers=4, num_key_value_heads=1, patch_latent_dim=16, rope_axes_dim=(4, 2, 2), vocab_size=64),
        latent="vision_tokens", timestep="vision_timesteps",
        notes="packed single sequence without a batch axis (a text prefix through causal attention, video tokens "
              "through full attention; both streams run through every layer with separate weights); the latent "
              "is a list of (1, C, F, H, W) tensors and the output a list of per-video predictions; the random "
              "prompt ids and positions are a guess at a tokenised prompt"),
    "Kandinsky5Transformer3DModel": ClassSpec(_kandinsky5, dict(
        in_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, out_visual_dim=4, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=64, num_text_blocks=2, num_visual_blocks=4, axes_dims=(4, 6, 6)),
        notes="text_transformer_blocks refine the text tokens before the visual blocks cross-attend to them; "
              "forward returns a bare tensor when return_dict=False; modulation layers are zero-initialised, "
              "so in a random-init model every block is an identity (all gates 0); NABLA-attention configs run "
              "dense here (sparse_params=None); with visual_cond the latent has 2C + 1 channels and the output C"),
    "Kandinsky6Transformer3DModel": ClassSpec(_kandinsky6, dict(
        in_visual_dim=4, out_visual_dim=4, in_text_dim=16, in_text_dim2=8, time_dim=16, patch_size=(1, 2, 2),
        model_dim=32, ff_dim=64, num_text_blocks=2, num_visual_blocks=4, axes_dims=(4, 6, 6), in_audio_dim=4,
        out_audio_dim=4, text_token_padding=True, ca_rope=True, cross_gates=True, fix_modulation=True),
        notes="video and audio are denoised together: audio_hidden_states is a second latent the sampler moves and "
              "the output tuple is (video, audio); each fused block runs video and audio streams with "
              "cross-modal attention; two text encoder lists (video_text_transformer_blocks, "
              "audio_text_transformer_blocks) run before them; with visual_cond the latent has 2C + 1 channels "
              "and the output C"),
    "Kandinsky6SRTransformer3DModel": ClassSpec(_kandinsky6_sr, dict(
        in_visual_dim=4, out_visual_dim=4, time_dim=16, patch_size=(1, 1, 1), model_dim=32, ff_dim=64,
        num_visual_blocks=4, axes_dims=(4, 6, 6)),
        notes="token grid fixed at 8x8 per frame (NABLA block size); attention always runs on the flex backend "
              "with a BlockMask built from q/k every block; latent has 2C + 1 channels and the output "
              "out_visual_dim (C, or n_grid * C for pi-flow checkpoints)"),
}
