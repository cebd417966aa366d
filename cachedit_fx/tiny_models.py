"""Tiny random-init diffusers DiTs built from config (no downloads).

Each builder returns ``(model, inputs)`` where ``model(**inputs, return_dict=False)[0]``
runs one forward. Configs follow ../shared/TINY_MODELS.md; every model captures as a
single Dynamo graph on CPU.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

TinyModel = tuple[torch.nn.Module, dict[str, Any]]
FLUX_CONFIG = dict(patch_size=1, in_channels=4, num_layers=4, num_single_layers=4, attention_head_dim=16,
                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
WAN_CONFIG = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=4,
                  text_dim=16, freq_dim=256, ffn_dim=32, num_layers=4, cross_attn_norm=True,
                  qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
"""Configs of the tiny FLUX and Wan transformers (also the transformers of ``tiny_pipelines``)."""


def _build(class_name: str, config: dict[str, Any], make_inputs: Callable[..., dict[str, Any]], seed: int) -> TinyModel:
    """Seed, build ``diffusers.<class_name>(**config)``, then draw inputs from one generator:
    ``make_inputs(randn, gen)`` with ``randn(*shape)`` drawing from ``gen``."""
    import diffusers

    torch.manual_seed(seed)
    model = getattr(diffusers, class_name)(**config)
    gen = torch.Generator().manual_seed(seed)
    return model.eval(), make_inputs(lambda *shape: torch.randn(*shape, generator=gen), gen)


def tiny_flux(seed: int = 0) -> TinyModel:
    return _build("FluxTransformer2DModel", FLUX_CONFIG, lambda r, gen: dict(
        hidden_states=r(1, 16, 4), encoder_hidden_states=r(1, 24, 32), pooled_projections=r(1, 32),
        img_ids=r(16, 3), txt_ids=r(24, 3), timestep=torch.tensor([1.0])), seed)


def tiny_qwen_image(seed: int = 0) -> TinyModel:
    config = dict(patch_size=2, in_channels=16, out_channels=4, num_layers=4, attention_head_dim=16,
                  num_attention_heads=4, joint_attention_dim=16, guidance_embeds=False, axes_dims_rope=(8, 4, 4))
    return _build("QwenImageTransformer2DModel", config, lambda r, gen: dict(
        hidden_states=r(1, 16, 16), encoder_hidden_states=r(1, 8, 16),
        encoder_hidden_states_mask=torch.ones(1, 8, dtype=torch.long), timestep=torch.tensor([1.0]),
        img_shapes=[(1, 4, 4)]), seed)


def tiny_wan(seed: int = 0) -> TinyModel:
    return _build("WanTransformer3DModel", WAN_CONFIG, lambda r, gen: dict(
        hidden_states=r(1, 4, 2, 16, 16), encoder_hidden_states=r(1, 12, 16),
        timestep=torch.randint(0, 1000, (1,), generator=gen)), seed)


def tiny_sd3(seed: int = 0) -> TinyModel:
    config = dict(sample_size=32, patch_size=1, in_channels=4, num_layers=4, attention_head_dim=8,
                  num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64,
                  out_channels=4, pos_embed_max_size=96, dual_attention_layers=(), qk_norm=None)
    return _build("SD3Transformer2DModel", config, lambda r, gen: dict(
        hidden_states=r(2, 4, 32, 32), encoder_hidden_states=r(2, 154, 32), pooled_projections=r(2, 64),
        timestep=torch.randint(0, 1000, (2,), generator=gen)), seed)


def tiny_cogvideox(seed: int = 0) -> TinyModel:
    config = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=2,
                  text_embed_dim=8, num_layers=4, sample_width=8, sample_height=8, sample_frames=8, patch_size=2,
                  temporal_compression_ratio=4, max_text_seq_length=8)
    return _build("CogVideoXTransformer3DModel", config, lambda r, gen: dict(
        hidden_states=r(2, 1, 4, 8, 8), encoder_hidden_states=r(2, 8, 8),
        timestep=torch.randint(0, 1000, (2,), generator=gen)), seed)


def tiny_hunyuan_video(seed: int = 0) -> TinyModel:
    config = dict(in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=2,
                  num_single_layers=2, num_refiner_layers=1, patch_size=1, patch_size_t=1, guidance_embeds=True,
                  text_embed_dim=16, pooled_projection_dim=8, rope_axes_dim=(2, 4, 4), image_condition_type=None)
    return _build("HunyuanVideoTransformer3DModel", config, lambda r, gen: dict(
        hidden_states=r(1, 4, 1, 16, 16), timestep=torch.tensor([500.0]), encoder_hidden_states=r(1, 12, 16),
        pooled_projections=r(1, 8), encoder_attention_mask=torch.ones(1, 12), guidance=torch.tensor([500.0])), seed)


def tiny_pixart(seed: int = 0) -> TinyModel:
    config = dict(sample_size=8, num_layers=4, patch_size=2, attention_head_dim=2, num_attention_heads=2,
                  in_channels=4, cross_attention_dim=8, out_channels=8, attention_bias=True,
                  activation_fn="gelu-approximate", num_embeds_ada_norm=8, norm_type="ada_norm_single",
                  norm_elementwise_affine=False, norm_eps=1e-6, use_additional_conditions=False, caption_channels=None)
    return _build("PixArtTransformer2DModel", config, lambda r, gen: dict(
        hidden_states=r(2, 4, 8, 8), timestep=torch.randint(0, 1000, (2,), generator=gen),
        encoder_hidden_states=r(2, 8, 8), added_cond_kwargs={"aspect_ratio": None, "resolution": None}), seed)


TINY_MODELS: dict[str, Callable[..., TinyModel]] = {
    builder.__name__.removeprefix("tiny_"): builder
    for builder in (tiny_flux, tiny_qwen_image, tiny_wan, tiny_sd3, tiny_cogvideox, tiny_hunyuan_video, tiny_pixart)
}
