"""Time per generation of a whole (tiny, offline) diffusers pipeline: plain, with the
transformer compiled by the inner backend alone, and with ``cachedit_fx.compile``, measured
side by side in one process.

    python -m benchmarks.pipeline                    # tiny FLUX pipeline, 28 steps, Inductor pieces
    python -m benchmarks.pipeline --pipeline wan --inner-backend eager

Reports median wall time per pipeline call after one warm-up call (text encoders and
transformer steps included; VAE decode excluded: ``output_type="latent"``), the first compiled call
(cold compile included), cached steps and the relative L2 error of the final latents.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Optional

import torch

import cachedit_fx
from cachedit_fx.tiny_pipelines import TINY_PIPELINES, default_call_kwargs


def _timed(pipe: Any, kwargs: dict[str, Any], repeats: int) -> tuple[float, torch.Tensor]:
    times, latents = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        latents = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).images
        times.append(time.perf_counter() - start)
    return statistics.median(times), latents


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pipeline", choices=sorted(TINY_PIPELINES), default="flux")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--inner-backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: stable timings on a busy machine)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    kwargs = dict(default_call_kwargs(args.pipeline), num_inference_steps=args.steps, output_type="latent")
    build = TINY_PIPELINES[args.pipeline]

    plain = build(0)
    plain(**kwargs, generator=torch.Generator().manual_seed(0))  # warm-up: lazy initialisation
    plain_s, reference = _timed(plain, kwargs, args.repeats)
    compiled = build(0)
    compiled.transformer = torch.compile(compiled.transformer, backend=args.inner_backend)
    compiled(**kwargs, generator=torch.Generator().manual_seed(0))  # compile
    compiled_s, _ = _timed(compiled, kwargs, args.repeats)
    pipe = cachedit_fx.compile(build(0), Fn_compute_blocks=1, residual_diff_threshold=args.threshold,
                               max_warmup_steps=args.warmup, inner_backend=args.inner_backend)
    start = time.perf_counter()
    pipe(**kwargs, generator=torch.Generator().manual_seed(0))
    first_s = time.perf_counter() - start
    cached_s, latents = _timed(pipe, kwargs, args.repeats)
    summary = cachedit_fx.summary(pipe.transformer)
    result = {
        "pipeline": args.pipeline, "steps": args.steps, "inner_backend": args.inner_backend, "threads": args.threads,
        "plain_ms": plain_s * 1e3, "compiled_ms": compiled_s * 1e3, "cachedit_ms": cached_s * 1e3,
        "speedup_vs_plain": plain_s / cached_s, "speedup_vs_compiled": compiled_s / cached_s,
        "first_call_s": first_s, "cached_steps": summary.num_cached_steps,
        "rel_l2": float((latents - reference).float().norm() / reference.float().norm()),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
