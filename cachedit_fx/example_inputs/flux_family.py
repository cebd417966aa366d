"""FLUX-like image DiTs: packed latents ``(B, h*w, C)`` with positional ids or image shapes,
text tokens beside them (double-stream then single-stream blocks, or MMDiT blocks)."""

from __future__ import annotations

from typing import Any

import torch

from cachedit_fx.example_inputs.common import (
    FRAME_PATCHES, GRID_PATCHES, TEXT_TOKENS, ClassSpec, float_timesteps, randn, unit_timesteps,
)

BYT5_TOKENS = 6
"""Glyph (ByT5) text tokens of HunyuanImage, apart from the main text's."""


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


def _grid_ids_4d() -> torch.Tensor:
    """(t=0, row, col, l=0) ids of the ``GRID_PATCHES x GRID_PATCHES`` image tokens (FLUX.2 layout)."""
    rows, cols = torch.meshgrid(torch.arange(GRID_PATCHES), torch.arange(GRID_PATCHES), indexing="ij")
    zeros = torch.zeros_like(rows)
    return torch.stack([zeros, rows, cols, zeros], dim=-1).reshape(-1, 4).float()


def _text_ids_4d(tokens: int) -> torch.Tensor:
    """(0, 0, 0, index) ids of ``tokens`` text tokens (FLUX.2 layout)."""
    ids = torch.zeros(tokens, 4)
    ids[:, 3] = torch.arange(tokens)
    return ids


def _flux2(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels) with (t, h, w, l) ids; timestep in [0, 1) (x1000 inside);
    guidance scale 4 (x1000 inside) when embedded."""
    inputs = dict(
        hidden_states=randn(gen, batch, GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        timestep=unit_timesteps(gen, batch),
        img_ids=_grid_ids_4d(),
        txt_ids=_text_ids_4d(TEXT_TOKENS),
    )
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.full((batch,), 4.0)
    return inputs


def _flux3(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels) with (t, h, w, l) ids (h, w scaled by the pipeline's image
    RoPE scale 0.5), text ids along l; timestep in [0, 1) (x1000 inside). Flow-map configs also get the
    timestep the step jumps to (half the current one). No reference-image tokens."""
    timestep = unit_timesteps(gen, batch)
    inputs = dict(
        hidden_states=randn(gen, batch, GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        timestep=timestep,
        img_ids=_grid_ids_4d() * torch.tensor([1.0, 0.5, 0.5, 1.0]),
        txt_ids=_text_ids_4d(TEXT_TOKENS),
    )
    if cfg["flow_map"]:
        inputs["target_timestep"] = timestep * 0.5
    return inputs


def _chroma(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels), FLUX ids, no pooled text; the pipeline's joint mask
    (B, text + image tokens), here all kept."""
    image_tokens = GRID_PATCHES * GRID_PATCHES
    return dict(
        hidden_states=randn(gen, batch, image_tokens, cfg["in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        timestep=unit_timesteps(gen, batch),
        img_ids=_image_ids(),
        txt_ids=torch.zeros(TEXT_TOKENS, 3),
        attention_mask=torch.ones(batch, TEXT_TOKENS + image_tokens, dtype=torch.bool),
    )


def _hidream(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Square latents (B, C, H, W) (patched inside, no padding mask); T5 tokens and a stack of Llama
    hidden states (layers, B, L, D) of which ``llama_layers`` feed the blocks; float timesteps in
    [0, 1000)."""
    side = GRID_PATCHES * cfg["patch_size"]
    t5_width, llama_width = cfg["caption_channels"]
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        timesteps=float_timesteps(gen, batch),
        encoder_hidden_states_t5=randn(gen, batch, TEXT_TOKENS, t5_width),
        encoder_hidden_states_llama3=randn(gen, max(cfg["llama_layers"]) + 1, batch, TEXT_TOKENS, llama_width),
        pooled_embeds=randn(gen, batch, cfg["text_emb_dim"]),
    )


def _bria(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels), FLUX ids, no pooled text; float timesteps in [0, 1000)
    (not rescaled inside). ``guidance`` is never passed: the pipelines do not pass it (and the
    model skips its embedder without it)."""
    return dict(
        hidden_states=randn(gen, batch, GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        timestep=float_timesteps(gen, batch),
        img_ids=_image_ids(),
        txt_ids=torch.zeros(TEXT_TOKENS, 3),
    )


def _bria_fibo(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """As Bria, plus one text-encoder hidden state (B, L, text_encoder_dim) per block (double blocks,
    then single blocks) in ``text_encoder_layers``."""
    inputs = _bria(cfg, gen, batch)
    blocks = cfg["num_layers"] + cfg["num_single_layers"]
    inputs["text_encoder_layers"] = [randn(gen, batch, TEXT_TOKENS, cfg["text_encoder_dim"]) for _ in range(blocks)]
    return inputs


def _bria_fibo2(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W); text as bundles (B, 1 + len(injection_layer_ids), L, cap_feat_dim): the
    Perceiver's first, then one per injection block; timestep in [0, 1) (x t_scale inside). No text
    mask (nothing padded) and no images to edit."""
    side = GRID_PATCHES * cfg["patch_size"]
    bundles = 1 + len(cfg["injection_layer_ids"])
    return dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], side, side),
        timestep=unit_timesteps(gen, batch),
        encoder_hidden_states=randn(gen, batch, bundles, TEXT_TOKENS, cfg["cap_feat_dim"]),
    )


def _ovis_image(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels), (0, row, col) image ids and (0, i, i) text ids as the
    pipeline builds them; timestep in [0, 1) (x1000 inside)."""
    text_ids = torch.zeros(TEXT_TOKENS, 3)
    text_ids[:, 1] = text_ids[:, 2] = torch.arange(TEXT_TOKENS)
    return dict(
        hidden_states=randn(gen, batch, GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        timestep=unit_timesteps(gen, batch),
        img_ids=_image_ids(),
        txt_ids=text_ids,
    )


def _longcat_image(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels); text ids (0, i, i), image ids (1, L + row, L + col) past
    the L text positions (the pipeline pads text to its tokenizer length and offsets the image by it);
    timestep in [0, 1) (x1000 inside)."""
    text_ids = torch.zeros(TEXT_TOKENS, 3)
    text_ids[:, 1] = text_ids[:, 2] = torch.arange(TEXT_TOKENS)
    image_ids = _image_ids() + torch.tensor([1.0, TEXT_TOKENS, TEXT_TOKENS])
    return dict(
        hidden_states=randn(gen, batch, GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        timestep=unit_timesteps(gen, batch),
        img_ids=image_ids,
        txt_ids=text_ids,
    )


def _krea2(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels); text as tapped encoder layers (B, L, num_text_layers,
    text_hidden_dim); joint (t, h, w) position ids, zero for text; timestep in [0, 1) (x1000 inside).
    No text mask (nothing padded)."""
    position_ids = torch.cat([torch.zeros(TEXT_TOKENS, 3), _image_ids()])
    return dict(
        hidden_states=randn(gen, batch, GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["num_text_layers"], cfg["text_hidden_dim"]),
        timestep=unit_timesteps(gen, batch),
        position_ids=position_ids,
    )


def _hunyuan_image(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W), or (B, C, F, H, W) for a 3-axis patch size (refiner); an all-ones text
    mask; float timesteps in [0, 1000). ByT5 tokens (with their mask) when ``text_embed_2_dim`` is
    set, guidance scale 3.25 (x1000) when embedded, the next (smaller) timestep when meanflow."""
    patch = cfg["patch_size"]
    sizes = ([FRAME_PATCHES] if len(patch) == 3 else []) + [GRID_PATCHES, GRID_PATCHES]
    timestep = float_timesteps(gen, batch)
    inputs = dict(
        hidden_states=randn(gen, batch, cfg["in_channels"], *(n * p for n, p in zip(sizes, patch))),
        timestep=timestep,
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["text_embed_dim"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS),
    )
    if cfg["text_embed_2_dim"] is not None:
        inputs["encoder_hidden_states_2"] = randn(gen, batch, BYT5_TOKENS, cfg["text_embed_2_dim"])
        inputs["encoder_attention_mask_2"] = torch.ones(batch, BYT5_TOKENS)
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.full((batch,), 3250.0)
    if cfg["use_meanflow"]:
        inputs["timestep_r"] = timestep * 0.5
    return inputs


def _qwen_image21(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels) of one target image; ``img_mask`` (B, L + h*w/4) marks the
    target's slots appended after the L text positions (one slot per 2x2 group of tokens); timestep in
    [0, 1) (x1000 inside). No text mask (nothing padded)."""
    image_tokens = GRID_PATCHES * GRID_PATCHES
    img_mask = torch.cat([torch.zeros(batch, TEXT_TOKENS, dtype=torch.bool),
                          torch.ones(batch, image_tokens // 4, dtype=torch.bool)], dim=1)
    return dict(
        hidden_states=randn(gen, batch, image_tokens, cfg["in_channels"] * cfg["patch_size"] ** 2),
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["context_in_dim"]),
        timestep=unit_timesteps(gen, batch),
        img_shapes=[[(1, GRID_PATCHES, GRID_PATCHES)]] * batch,
        img_mask=img_mask,
    )


def _nucleus_moe_image(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels) with ``img_shapes`` (1, h, w) per sample; text is attended
    by cross-attention; timestep in [0, 1) (x1000 inside). No text mask (nothing padded)."""
    return dict(
        hidden_states=randn(gen, batch, GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        img_shapes=[(1, GRID_PATCHES, GRID_PATCHES)] * batch,
        encoder_hidden_states=randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        timestep=unit_timesteps(gen, batch),
    )


SPECS: dict[str, ClassSpec] = {
    "FluxTransformer2DModel": ClassSpec(_flux, dict(
        patch_size=1, in_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])),
    "QwenImageTransformer2DModel": ClassSpec(_qwen_image, dict(
        patch_size=2, in_channels=16, out_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=4,
        joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4))),
    "Flux2Transformer2DModel": ClassSpec(_flux2, dict(
        patch_size=1, in_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=True)),
    "ChromaTransformer2DModel": ClassSpec(_chroma, dict(
        patch_size=1, in_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 4, 8), approximator_num_channels=16,
        approximator_hidden_dim=32, approximator_layers=2)),
    "HiDreamImageTransformer2DModel": ClassSpec(_hidream, dict(
        patch_size=2, in_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=8,
        num_attention_heads=2, caption_channels=[16, 24], text_emb_dim=16, num_routed_experts=2,
        num_activated_experts=1, axes_dims_rope=(4, 2, 2), max_resolution=(16, 16),
        llama_layers=[0, 1, 2, 3, 4, 5, 6, 7]),
        timestep="timesteps",
        notes="Each block also takes its own Llama-layer tokens (picked by llama_layers from the stacked input): "
              "appended to the text in double blocks, to the joint sequence in single blocks (sliced off after)."),
    "Flux3Transformer2DModel": ClassSpec(_flux3, dict(
        in_channels=4, cond_in_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, timestep_channels=32, axes_dims_rope=(4, 4, 4, 4)),
        notes="mode_blocks.image_cond stays idle: no reference-image tokens are given."),
    "BriaTransformer2DModel": ClassSpec(_bria, dict(
        patch_size=1, in_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8])),
    "BriaFiboTransformer2DModel": ClassSpec(_bria_fibo, dict(
        patch_size=1, in_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=[4, 4, 8], text_encoder_dim=24)),
    "BriaFibo2Transformer2DModel": ClassSpec(_bria_fibo2, dict(
        in_channels=4, patch_size=2, dim=32, n_layers=4, n_refiner_layers=2, n_heads=2, cap_feat_dim=16,
        injection_layer_ids=(1, 3), perceiver_num_layers=2, min_num_gist_tokens=4, max_num_gist_tokens=12,
        gist_step=4, gist_min_text_len=4, gist_max_text_len=16, axes_dims=(4, 6, 6), axes_lens=(32, 16, 16))),
    "OvisImageTransformer2DModel": ClassSpec(_ovis_image, dict(
        patch_size=1, in_channels=4, out_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 4, 8))),
    "LongCatImageTransformer2DModel": ClassSpec(_longcat_image, dict(
        patch_size=1, in_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])),
    "Krea2Transformer2DModel": ClassSpec(_krea2, dict(
        in_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=64, timestep_embed_dim=32, text_hidden_dim=16, num_text_layers=3,
        text_num_attention_heads=2, text_num_key_value_heads=2, text_intermediate_size=32,
        num_layerwise_text_blocks=2, num_refiner_text_blocks=2, axes_dims_rope=(4, 6, 6))),
    "HunyuanImageTransformer2DModel": ClassSpec(_hunyuan_image, dict(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=16, num_layers=4,
        num_single_layers=4, num_refiner_layers=2, patch_size=(1, 1), text_embed_dim=16, rope_axes_dim=(8, 8)),
        notes="Tiny config has no ByT5 branch (its projection is fixed 2048 wide, ~4M params); real 2.1 configs "
              "get ByT5 tokens, whose per-sample boolean reordering runs in the forward."),
    "QwenImage21Transformer2DModel": ClassSpec(_qwen_image21, dict(
        in_channels=4, out_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=2,
        context_in_dim=16, axes_dims_rope=(4, 6, 6)),
        notes="Output is the whole joint sequence (B, L + h*w, C); the pipeline keeps its last h*w tokens."),
    "NucleusMoEImageTransformer2DModel": ClassSpec(_nucleus_moe_image, dict(
        patch_size=1, in_channels=4, num_layers=4, attention_head_dim=16, num_attention_heads=2,
        num_key_value_heads=1, joint_attention_dim=16, axes_dims_rope=(4, 6, 6), mlp_ratio=6.0,
        dense_moe_strategy="leave_first_block_dense", num_experts=4, moe_intermediate_dim=0,
        capacity_factors=2.0),
        notes="Routed experts are torch.empty (never initialised), so random-init MoE outputs are garbage; the tiny "
              "config gives experts and shared expert zero width: routing runs, the MoE MLPs add 0."),
}
