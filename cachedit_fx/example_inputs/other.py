"""Transformer classes of ``diffusers.models.transformers`` outside image and video DiTs
(audio DiTs, priors, temporal layers of UNets, ...): specs where they are denoising DiTs with a
repeated block list, and the reason where they are left out of coverage."""

from __future__ import annotations

from typing import Any

import torch

from cachedit_fx.example_inputs.common import (
    GRID_PATCHES, TEXT_TOKENS, ClassSpec, integer_timesteps, randn, unit_timesteps,
)

AUDIO_TOKENS = GRID_PATCHES * GRID_PATCHES
"""Latent audio frames after patching: as many tokens as a 4x4 image grid."""


def _stable_audio(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, in_channels, T), T = 16 frames. Cross-attention context: prompt plus start/end-second
    tokens (TEXT_TOKENS in all); one global duration token; timestep in [0, 1) (the cosine DPM scheduler's
    atan(sigma) * 2 / pi). ``rotary_embedding`` is the (cos, sin) pair over ``attention_head_dim // 2``
    channels for the T + 1 positions (global token prepended), as the pipeline computes it."""
    from diffusers.models.embeddings import get_1d_rotary_pos_embed

    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], AUDIO_TOKENS),
        timestep=unit_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["cross_attention_input_dim"]),
        global_hidden_states=randn(gen, batch, 1, cfg["global_states_input_dim"]),
        rotary_embedding=get_1d_rotary_pos_embed(cfg["attention_head_dim"] // 2, AUDIO_TOKENS + 1, use_real=True,
                                                 repeat_interleave_real=False),
    )


def _stable_audio3(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, io_channels, T), T = 16 * patch_size frames. Context: prompt tokens plus the duration
    token (TEXT_TOKENS in all) with an all-ones mask; global duration embedding (B, global_cond_dim);
    timestep in [0, 1] (the model's documented flow time)."""
    return dict(
        hidden_states=randn(gen, batch, cfg["io_channels"], AUDIO_TOKENS * cfg["patch_size"]),
        timestep=unit_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["cond_token_dim"]),
        global_hidden_states=randn(gen, batch, cfg["global_cond_dim"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
    )


def _ace_step(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, T, audio_acoustic_hidden_dim), channels last, T = 16 * patch_size frames.
    ``context_latents`` (B, T, in_channels - audio_acoustic_hidden_dim): source latents then an all-ones
    chunk mask, as in text-to-music. Condition-encoder tokens of width ``encoder_hidden_size`` (else
    ``hidden_size``). Timestep in [0, 1] (scaled by 1000 inside) and ``timestep_r`` equal to it, as the
    pipeline passes."""
    frames = AUDIO_TOKENS * cfg["patch_size"]
    acoustic = cfg["audio_acoustic_hidden_dim"]
    timestep = unit_timesteps(gen, batch)
    return dict(
        hidden_states=randn(gen, batch, frames, acoustic),
        timestep=timestep,
        timestep_r=timestep.clone(),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["encoder_hidden_size"] or cfg["hidden_size"]),
        context_latents=torch.cat([randn(gen, batch, frames, acoustic),
                                   torch.ones(batch, frames, cfg["in_channels"] - 2 * acoustic)], dim=-1),
    )


def _longcat_audio(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, T, latent_dim), channels last, T = 16 frames; all-true (bool) frame and text masks;
    ``latent_cond`` zeros when the model uses it, as the text-to-audio pipeline passes; timestep in [0, 1]
    (scaled by 1000 inside)."""
    inputs = dict(
        hidden_states=randn(gen, batch, AUDIO_TOKENS, cfg["latent_dim"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["dit_text_dim"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.bool),
        timestep=unit_timesteps(gen, batch),
        attention_mask=torch.ones(batch, AUDIO_TOKENS, dtype=torch.bool),
    )
    if cfg["use_latent_condition"]:
        inputs["latent_cond"] = torch.zeros(batch, AUDIO_TOKENS, cfg["latent_dim"])
    return inputs


def _minimax_music3(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, in_channels, T), T = 16 frames; ``encoder_hidden_states`` is the frame-aligned
    condition (B, T, condition_dim), one row per latent frame; flow time in [0, 1] (0 = noise)."""
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], AUDIO_TOKENS),
        timestep=unit_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, AUDIO_TOKENS, cfg["condition_dim"]),
    )


def _prior(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """With a text projection (Kandinsky 2.x / unCLIP priors): one CLIP image embedding
    (B, embedding_dim) and exactly ``num_embeddings`` text tokens (causal mask and position table are sized
    for them) with an all-ones mask. Without (Shap-E): latents (B, num_embeddings, embedding_dim) and no
    text. ``proj_embedding`` (B, embedding_proj_dim) in both; integer timesteps."""
    inputs = dict(timestep=integer_timesteps(gen, batch),
                  proj_embedding=randn(gen, batch, cfg["embedding_proj_dim"] or cfg["embedding_dim"]))
    if cfg["encoder_hid_proj_type"] is None:
        inputs["hidden_states"] = randn(gen, batch, cfg["num_embeddings"], cfg["embedding_dim"])
        return inputs
    inputs["hidden_states"] = randn(gen, batch, cfg["embedding_dim"])
    inputs["encoder_hidden_states"] = randn(gen, batch, cfg["num_embeddings"], cfg["embedding_dim"])
    inputs["attention_mask"] = torch.ones(batch, cfg["num_embeddings"], dtype=torch.bool)
    return inputs


SPECS: dict[str, ClassSpec] = {
    "StableAudioDiTModel": ClassSpec(_stable_audio, dict(
        sample_size=16, in_channels=8, num_layers=4, attention_head_dim=16, num_attention_heads=2,
        num_key_value_attention_heads=1, out_channels=8, cross_attention_dim=16, time_proj_dim=16,
        global_states_input_dim=16, cross_attention_input_dim=16)),
    "StableAudio3DiTModel": ClassSpec(_stable_audio3, dict(
        io_channels=8, patch_size=1, embed_dim=32, depth=4, num_heads=2, cond_token_dim=16, global_cond_dim=16,
        local_add_cond_dim=8, timestep_features_dim=16, ff_mult=2.0, num_memory_tokens=4),
        notes="Timestep in [0, 1] follows the model docstring; the pipeline passes the FlowMatchEuler scheduler's "
              "timesteps unchanged, which are in [0, 1] only if the released scheduler config uses "
              "num_train_timesteps=1 (not checked offline)."),
    "AceStepTransformer1DModel": ClassSpec(_ace_step, dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, in_channels=24, audio_acoustic_hidden_dim=8, patch_size=2, sliding_window=4)),
    "LongCatAudioDiTTransformer": ClassSpec(_longcat_audio, dict(
        dit_dim=32, dit_depth=4, dit_heads=2, dit_text_dim=16, latent_dim=8, ff_mult=2.0),
        notes="__init__ zero-initialises proj_out, norm_out.linear and adaln_global_mlp, so a random-init model "
              "outputs exactly zero."),
    "MiniMaxMusic3Transformer1DModel": ClassSpec(_minimax_music3, dict(
        in_channels=8, condition_dim=16, num_layers=4, num_attention_heads=2, attention_head_dim=16,
        ff_inner_dim=64, rotary_dim=8, fourier_embedding_dim=16),
        notes="The condition is aligned to the latent frames, so it has the latent length, not TEXT_TOKENS."),
    "PriorTransformer": ClassSpec(_prior, dict(
        num_attention_heads=2, attention_head_dim=8, num_layers=4, embedding_dim=16, num_embeddings=TEXT_TOKENS,
        additional_embeddings=4),
        notes="Diffusion prior: the latent is a CLIP image embedding, one token (Kandinsky 2.x / unCLIP priors), "
              "or Shap-E's (num_embeddings, embedding_dim) latents; text length fixed by num_embeddings."),
}

NOT_COVERED: dict[str, str] = {
    "MiniMaxMusic3RVQDepthDecoder": (
        "Autoregressive depth decoder (local language model) of MiniMax Music 3: predicts the residual RVQ codes "
        "of each audio frame token by token in MiniMaxMusic3ModularPipeline; not a diffusion denoiser."),
    "T5FilmDecoder": (
        "T5-style FiLM decoder that denoises mel-spectrogram segments in the deprecated "
        "SpectrogramDiffusionPipeline (MIDI-to-audio); left out because of its non-standard forward "
        "(encoder outputs as a list of (encoding, mask) pairs, no return_dict)."),
    "TransformerTemporalModel": (
        "Temporal attention layer inside UNet3DConditionModel and I2VGenXLUNet (TextToVideoSDPipeline, "
        "VideoToVideoSDPipeline, I2VGenXLPipeline), called once per UNet block rather than once per "
        "denoising step."),
    "RFD4ProteinaTransformer": (
        "Flow-matching denoiser of protein backbones and per-residue latents in RFD4ProteinaPipeline (protein "
        "design, not image/video/audio); it takes a molecular feature dict and runs its trunk several times "
        "per step (recycling), with pair-update blocks between trunk layers."),
}
"""Class name -> why it is not a DiT this backend targets."""
