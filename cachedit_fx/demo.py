"""Demo: a small random-weight FLUX-architecture transformer, a flow-matching sampling loop
with diffusers' scheduler, uncompiled vs ``backend="cachedit"``.

    python -m cachedit_fx.demo [--steps 28] [--threshold 0.45] [--inner-backend inductor]

Prints the cached steps, the speedup (median wall times, uncompiled over cached, measured side
by side) and the relative error of the final latents. Random weights change a lot between
steps, so the default threshold is higher than trained models use (0.08-0.12).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

import torch

import cachedit_fx
from cachedit_fx.tiny_models import _build


def build_model(seed: int = 0) -> tuple[torch.nn.Module, dict[str, Any], int]:
    """The FLUX-architecture model (4+8 blocks), its conditioning kwargs and its image token count."""
    side, text = 16, 32
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(ys), ys, xs], dim=-1).reshape(-1, 3).float()
    model, cond = _build("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=16, num_layers=4, num_single_layers=8, attention_head_dim=32,
        num_attention_heads=4, joint_attention_dim=64, pooled_projection_dim=64, axes_dims_rope=[8, 12, 12],
    ), lambda r, gen: dict(encoder_hidden_states=r(1, text, 64), pooled_projections=r(1, 64), img_ids=img_ids,
                           txt_ids=torch.zeros(text, 3)), seed)
    return model, cond, side * side


def sample(model: Callable[..., Any], cond: dict[str, Any], tokens: int, steps: int, seed: int = 0) -> torch.Tensor:
    """Flow-matching Euler sampling; returns the final latents."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(num_inference_steps=steps)
    latents = torch.randn(1, tokens, 16, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        for t in scheduler.timesteps:
            timestep = (t / 1000).expand(latents.shape[0]).to(latents.dtype)
            velocity = model(hidden_states=latents, timestep=timestep, **cond, return_dict=False)[0]
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    return latents


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[torch.Tensor, float]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--threshold", type=float, default=0.45)
    parser.add_argument("--fn", type=int, default=1, help="Fn_compute_blocks")
    parser.add_argument("--bn", type=int, default=0, help="Bn_compute_blocks")
    parser.add_argument("--warmup", type=int, default=4, help="max_warmup_steps")
    parser.add_argument("--inner-backend", default="inductor", choices=("inductor", "aot_eager", "eager"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    model, cond, tokens = build_model()
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="cachedit", options={
        "inner_backend": args.inner_backend, "Fn_compute_blocks": args.fn, "Bn_compute_blocks": args.bn,
        "residual_diff_threshold": args.threshold, "max_warmup_steps": args.warmup,
        "num_inference_steps": args.steps})
    _, compile_s = timed(lambda: sample(compiled, cond, tokens, args.steps), repeats=1)
    reference, eager_s = timed(lambda: sample(model, cond, tokens, args.steps), args.repeats)
    cached, cached_s = timed(lambda: sample(compiled, cond, tokens, args.steps), args.repeats)
    summary, speedup = cachedit_fx.summary(compiled), eager_s / cached_s
    rel_err = ((cached - reference).norm() / reference.norm()).item()
    print(f"model: FLUX architecture, {len(model.transformer_blocks)}+{len(model.single_transformer_blocks)} blocks, "
          f"{tokens} image tokens, {args.steps} steps, inner backend {args.inner_backend}")
    print(summary)
    print(f"first compiled generation (includes compile): {compile_s:.1f} s")
    print(f"uncompiled: {eager_s * 1e3:.0f} ms/generation, cachedit: {cached_s * 1e3:.0f} ms/generation, "
          f"speedup {speedup:.2f}x")
    print(f"relative L2 error of final latents vs uncompiled: {rel_err:.4f}")
    return {"cached_steps": summary.cached_steps, "speedup": speedup, "relative_error": rel_err}


if __name__ == "__main__":
    main()
