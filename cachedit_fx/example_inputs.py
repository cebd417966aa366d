"""Synthetic forward kwargs for diffusers DiT classes, derived from a model's config alone.

``example_inputs_for(class_name, config)`` returns kwargs such that
``model(**kwargs, return_dict=False)[0]`` runs for ``model = getattr(diffusers, class_name)
.from_config(config)``. Inputs are small: 4x4 spatial patches, 2 temporal patches for video
models, 8 text tokens (unless the architecture fixes the text length), float32 on CPU, drawn
from one generator seeded with ``seed``. Timesteps follow each pipeline's convention (in [0, 1]
for Flux / QwenImage, integer-valued in [0, 1000) otherwise). Config keys the dict lacks take
the class's ``__init__`` defaults.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch

GRID_PATCHES = 4
FRAME_PATCHES = 2
TEXT_TOKENS = 8
WAN_TEXT_TOKENS_WITH_IMAGE = 512
IMAGE_EMBED_TOKENS = 4

InputsBuilder = Callable[[dict[str, Any], torch.Generator, int], dict[str, Any]]


def _randn(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=gen)


def _integer_timesteps(gen: torch.Generator, batch: int) -> torch.Tensor:
    """Integer-valued (long) timesteps in [0, 1000), one per sample."""
    return torch.randint(0, 1000, (batch,), generator=gen)


def _unit_timesteps(gen: torch.Generator, batch: int) -> torch.Tensor:
    """Float timesteps in [0, 1), one per sample (models that scale by 1000 internally)."""
    return torch.rand(batch, generator=gen)


def _flux(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels); ids are (0, row, col) for image and 0 for text tokens."""
    rows, cols = torch.meshgrid(torch.arange(GRID_PATCHES), torch.arange(GRID_PATCHES), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], dim=-1).reshape(-1, 3).float()
    inputs = dict(
        hidden_states=_randn(gen, batch, GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        encoder_hidden_states=_randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        pooled_projections=_randn(gen, batch, cfg["pooled_projection_dim"]),
        timestep=_unit_timesteps(gen, batch),
        img_ids=img_ids,
        txt_ids=torch.zeros(TEXT_TOKENS, 3),
    )
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.full((batch,), 3.5)
    return inputs


def _qwen_image(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Packed latents (B, h*w, in_channels) with ``img_shapes`` in patch units, one frame.

    ``guidance`` is never passed: the class accepts ``guidance_embeds`` but has no guidance embedder."""
    inputs = dict(
        hidden_states=_randn(gen, batch, GRID_PATCHES * GRID_PATCHES, cfg["in_channels"]),
        encoder_hidden_states=_randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        encoder_hidden_states_mask=torch.ones(batch, TEXT_TOKENS, dtype=torch.long),
        timestep=_unit_timesteps(gen, batch),
        img_shapes=[[(1, GRID_PATCHES, GRID_PATCHES)]] * batch,
    )
    if cfg["use_additional_t_cond"]:
        inputs["additional_t_cond"] = torch.zeros(batch, dtype=torch.long)
    return inputs


def _wan(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Video latents (B, C, F, H, W). With ``added_kv_proj_dim`` (image-to-video) the text length is the
    512 the attention processor hard-codes, and CLIP image tokens go in ``encoder_hidden_states_image``
    (two images per sample, stacked on the batch axis, when ``pos_embed_seq_len`` is set)."""
    p_t, p_h, p_w = cfg["patch_size"]
    text_tokens = WAN_TEXT_TOKENS_WITH_IMAGE if cfg["added_kv_proj_dim"] is not None else TEXT_TOKENS
    inputs = dict(
        hidden_states=_randn(gen, batch, cfg["in_channels"], FRAME_PATCHES * p_t, GRID_PATCHES * p_h,
                             GRID_PATCHES * p_w),
        encoder_hidden_states=_randn(gen, batch, text_tokens, cfg["text_dim"]),
        timestep=_integer_timesteps(gen, batch),
    )
    if cfg["image_dim"] is not None:
        if cfg["pos_embed_seq_len"] is not None:
            image_shape = (2 * batch, cfg["pos_embed_seq_len"] // 2, cfg["image_dim"])
        else:
            image_shape = (batch, IMAGE_EMBED_TOKENS, cfg["image_dim"])
        inputs["encoder_hidden_states_image"] = _randn(gen, *image_shape)
    return inputs


def _sd3(cfg: dict[str, Any], gen: torch.Generator, batch: int) -> dict[str, Any]:
    """Latents (B, C, H, W); the position embedding is cropped from ``pos_embed_max_size``."""
    side = GRID_PATCHES * cfg["patch_size"]
    return dict(
        hidden_states=_randn(gen, batch, cfg["in_channels"], side, side),
        encoder_hidden_states=_randn(gen, batch, TEXT_TOKENS, cfg["joint_attention_dim"]),
        pooled_projections=_randn(gen, batch, cfg["pooled_projection_dim"]),
        timestep=_integer_timesteps(gen, batch),
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
        hidden_states=_randn(gen, batch, frames, cfg["in_channels"], height, width),
        encoder_hidden_states=_randn(gen, batch, cfg["max_text_seq_length"], cfg["text_embed_dim"]),
        timestep=_integer_timesteps(gen, batch),
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
        hidden_states=_randn(gen, batch, cfg["in_channels"], FRAME_PATCHES * patch_t, GRID_PATCHES * patch,
                             GRID_PATCHES * patch),
        timestep=_integer_timesteps(gen, batch).float(),
        encoder_hidden_states=_randn(gen, batch, TEXT_TOKENS, cfg["text_embed_dim"]),
        encoder_attention_mask=torch.ones(batch, TEXT_TOKENS),
        pooled_projections=_randn(gen, batch, cfg["pooled_projection_dim"]),
    )
    if cfg["guidance_embeds"]:
        inputs["guidance"] = torch.full((batch,), 6000.0)
    return inputs


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
        hidden_states=_randn(gen, batch, cfg["in_channels"], side, side),
        timestep=_integer_timesteps(gen, batch),
        encoder_hidden_states=_randn(gen, batch, TEXT_TOKENS, text_width),
        added_cond_kwargs=added_cond_kwargs,
    )


_BUILDERS: dict[str, InputsBuilder] = {
    "FluxTransformer2DModel": _flux,
    "QwenImageTransformer2DModel": _qwen_image,
    "WanTransformer3DModel": _wan,
    "SD3Transformer2DModel": _sd3,
    "CogVideoXTransformer3DModel": _cogvideox,
    "HunyuanVideoTransformer3DModel": _hunyuan_video,
    "PixArtTransformer2DModel": _pixart,
}

SUPPORTED_CLASSES: tuple[str, ...] = tuple(sorted(_BUILDERS))


def resolved_config(class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` over the ``__init__`` defaults of ``diffusers.<class_name>``; private keys dropped."""
    import diffusers

    parameters = inspect.signature(getattr(diffusers, class_name).__init__).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**defaults, **{key: value for key, value in config.items() if not key.startswith("_")}}


def example_inputs_for(class_name: str, config: dict[str, Any], *, seed: int = 0, batch: int = 1) -> dict[str, Any]:
    """Forward kwargs (without ``return_dict``) for ``diffusers.<class_name>`` built from ``config``.

    Same ``seed`` and arguments give identical tensors. Raises ValueError for unsupported classes."""
    if class_name not in _BUILDERS:
        raise ValueError(f"no example inputs for {class_name!r}; supported: {', '.join(SUPPORTED_CLASSES)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    cfg = resolved_config(class_name, config)
    gen = torch.Generator().manual_seed(seed)
    return _BUILDERS[class_name](cfg, gen, batch)
