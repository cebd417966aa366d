"""Extra memory of the cache per stream, against the activations it carries.

    python -m benchmarks.memory            # CPU: flux-small and wan-small, counted buffers
    python -m benchmarks.memory --full     # GPU: FLUX.1-dev and Wan2.1-1.3B, plus peak memory
    python -m benchmarks.memory --readme   # also rewrite the memory section of docs/performance.md

For each cache policy a few steps run (so every buffer exists), then the buffers each stream
keeps alive are counted (``runtime/memory.py``: the stored values of each stream row of the
step's state tensors) against one copy of the values the cached middle hands on. Goal: held <= (calibrator order + 2) x carried, order 0 for plain
DBCache, k for TaylorSeer, 2 for FoCa (BDF2). On a GPU the peak allocated memory of a
generation is also reported against plain Inductor's.
"""

from __future__ import annotations

import argparse
import datetime
import platform
from pathlib import Path
from typing import Any, Optional

import torch

from benchmarks import report
from cachedit_fx import FoCaCalibratorConfig
from benchmarks.models import MODELS, sigmas

README_START = "<!-- memory:start -->"
README_END = "<!-- memory:end -->"
DOCUMENT = report.DOCS / "performance.md"
"""The document holding the ``memory`` section that ``--readme`` rewrites."""
STEPS = 6
POLICIES: dict[str, tuple[int, dict[str, Any]]] = {
    "DBCache F1B0": (0, {}),
    **{f"TaylorSeer order {k}": (k, {"taylorseer_order": k}) for k in (1, 2, 3, 4)},
    "FoCa": (2, {"calibrator_config": FoCaCalibratorConfig()}),
    "DBCache separate CFG": (0, {"enable_separate_cfg": True}),
}
"""Name -> (calibrator order of the bound, options)."""


def measure(model_key: str, size: str, policy: str, device: torch.device, dtype: torch.dtype,
            inner_backend: str) -> dict[str, Any]:
    from cachedit_fx.runtime.memory import stream_memory
    from cachedit_fx.runtime.registry import cache_for_model

    order, extra = POLICIES[policy]
    options = {"Fn_compute_blocks": 1, "residual_diff_threshold": 0.0, "max_warmup_steps": STEPS,
               "num_inference_steps": STEPS, "inner_backend": inner_backend, **extra}
    bench = MODELS[size][model_key]
    torch._dynamo.reset()
    model = bench.build(device, dtype)
    compiled = torch.compile(model, backend="cachedit", options=options)
    inputs = bench.make_inputs(torch.Generator().manual_seed(1), device, dtype)
    calls = 2 if extra.get("enable_separate_cfg") else 1
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    with torch.no_grad():
        for sigma in sigmas(STEPS)[:STEPS]:
            timestep = torch.full((1,), sigma * bench.timestep_scale, device=device)
            for _ in range(calls):
                compiled(**inputs, timestep=timestep, return_dict=False)
    state = cache_for_model(model).active()
    streams = stream_memory(state)
    row = {"model": bench.name, "policy": policy, "order": order, "bound": order + 2,
           "streams": [{"stream": s.stream, "held_bytes": s.held_bytes, "carried_bytes": s.carried_bytes,
                        "ratio": s.ratio} for s in streams]}
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Cache memory per stream on {results['device']}, {results['date']}, {results['dtype']}, after "
             f"{STEPS} steps (held: buffers the stream keeps alive; carried: one copy of the middle's outputs):", "",
             "| model | policy | stream | held MB | carried MB | held / carried | goal | gap |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["rows"]:
        for s in row["streams"]:
            gap = s["ratio"] - row["bound"]
            lines.append(f"| {row['model']} | {row['policy']} | {s['stream']} | {s['held_bytes'] / 2**20:.2f} | "
                         f"{s['carried_bytes'] / 2**20:.2f} | {s['ratio']:.2f}x | <= {row['bound']}x | "
                         f"{'met' if gap <= 1e-9 else f'+{gap:.2f}x'} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="GPU: the full-size models in bf16")
    parser.add_argument("--models", default="flux,wan")
    parser.add_argument("--policies", default=",".join(POLICIES))
    parser.add_argument("--inner-backend", default=None, help="default: aot_eager on CPU, inductor on a GPU")
    parser.add_argument("--out", default="benchmarks/results/memory")
    parser.add_argument("--readme", action="store_true", help="rewrite the generated memory section in docs/performance.md")
    args = parser.parse_args(argv)
    size = "full" if args.full else "quick"
    device = torch.device("cuda" if args.full else "cpu")
    dtype = torch.bfloat16 if args.full else torch.float32
    inner = args.inner_backend or ("inductor" if args.full else "aot_eager")
    rows = [measure(name, size, policy, device, dtype, inner)
            for name in args.models.split(",") for policy in args.policies.split(",")]
    results = {"date": datetime.date.today().isoformat(), "size": size, "dtype": str(dtype).replace("torch.", ""),
               "device": torch.cuda.get_device_name() if args.full else f"CPU ({platform.machine()})",
               "inner_backend": inner, "versions": report.versions(), "rows": rows}
    report.publish(results, markdown(results), Path(args.out), "python -m benchmarks.memory --readme",
                   (README_START, README_END), args.readme, DOCUMENT)
    return results


if __name__ == "__main__":
    main()
