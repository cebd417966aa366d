"""Cold and warm compile time: whole-model Inductor against cachedit's three pieces, against
regional compilation (``regional_compile=True``: each distinct block compiled once) and against
regional compilation of a model marked by ``cachedit_fx.trace_blocks_once`` (Dynamo traces
each block kind once).

    python -m benchmarks.compile_time                # CPU: flux-small (8 blocks), flux-deep (24 blocks)
    python -m benchmarks.compile_time --full         # GPU: the FLUX.1-dev transformer, bf16
    python -m benchmarks.compile_time --readme       # also rewrite the compile-time section of docs/performance.md

Every measurement runs in a fresh interpreter, so Dynamo's and Inductor's in-memory caches are
empty: "cold" with an empty ``TORCHINDUCTOR_CACHE_DIR``, "warm" with the on-disk cache the
cold run left. Compile time = first call minus a second call. Writes ``results.json`` and
``results.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch

from benchmarks import report
from benchmarks.models import MODELS

SYSTEMS = ("inductor", "cachedit", "cachedit-regional", "cachedit-regional-once")
README_START = "<!-- compile-time:start -->"
README_END = "<!-- compile-time:end -->"
DOCUMENT = report.DOCS / "performance.md"
"""The document holding the ``compile-time`` section that ``--readme`` rewrites."""


def compiled_model(system: str, model: torch.nn.Module, inner_backend: str) -> torch.nn.Module:
    """``system`` "inductor" is plain ``torch.compile`` with ``inner_backend`` (the name stays)."""
    if system == "inductor":
        return torch.compile(model, backend=inner_backend)
    import cachedit_fx

    if system.endswith("-once"):
        cachedit_fx.trace_blocks_once(model)
    options = dict(Fn_compute_blocks=1, residual_diff_threshold=0.12, regional_compile="regional" in system,
                   inner_backend=inner_backend)
    return torch.compile(model, backend="cachedit", options=options)


def child_main(args: argparse.Namespace) -> None:
    """One measurement: prints ``{"first_s": ..., "second_s": ...}`` as its last line."""
    import cachedit_fx  # noqa: F401  (registers the backend)

    device = torch.device("cuda" if args.full else "cpu")
    dtype = torch.bfloat16 if args.full else torch.float32
    bench = MODELS["full" if args.full else "quick"][args.model]
    model = compiled_model(args.child, bench.build(device, dtype), args.inner_backend)
    inputs = bench.make_inputs(torch.Generator().manual_seed(1), device, dtype)
    timestep = torch.full((1,), 0.5 * bench.timestep_scale, device=device)
    seconds = []
    with torch.no_grad():
        for _ in range(2):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            model(**inputs, timestep=timestep, return_dict=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    print(json.dumps({"first_s": seconds[0], "second_s": seconds[1]}))


def measure(args: argparse.Namespace, model: str, system: str, cache_dir: str) -> dict[str, float]:
    command = [sys.executable, "-m", "benchmarks.compile_time", "--child", system, "--model", model,
               "--threads", str(args.threads), "--inner-backend", args.inner_backend] + (["--full"] if args.full else [])
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    timing = json.loads(done.stdout.strip().splitlines()[-1])
    return {**timing, "compile_s": timing["first_s"] - timing["second_s"]}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Compile time on {results['device']}, {results['date']} (fresh interpreter each; warm = Inductor's "
             "on-disk cache from the cold run):", "",
             "| model | blocks | system | cold compile s | warm compile s | cold vs Inductor | warm vs Inductor |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for model in results["models"]:
        base = model["systems"]["inductor"]
        for system, row in model["systems"].items():
            lines.append(f"| {model['model']} | {model['num_blocks']} | {system} | {row['cold']['compile_s']:.1f} | "
                         f"{row['warm']['compile_s']:.1f} | {row['cold']['compile_s'] / base['cold']['compile_s']:.2f}x | "
                         f"{row['warm']['compile_s'] / base['warm']['compile_s']:.2f}x |")
    lines += ["", "Goal: at most 0.5x of whole-model Inductor, cold and warm."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="GPU: the FLUX.1-dev transformer in bf16")
    parser.add_argument("--models", default=None, help="default: flux,flux-deep (quick), flux (full)")
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inner-backend", default="inductor", choices=["inductor", "aot_eager"],
                        help="aot_eager: a smoke run of the plumbing")
    parser.add_argument("--out", default="benchmarks/results/compile_time")
    parser.add_argument("--readme", action="store_true", help="rewrite the generated compile-time section in docs/performance.md")
    parser.add_argument("--child", choices=SYSTEMS, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.full:
        torch.set_num_threads(args.threads)
    if args.child:
        child_main(args)
        return {}
    size = "full" if args.full else "quick"
    names = (args.models or ("flux" if args.full else "flux,flux-deep")).split(",")
    systems = args.systems.split(",")
    if "inductor" not in systems or set(systems) - set(SYSTEMS):
        raise SystemExit(f"--systems must include inductor and name only {SYSTEMS}")
    models = []
    for name in names:
        bench = MODELS[size][name]
        config = bench.config
        rows = {}
        for system in systems:
            with tempfile.TemporaryDirectory() as cache_dir:
                print(f"[{name}] {system} ...", flush=True)
                rows[system] = {"cold": measure(args, name, system, cache_dir), "warm": measure(args, name, system, cache_dir)}
        models.append({"model": bench.name, "num_blocks": config["num_layers"] + config.get("num_single_layers", 0),
                       "systems": rows})
    results = {"date": datetime.date.today().isoformat(), "size": size,
               "device": torch.cuda.get_device_name() if args.full else f"CPU ({platform.machine()}, {args.threads} threads)",
               "inner_backend": args.inner_backend, "versions": report.versions(), "models": models}
    report.publish(results, markdown(results), Path(args.out), "python -m benchmarks.compile_time --readme", (README_START, README_END), args.readme, DOCUMENT)
    return results


if __name__ == "__main__":
    main()
