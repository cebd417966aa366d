"""Benchmark models (random weights, built from config) and their seeded generation inputs.

``quick`` sizes take tens of milliseconds per step on a CPU; ``full`` sizes are the real
architectures (FLUX.1-dev at 1024x1024, Wan2.1-1.3B at 480p, 81 frames) for a GPU.
A generation is a flow-matching Euler loop on the model's own output, so every system
sees the same seeded start and step count, and the final latent measures fidelity.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch


@dataclass(frozen=True)
class BenchModel:
    """How to build one model and the fixed inputs of its generations."""

    name: str
    class_name: str
    config: dict[str, Any]
    block_lists: tuple[str, ...]
    make_inputs: Callable[[torch.Generator, torch.device, torch.dtype], dict[str, Any]]
    latent_key: str = "hidden_states"
    timestep_scale: float = 1.0
    """The model's timestep input is ``sigma * timestep_scale`` (FLUX: sigma, Wan: 1000 sigma)."""
    builder: Optional[Callable[[torch.device, torch.dtype], torch.nn.Module]] = None
    """Builds a trained model (weights loaded) instead of a random-init one from ``config``."""

    def build(self, device: torch.device, dtype: torch.dtype, seed: int = 0) -> torch.nn.Module:
        import diffusers

        if self.builder is not None:
            return self.builder(device, dtype).eval().requires_grad_(False)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            with torch.device(device), _default_dtype(dtype):  # built in its dtype: no fp32 copy first
                model = getattr(diffusers, self.class_name)(**self.config)
        return model.to(dtype).eval().requires_grad_(False)


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def _flux_inputs(image_tokens: int, text_tokens: int, channels: int, text_dim: int, pooled_dim: int, guidance: bool):
    def make(gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=gen).to(device, dtype)

        side = int(image_tokens ** 0.5)
        img_ids = torch.zeros(side, side, 3)
        img_ids[..., 1] = torch.arange(side)[:, None]
        img_ids[..., 2] = torch.arange(side)[None, :]
        inputs = dict(hidden_states=randn(1, image_tokens, channels), encoder_hidden_states=randn(1, text_tokens, text_dim),
                      pooled_projections=randn(1, pooled_dim), img_ids=img_ids.reshape(-1, 3).to(device, dtype),
                      txt_ids=torch.zeros(text_tokens, 3, device=device, dtype=dtype))
        if guidance:
            inputs["guidance"] = torch.full((1,), 3.5, device=device, dtype=torch.float32)
        return inputs

    return make


def _wan_inputs(latent_shape: tuple[int, ...], text_tokens: int, text_dim: int):
    def make(gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        return dict(hidden_states=torch.randn(*latent_shape, generator=gen).to(device, dtype),
                    encoder_hidden_states=torch.randn(1, text_tokens, text_dim, generator=gen).to(device, dtype))

    return make


FLUX_BLOCKS = ("transformer_blocks", "single_transformer_blocks")

MODELS: dict[str, dict[str, BenchModel]] = {
    "quick": {
        "flux": BenchModel(
            "flux-small", "FluxTransformer2DModel",
            dict(patch_size=1, in_channels=16, num_layers=2, num_single_layers=6, attention_head_dim=32,
                 num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64, guidance_embeds=True,
                 axes_dims_rope=[8, 12, 12]),
            FLUX_BLOCKS, _flux_inputs(256, 32, 16, 64, 64, True)),
        "flux-deep": BenchModel(
            "flux-deep", "FluxTransformer2DModel",
            dict(patch_size=1, in_channels=16, num_layers=8, num_single_layers=16, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                 axes_dims_rope=[4, 6, 6]),
            FLUX_BLOCKS, _flux_inputs(64, 16, 16, 32, 32, True)),
        "wan": BenchModel(
            "wan-small", "WanTransformer3DModel",
            dict(patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=32, in_channels=16, out_channels=16,
                 text_dim=64, freq_dim=256, ffn_dim=256, num_layers=8, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", rope_max_seq_len=64),
            ("blocks",), _wan_inputs((1, 16, 2, 16, 16), 32, 64), timestep_scale=1000.0),
    },
    "full": {
        "flux": BenchModel(
            "FLUX.1-dev 1024px", "FluxTransformer2DModel",
            dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                 num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                 axes_dims_rope=[16, 56, 56]),
            FLUX_BLOCKS, _flux_inputs(4096, 512, 64, 4096, 768, True)),
        "wan": BenchModel(
            "Wan2.1-1.3B 480p", "WanTransformer3DModel",
            dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                 text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
            ("blocks",), _wan_inputs((1, 16, 21, 60, 104), 512, 4096), timestep_scale=1000.0),
    },
}


def sigmas(steps: int) -> list[float]:
    """Flow-matching schedule 1 -> 0 with FLUX's default shift of 3 (``steps + 1`` points)."""
    shift = 3.0
    linear = [1.0 - k / steps for k in range(steps + 1)]
    return [shift * s / (1 + (shift - 1) * s) for s in linear]


def generate(step_fn: Callable[..., torch.Tensor], model: BenchModel, inputs: dict[str, Any],
             steps: int) -> torch.Tensor:
    """One generation: Euler steps ``x <- x + (s_next - s) * v(x, s)``; returns the final latent."""
    schedule = sigmas(steps)
    x = inputs[model.latent_key]
    for k in range(steps):
        t = torch.full((1,), schedule[k] * model.timestep_scale, device=x.device, dtype=torch.float32)
        velocity = step_fn(**{**inputs, model.latent_key: x}, timestep=t)
        x = x + (schedule[k + 1] - schedule[k]) * velocity
    return x
