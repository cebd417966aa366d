"""Image DiTs with latents ``(B, C, H, W)``: SD3-, PixArt-, Sana-, Lumina-, CogView-, DiT-like models
(Z-Image takes per-sample lists, Ideogram 4 one packed text + image sequence)."""

from __future__ import annotations

from typing import Any

import torch

from cachedit_fx.example_inputs.common import (
    GRID_PATCHES, TEXT_TOKENS, ClassSpec, float_timesteps, integer_timesteps, randn, unit_timesteps,
)

VAE_SCALE = 8
"""Pixels per latent pixel, for the size conditions some pipelines pass in pixel units."""


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


def _lumina2(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W), an all-ones (long) text mask; timestep in [0, 1] (the pipeline passes
    ``1 - t / 1000``, the model does not rescale it)."""
    side = GRID_PATCHES * cfg["patch_size"]
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        timestep=unit_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["cap_feat_dim"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
    )


def _z_image(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Lists of per-sample tensors, as the pipeline passes them: latents ``x`` of (C, F, H, W) with
    one frame per temporal patch, captions ``cap_feats`` of (L, D); ``t`` in [0, 1] (the model
    scales by ``t_scale``). Patch sizes are passed when the forward's defaults (2, 1) are not
    among the config's."""
    patch, patch_t = cfg["all_patch_size"][0], cfg["all_f_patch_size"][0]
    side = GRID_PATCHES * patch
    inputs = dict(
        x=[randn(gen, cfg["in_channels"], patch_t, side, side) for _ in range(batch)],
        t=unit_timesteps(gen, batch),
        cap_feats=[randn(gen, TEXT_TOKENS, cfg["cap_feat_dim"]) for _ in range(batch)],
    )
    if 2 not in cfg["all_patch_size"] or 1 not in cfg["all_f_patch_size"]:
        inputs.update(patch_size=patch, f_patch_size=patch_t)
    return inputs


def _aura_flow(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W); timestep in [0, 1] (scaled by 1000 inside). The model prepends 8
    register tokens to the text, so half of ``TEXT_TOKENS`` prompt tokens are given to keep the
    text stream (4 + 8) shorter than the 16 image tokens."""
    side = GRID_PATCHES * cfg["patch_size"]
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS // 2, cfg["joint_attention_dim"]),
        timestep=unit_timesteps(gen, batch),
    )


def _hunyuan_dit(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W); float timesteps in [0, 1000). Both text streams have the fixed
    lengths ``text_len`` (CLIP/BERT, width ``cross_attention_dim``) and ``text_len_t5`` (T5, width
    ``cross_attention_dim_t5``) with all-ones masks. The 2D rotary table is built as the pipeline
    does (square grid resized into ``base_size = 64 // patch_size``); size conditions are in pixels
    and style 0 when the config uses them."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed

    side = GRID_PATCHES * cfg["patch_size"]
    base_size = 512 // VAE_SCALE // cfg["patch_size"]
    inputs = dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        timestep=float_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, cfg["text_len"], cfg["cross_attention_dim"]),
        text_embedding_mask=torch.ones(batch, cfg["text_len"], dtype=torch.long),
        encoder_hidden_states_t5=randn(gen, batch, cfg["text_len_t5"], cfg["cross_attention_dim_t5"]),
        text_embedding_mask_t5=torch.ones(batch, cfg["text_len_t5"], dtype=torch.long),
        image_rotary_emb=get_2d_rotary_pos_embed(
            cfg["attention_head_dim"], ((0, 0), (base_size, base_size)), (GRID_PATCHES, GRID_PATCHES)),
    )
    if cfg["use_style_cond_and_image_meta_size"]:
        pixels = float(side * VAE_SCALE)
        inputs["image_meta_size"] = torch.tensor([[pixels, pixels, pixels, pixels, 0.0, 0.0]]).repeat(batch, 1)
        inputs["style"] = torch.zeros(batch, dtype=torch.long)
    return inputs


def _class_labels(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> torch.Tensor:
    """Class ids in [0, num_embeds_ada_norm) (the class-label table of ``ada_norm_zero`` blocks)."""
    return torch.randint(0, cfg["num_embeds_ada_norm"], (batch,), generator=gen)


def _sana(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W), an all-ones text mask. Timesteps as the pipelines pass them: integer-valued
    in [0, 1000) times ``timestep_scale``, or, for guidance-distilled (Sprint) configs, in [0, 1] with
    guidance 4.5 times ``guidance_embeds_scale``."""
    side = GRID_PATCHES * cfg["patch_size"]
    inputs = dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["caption_channels"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
    )
    if cfg["guidance_embeds"]:
        inputs["timestep"] = unit_timesteps(gen, batch)
        inputs["guidance"] = torch.full((batch,), 4.5 * cfg["guidance_embeds_scale"])
    else:
        inputs["timestep"] = float_timesteps(gen, batch) * cfg["timestep_scale"]
    return inputs


def _dit(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W), integer timesteps and class labels (class-conditional, no text)."""
    side = GRID_PATCHES * cfg["patch_size"]
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        timestep=integer_timesteps(gen, batch),
        class_labels=_class_labels(cfg, gen, batch),
    )


def _ada_norm_timestep(cfg: dict[str, Any], gen: torch.Generator) -> torch.Tensor:
    """One 0-d step index below ``num_embeds_ada_norm`` for the whole batch (``AdaLayerNorm`` embeds
    it and splits the result along dim 0, as the VQ-Diffusion pipeline passes it)."""
    return torch.randint(0, cfg["num_embeds_ada_norm"], (), generator=gen)


def _continuous_2d(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """U-Net-style feature maps (B, C, H, W) with one token per pixel (no patching); text tokens when
    the blocks cross-attend; timestep / class labels only for the adaptive norms that read them."""
    inputs = dict(hidden_states=randn(gen, batch, cfg["in_channels"], GRID_PATCHES, GRID_PATCHES))
    if cfg["cross_attention_dim"]:
        inputs["encoder_hidden_states"] = randn(gen, batch, TEXT_TOKENS, cfg["cross_attention_dim"])
    if cfg["norm_type"] == "ada_norm":
        inputs["timestep"] = _ada_norm_timestep(cfg, gen)
    elif cfg["norm_type"] in ("ada_norm_zero", "ada_norm_single"):
        inputs["timestep"] = integer_timesteps(gen, batch)
    if cfg["norm_type"] == "ada_norm_zero":
        inputs["class_labels"] = _class_labels(cfg, gen, batch)
    return inputs


def _transformer_2d(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """The generic class in each of its input modes. Patched (DiT / PixArt-alpha checkpoints): latents
    (B, C, H, W), integer timesteps, with class labels (``ada_norm_zero``) or text tokens and PixArt
    conditions (``ada_norm_single``). Continuous: see ``_continuous_2d``. Vectorized (VQ-Diffusion):
    latent pixel classes (B, sample_size**2) in [0, num_vector_embeds - 1), one 0-d step index."""
    if cfg["patch_size"] is None and cfg["num_vector_embeds"] is None:
        return _continuous_2d(cfg, gen, batch)
    if cfg["num_vector_embeds"] is not None:
        return dict(
            hidden_states=torch.randint(0, cfg["num_vector_embeds"] - 1, (batch, cfg["sample_size"] ** 2),
                                        generator=gen),
            encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["cross_attention_dim"]),
            timestep=_ada_norm_timestep(cfg, gen),
        )
    if cfg["norm_type"] == "ada_norm_single":
        return _pixart(cfg, gen, batch)
    inputs = _dit(cfg, gen, batch)
    if cfg["cross_attention_dim"]:
        inputs["encoder_hidden_states"] = randn(gen, batch, TEXT_TOKENS, cfg["cross_attention_dim"])
    return inputs


def _lumina_next(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W), an all-ones text mask, timestep in [0, 1] (``1 - t / 1000``) and the 2D
    rotary table the pipeline builds (there for 384 x 384 patches, cropped to the grid inside; here
    for the grid itself). ``cross_attention_kwargs`` carries the pipeline's default proportional
    attention base length (the blocks unpack it, so it cannot be None)."""
    from diffusers.models.embeddings import get_2d_rotary_pos_embed_lumina

    side = GRID_PATCHES * cfg["patch_size"]
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        timestep=unit_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["cross_attention_dim"]),
        encoder_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        image_rotary_emb=get_2d_rotary_pos_embed_lumina(
            cfg["hidden_size"] // cfg["num_attention_heads"], GRID_PATCHES, GRID_PATCHES),
        cross_attention_kwargs={"base_sequence_length": (cfg["sample_size"] * VAE_SCALE // 16) ** 2},
    )


def _size_conditions(side: int, batch: int, *names: str) -> dict[str, torch.Tensor]:
    """SDXL-like micro-conditions in pixels: sizes (H, W) of the generated image, crop (0, 0)."""
    pixels = float(side * VAE_SCALE)
    values = {"crop_coords": [0.0, 0.0]}
    return {name: torch.tensor([values.get(name, [pixels, pixels])]).repeat(batch, 1) for name in names}


def _cogview3plus(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W), integer timesteps, size conditions in pixels."""
    side = GRID_PATCHES * cfg["patch_size"]
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_embed_dim"]),
        timestep=integer_timesteps(gen, batch),
        **_size_conditions(side, batch, "original_size", "target_size", "crop_coords"),
    )


def _cogview4(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W), float timesteps in [0, 1000) (flow matching), size conditions in pixels;
    the rotary table is left to the model."""
    inputs = _cogview3plus(cfg, gen, batch)
    inputs["timestep"] = inputs["timestep"].float()
    return inputs


def _omnigen(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Text-to-image: latents (B, C, H, W), token ids of the prompt, no input images. The joint sequence
    is [text, time token, image]; the (B, S, S) mask is causal over text and the time token and full for
    image rows, position ids run 0..S-1, as the OmniGen processor builds them. Timestep in [0, 1]
    (the scheduler is configured with ``num_train_timesteps=1``)."""
    side = GRID_PATCHES * cfg["patch_size"]
    image_tokens = GRID_PATCHES * GRID_PATCHES
    prefix = TEXT_TOKENS + 1
    seq = prefix + image_tokens
    mask = torch.ones(seq, seq)
    mask[:prefix, :prefix] = torch.tril(torch.ones(prefix, prefix))
    mask[:prefix, prefix:] = 0.0
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        timestep=unit_timesteps(gen, batch),
        input_ids=torch.randint(0, cfg["vocab_size"], (batch, TEXT_TOKENS), generator=gen),
        input_img_latents=[],
        input_image_sizes={},
        attention_mask=mask.expand(batch, seq, seq).clone(),
        position_ids=torch.arange(seq).expand(batch, seq).clone(),
    )


def _glm_image(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W) plus one prior (AR-stage VQ) token id per image token, none dropped; glyph
    text embeddings; float timesteps in [0, 1000); target size in pixels, crop (0, 0)."""
    side = GRID_PATCHES * cfg["patch_size"]
    image_tokens = GRID_PATCHES * GRID_PATCHES
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_embed_dim"]),
        prior_token_id=torch.randint(0, cfg["prior_vq_quantizer_codebook_size"], (batch, image_tokens),
                                     generator=gen),
        prior_token_drop=torch.zeros(batch, image_tokens, dtype=torch.bool),
        timestep=float_timesteps(gen, batch),
        **_size_conditions(side, batch, "target_size", "crop_coords"),
    )


def _ernie_image(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W) (C already holds 2x2-packed VAE channels), padded text ``text_bth`` with its
    per-sample lengths (all full), float timesteps in [0, 1000)."""
    side = GRID_PATCHES * cfg["patch_size"]
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        timestep=float_timesteps(gen, batch),
        text_bth=randn(gen, batch, TEXT_TOKENS, cfg["text_in_dim"]),
        text_lens=torch.full((batch,), TEXT_TOKENS, dtype=torch.long),
    )


def _ideogram4(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """One packed sequence [text, image] per sample (no left padding): ``hidden_states`` (B, T + N, C)
    is zero on text positions and carries the patchified latents on image positions,
    ``encoder_hidden_states`` (B, T + N, llm_features_dim) the reverse. Position ids are (i, i, i) for
    text and (0, h, w) + 65536 for image tokens; one segment; indicator 3 (text) / 2 (image).
    Timestep in [0, 1] (1 is clean)."""
    from diffusers.models.transformers.transformer_ideogram4 import (
        IMAGE_POSITION_OFFSET, LLM_TOKEN_INDICATOR, OUTPUT_IMAGE_INDICATOR,
    )

    image_tokens = GRID_PATCHES * GRID_PATCHES
    seq = TEXT_TOKENS + image_tokens
    rows, cols = torch.meshgrid(torch.arange(GRID_PATCHES), torch.arange(GRID_PATCHES), indexing="ij")
    image_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3) + IMAGE_POSITION_OFFSET
    text_ids = torch.arange(TEXT_TOKENS).unsqueeze(-1).expand(-1, 3)
    indicator = torch.cat([torch.full((TEXT_TOKENS,), LLM_TOKEN_INDICATOR),
                           torch.full((image_tokens,), OUTPUT_IMAGE_INDICATOR)])
    hidden_states = torch.cat([torch.zeros(batch, TEXT_TOKENS, cfg["in_channels"]),
                               randn(gen, batch, image_tokens, cfg["in_channels"])], dim=1)
    text = torch.cat([randn(gen, batch, TEXT_TOKENS, cfg["llm_features_dim"]),
                      torch.zeros(batch, image_tokens, cfg["llm_features_dim"])], dim=1)
    return dict(
        hidden_states=hidden_states,
        timestep=unit_timesteps(gen, batch),
        encoder_hidden_states=text,
        position_ids=torch.cat([text_ids, image_ids]).expand(batch, seq, 3).clone(),
        segment_ids=torch.ones(batch, seq, dtype=torch.long),
        indicator=indicator.expand(batch, seq).clone(),
    )


def _prx(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W), an all-true (bool) text mask, timestep in [0, 1] (scaled by ``time_factor``
    inside)."""
    side = GRID_PATCHES * cfg["patch_size"]
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        timestep=unit_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["context_in_dim"]),
        attention_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.bool),
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
    "Lumina2Transformer2DModel": ClassSpec(_lumina2, dict(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=4, num_refiner_layers=2,
        num_attention_heads=2, num_kv_heads=1, multiple_of=16, axes_dim_rope=(4, 6, 6), axes_lens=(32, 16, 16),
        cap_feat_dim=16)),
    "ZImageTransformer2DModel": ClassSpec(_z_image, dict(
        all_patch_size=(2,), all_f_patch_size=(1,), in_channels=4, dim=32, n_layers=4, n_refiner_layers=2,
        n_heads=2, n_kv_heads=2, cap_feat_dim=16, axes_dims=[4, 6, 6], axes_lens=[96, 16, 16]),
        latent="x", timestep="t",
        notes="inputs and output are lists of per-sample (C, F, H, W) tensors; image and caption tokens are "
              "each padded to a multiple of 32 inside, so both refiner streams are 32 tokens long"),
    "AuraFlowTransformer2DModel": ClassSpec(_aura_flow, dict(
        sample_size=8, patch_size=2, in_channels=4, num_mmdit_layers=2, num_single_dit_layers=4,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=32,
        out_channels=4, pos_embed_max_size=64),
        notes="8 learned register tokens are prepended to the text; 4 prompt tokens are given"),
    "HunyuanDiT2DModel": ClassSpec(_hunyuan_dit, dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, patch_size=2, sample_size=8, hidden_size=32,
        num_layers=4, cross_attention_dim=16, cross_attention_dim_t5=16, pooled_projection_dim=16, text_len=8,
        text_len_t5=12),
        notes="text lengths are fixed by the config (text_len + text_len_t5); the second half of the blocks takes "
              "U-Net-style skips from the first half; output has 2x channels (learn_sigma)"),
    "SanaTransformer2DModel": ClassSpec(_sana, dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4,
        num_cross_attention_heads=2, cross_attention_head_dim=16, cross_attention_dim=32, caption_channels=16,
        sample_size=8, patch_size=1)),
    "DiTTransformer2DModel": ClassSpec(_dit, dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=4, sample_size=8,
        patch_size=2, num_embeds_ada_norm=10)),
    "Transformer2DModel": ClassSpec(_transformer_2d, dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8, num_layers=4,
        cross_attention_dim=32, attention_bias=True, sample_size=8, patch_size=2, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        caption_channels=16),
        notes="tiny config is PixArt-alpha-like (patched, ada_norm_single, cross-attention, caption projection)"),
    "LuminaNextDiT2DModel": ClassSpec(_lumina_next, dict(
        sample_size=8, patch_size=2, in_channels=4, hidden_size=32, num_layers=4, num_attention_heads=2,
        num_kv_heads=1, multiple_of=16, cross_attention_dim=16),
        notes="output has 2x channels (learn_sigma)"),
    "CogView3PlusTransformer2DModel": ClassSpec(_cogview3plus, dict(
        patch_size=2, in_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=2, out_channels=4,
        text_embed_dim=16, time_embed_dim=16, condition_dim=8, pos_embed_max_size=8, sample_size=8)),
    "CogView4Transformer2DModel": ClassSpec(_cogview4, dict(
        patch_size=2, in_channels=4, out_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=2,
        text_embed_dim=16, time_embed_dim=16, condition_dim=8, pos_embed_max_size=8, sample_size=8,
        rope_axes_dim=(16, 16))),
    "OmniGenTransformer2DModel": ClassSpec(_omnigen, dict(
        in_channels=4, patch_size=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, num_layers=4, pad_token_id=0, vocab_size=64, pos_embed_max_size=8,
        rope_scaling={"short_factor": [1.0] * 8, "long_factor": [1.0] * 8}, time_step_dim=32),
        notes="text-to-image only (no input images); text and image share one sequence with a time token between"),
    "DreamLiteTransformer2DModel": ClassSpec(_continuous_2d, dict(
        num_attention_heads=2, attention_head_dim=16, in_channels=32, num_layers=4, norm_num_groups=8,
        cross_attention_dim=16, qk_norm="rms_norm", ff_mult=2), timestep=None,
        notes="a U-Net mid-level sub-module (continuous input, residual around the blocks); takes no timestep "
              "with layer_norm"),
    "GlmImageTransformer2DModel": ClassSpec(_glm_image, dict(
        patch_size=2, in_channels=4, out_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=2,
        text_embed_dim=16, time_embed_dim=16, condition_dim=8, prior_vq_quantizer_codebook_size=64),
        notes="prior_token_id (one AR-stage token per image token) is random; kv_caches (image editing) not given"),
    "ErnieImageTransformer2DModel": ClassSpec(_ernie_image, dict(
        hidden_size=32, num_attention_heads=2, num_layers=4, ffn_hidden_size=64, in_channels=16, out_channels=16,
        patch_size=1, text_in_dim=16, rope_axes_dim=(4, 6, 6)),
        notes="adaLN_modulation and final_linear are zero-initialised, so a random-init model outputs zeros; "
              "blocks run sequence-first (S, B, D)"),
    "Ideogram4Transformer2DModel": ClassSpec(_ideogram4, dict(
        in_channels=16, num_layers=4, attention_head_dim=16, num_attention_heads=2, intermediate_size=64,
        adaln_dim=16, llm_features_dim=24, mrope_section=(4, 2, 2)),
        notes="latent is the packed [text, image] sequence (text positions zero); the output covers every "
              "position, only image rows are meaningful; the pipeline's unconditional pass uses a second model"),
    "PRXTransformer2DModel": ClassSpec(_prx, dict(
        in_channels=4, patch_size=2, context_in_dim=16, hidden_size=32, mlp_ratio=2.0, num_heads=2, depth=4,
        axes_dim=[8, 8])),
}
