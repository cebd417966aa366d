"""Compiled-model benchmark: cachedit against plain Inductor, cache-dit and diffusers' hook.

    python -m benchmarks --quick                     # CPU: small FLUX + Wan architectures
    python -m benchmarks --full                      # GPU: FLUX.1-dev 1024px, Wan2.1-1.3B 480p (bf16)
    python -m benchmarks --quick --ci                # smoke size for CI (fails only on broken runs)

Every system runs the same seeded generations (an Euler flow-matching loop on its own
output) on a fresh copy of the same model; on CPU all systems stay alive and their warm
generations alternate round by round, on a GPU they run one at a time. Per system: transformer time per generation
(median over ``--repeats`` warm generations), speedup over plain Inductor (compiled
systems) or eager (eager systems), realised / ideal speedup (ideal: FLOPs of the uncached
generation over FLOPs left after the skipped blocks, counted with ``FlopCounterMode``), cold
compile (first generation minus a warm one) and warm compile (the same after
``torch._dynamo.reset()`` with Inductor's caches warm), recompiles and graph breaks during
warm generations, peak GPU memory, cached steps, and fidelity of the final latent against
plain Inductor's (relative L2, PSNR). Writes ``results.json``, ``results.md`` and PNG plots to
``--out``; ``--readme`` rewrites README's performance section from the JSON.
"""

from __future__ import annotations

import argparse
import gc
import datetime
import math
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import report
from benchmarks.models import MODELS, BenchModel, generate
from benchmarks.systems import (CacheSetting, System, available_peers, baselines, cache_dit_system,
                                cachedit_system, diffusers_fbc_system)

SETTINGS = {
    "quick": {"flux": 0.3, "wan": 0.12},
    "full": {"flux": 0.12, "wan": 0.08},
}
"""Residual-diff threshold per model: random weights need higher ones than trained models."""


def cache_settings(threshold: float, num_blocks: int, warmup: int) -> list[CacheSetting]:
    fn8 = min(8, num_blocks - 2)
    return [
        CacheSetting("F1B0", 1, 0, threshold, warmup),
        CacheSetting(f"F{fn8}B0", fn8, 0, threshold, warmup),
        CacheSetting("F1B0+TaylorSeer1", 1, 0, threshold, warmup, taylor_order=1),
        CacheSetting("SCM-fast", 1, 0, threshold, warmup, mask_policy="fast"),
        CacheSetting("SCM-ultra", 1, 0, threshold, warmup, mask_policy="ultra"),
    ]


FAMILIES = ("cachedit", "cache-dit", "diffusers-fbc")
"""Each family runs in its own process, beside its own eager and Inductor baselines: peers
install hooks and patches, and Dynamo's per-code-object caches are shared by every model of
a class in a process, so one family's compiled frames must never meet another's."""


def build_systems(model: BenchModel, num_blocks: int, steps: int, threshold: float, inner: str, ci: bool,
                  family: str, only: tuple[str, ...] = ()) -> list[System]:
    """The systems of ``family`` beside the eager and Inductor baselines; ``only``: keep the
    systems whose name contains one of these parts (``--systems SCM`` on a time-boxed GPU run)."""
    warmup = min(4, steps // 4)
    settings = cache_settings(threshold, num_blocks, warmup)
    systems = baselines(inner)
    if family == "cachedit":
        zero = CacheSetting("threshold0", 1, 0, 0.0, warmup)
        regional = [CacheSetting("F1B0-regional", 1, 0, threshold, warmup, regional=True),
                    CacheSetting("SCM-fast-regional", 1, 0, threshold, warmup, mask_policy="fast", regional=True)]
        systems += [cachedit_system(s, steps, inner) for s in [zero] + settings + regional]
    elif family == "cache-dit":
        for s in settings:
            systems += [cache_dit_system(s, steps, False, inner), cache_dit_system(s, steps, True, inner)]
    else:
        systems += [diffusers_fbc_system(threshold, model.block_lists, False, inner),
                    diffusers_fbc_system(threshold, model.block_lists, True, inner)]
    if ci:
        keep = {"eager", "inductor", "cachedit/threshold0", "cachedit/F1B0", "cachedit/SCM-fast",
                "cache-dit/SCM-fast/compiled", "diffusers-fbc"}
        systems = [s for s in systems if s.name in keep]
    if only:
        systems = [s for s in systems if s.name in ("eager", "inductor") or any(part in s.name for part in only)]
    return systems


def block_flops(model: torch.nn.Module, bench: BenchModel, inputs: dict[str, Any]) -> tuple[float, float]:
    """(FLOPs of one uncached forward, FLOPs of one chain block on average)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**inputs, timestep=torch.ones(1, device=inputs[bench.latent_key].device) * bench.timestep_scale * 0.5,
              return_dict=False)
    counts = counter.get_flop_counts()
    total = sum(counts.get("Global", {}).values())
    per_block = []
    for name in bench.block_lists:
        for index in range(len(getattr(model, name))):
            key = next((k for k in counts if k.endswith(f".{name}.{index}")), None)
            per_block.append(sum(counts[key].values()) if key else 0.0)
    return float(total), float(sum(per_block) / max(len(per_block), 1))


def _counter_totals() -> tuple[int, int]:
    counters = torch._dynamo.utils.counters
    return int(counters["stats"]["unique_graphs"]), int(sum(counters["graph_break"].values()))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Live:
    """One system set up on its own model copy, with its timings so far."""

    def __init__(self, system: System, bench: BenchModel, device: torch.device, dtype: torch.dtype) -> None:
        self.system = system
        self.inputs = bench.make_inputs(torch.Generator().manual_seed(1), device, dtype)
        with system.config_guard():
            self.step = system.make(bench.build(device, dtype))
        self.times: list[float] = []
        self.graphs = self.breaks = 0
        self.first_s = 0.0
        self.latent: Optional[torch.Tensor] = None

    def generation(self, bench: BenchModel, device: torch.device, steps: int) -> float:
        graphs0, breaks0 = _counter_totals()
        with self.system.config_guard(), torch.no_grad():
            self.system.start_generation()
            _sync(device)
            start = time.perf_counter()
            self.latent = generate(self.step, bench, self.inputs, steps)
            _sync(device)
            seconds = time.perf_counter() - start
        graphs1, breaks1 = _counter_totals()
        self.graphs += graphs1 - graphs0
        self.breaks += breaks1 - breaks0
        return seconds

    def release(self) -> None:
        """Drop this system's model (its step function and whatever the system holds)."""
        self.step = None
        self.system.release()


def run_systems(systems: list[System], bench: BenchModel, device: torch.device, dtype: torch.dtype, steps: int,
                repeats: int, interleave: bool, warm_compile: bool = True) -> list[dict[str, Any]]:
    """Time every system. ``interleave``: all systems alive at once and their warm generations
    alternate round by round (CPU: drift hits all alike); else one system at a time (GPU:
    one model copy in memory at a time). ``warm_compile``: also time a generation after
    ``torch._dynamo.reset()`` with Inductor's caches warm."""
    torch._dynamo.reset()
    rows = []
    groups = [systems] if interleave else [[s] for s in systems]
    limit = max(8, 4 * len(systems))  # every system compiles the same forward: room for all of them
    with torch._dynamo.config.patch(recompile_limit=limit, accumulated_recompile_limit=limit * 8):
        _run_groups(groups, rows, bench, device, dtype, steps, repeats, interleave, warm_compile)
    _check_consistent(rows)
    return rows


def _check_consistent(rows: list[dict[str, Any]]) -> None:
    """A broken run fails loudly: a system that reports cached steps must have changed the result."""
    reference = next(r["_latent"] for r in rows if r["system"] == "inductor")
    for row in rows:
        if row["num_cached_steps"] and torch.equal(row["_latent"], reference):
            raise RuntimeError(f"{row['system']} reports {row['num_cached_steps']} cached steps but its final "
                               "latent equals plain Inductor's: the run did not measure what it names")


def _run_groups(groups: list[list[System]], rows: list[dict[str, Any]], bench: BenchModel, device: torch.device,
                dtype: torch.dtype, steps: int, repeats: int, interleave: bool, warm_compile: bool) -> None:
    for group in groups:
        if not interleave:
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
        live = []
        for system in group:
            print(f"[{bench.name}] {system.name} ...", flush=True)
            entry = _Live(system, bench, device, dtype)
            entry.first_s = entry.generation(bench, device, steps)
            entry.graphs = entry.breaks = 0
            live.append(entry)
        for _ in range(repeats):
            for entry in live:
                entry.times.append(entry.generation(bench, device, steps))
        for entry in live:
            system, warm = entry.system, statistics.median(entry.times)
            cached = system.cached_steps()
            row: dict[str, Any] = {
                "system": system.name, "family": system.family, "compiled": system.compiled,
                "setting": system.setting.name if system.setting else None, "seconds": warm,
                "first_generation_s": entry.first_s, "cold_compile_s": max(entry.first_s - warm, 0.0),
                "recompiles_per_generation": entry.graphs / repeats, "graph_breaks_per_generation": entry.breaks / repeats,
                "cached_steps": cached, "num_cached_steps": None if cached is None else len(cached),
                "_latent": entry.latent.float().cpu(),
            }
            if device.type == "cuda" and not interleave:
                row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
            rows.append(row)
        for entry, row in zip(live, rows[-len(live):]):
            if warm_compile and entry.system.compiled:  # Inductor's on-disk caches are warm now; Dynamo's are not
                torch._dynamo.reset()
                row["warm_compile_s"] = max(entry.generation(bench, device, steps) - row["seconds"], 0.0)
        if not interleave:  # one model copy at a time: this group's goes before the next is built
            for entry in live:
                entry.release()
            del live
            torch._dynamo.reset()
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()


def overhead_probe(bench: BenchModel, device: torch.device, dtype: torch.dtype, steps: int, rounds: int,
                   inner: str) -> dict[str, float]:
    """Threshold-0 overhead measured interleaved: plain Inductor and cachedit with threshold 0
    alive side by side, generations alternating, so machine drift hits both alike."""
    torch._dynamo.reset()
    inputs = bench.make_inputs(torch.Generator().manual_seed(1), device, dtype)
    zero = CacheSetting("threshold0", 1, 0, 0.0, 0)
    systems = {"inductor": baselines(inner)[1], "cachedit/threshold0": cachedit_system(zero, steps, inner)}
    steps_fns = {name: system.make(bench.build(device, dtype)) for name, system in systems.items()}
    times: dict[str, list[float]] = {name: [] for name in systems}
    with torch.no_grad():
        for name, step in steps_fns.items():
            generate(step, bench, inputs, steps)
        for _ in range(rounds):
            for name, step in steps_fns.items():
                _sync(device)
                start = time.perf_counter()
                generate(step, bench, inputs, steps)
                _sync(device)
                times[name].append(time.perf_counter() - start)
    inductor, cachedit = (statistics.median(times[n]) for n in systems)
    return {"inductor_ms": inductor * 1e3, "cachedit_threshold0_ms": cachedit * 1e3,
            "overhead_pct": 100.0 * (cachedit / inductor - 1.0), "rounds": rounds}


def fidelity(latent: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
    error = (latent - reference).float()
    rel_l2 = float(error.norm() / reference.float().norm())
    mse = float(error.pow(2).mean())
    data_range = float(reference.max() - reference.min())
    psnr = math.inf if mse == 0 else 10 * math.log10(data_range ** 2 / mse)
    return {"rel_l2": rel_l2, "psnr_db": psnr}


def run_family_in_child(args: argparse.Namespace, name: str, family: str) -> list[dict[str, Any]]:
    """Run one family in a fresh interpreter; its rows (latents included) come back by file."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.pt"
        command = [sys.executable, "-m", "benchmarks.suite", "--child-family", family, "--child-model", name,
                   "--child-out", str(out), "--steps", str(args.steps), "--repeats", str(args.repeats),
                   "--inner-backend", args.inner_backend, "--threads", str(args.threads)]
        command += ["--full"] if args.full else ["--quick"]
        command += ["--ci"] if args.ci else []
        command += ["--systems", args.systems] if args.systems else []
        subprocess.run(command, check=True)
        return torch.load(out, weights_only=False)


def child_main(args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    bench = MODELS["full" if args.full else "quick"][args.child_model]
    skeleton = bench.build(torch.device("meta"), dtype)  # counts blocks without allocating weights
    num_blocks = sum(len(getattr(skeleton, name)) for name in bench.block_lists)
    del skeleton
    threshold = SETTINGS["full" if args.full else "quick"][args.child_model]
    only = tuple(part for part in args.systems.split(",") if part)
    systems = build_systems(bench, num_blocks, args.steps, threshold, args.inner_backend, args.ci, args.child_family,
                            only)
    rows = run_systems(systems, bench, device, dtype, args.steps, args.repeats, not args.full)
    for row, system in zip(rows, systems):
        row["skipped_blocks"] = system.skipped_blocks(num_blocks)
        row["run"] = args.child_family
    probe = overhead_probe(bench, device, dtype, args.steps, max(2 * args.repeats, 3), args.inner_backend) \
        if args.child_family == "cachedit" else None
    torch.save({"rows": rows, "probe": probe}, args.child_out)


def benchmark_model(args: argparse.Namespace, name: str, device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    bench = MODELS["full" if args.full else "quick"][name]
    probe_model = bench.build(device, dtype)
    num_blocks = sum(len(getattr(probe_model, n)) for n in bench.block_lists)
    forward_flops, per_block_flops = block_flops(probe_model, bench, bench.make_inputs(
        torch.Generator().manual_seed(1), device, dtype))
    del probe_model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    notes = ["diffusers' FirstBlockCacheConfig has no step mask, so it runs with its threshold only",
             "each family ran in its own process beside its own eager and Inductor baselines; "
             "its speedups are against those"]
    families = [f for f in FAMILIES if f != "cache-dit" or available_peers()["cache-dit"]]
    if "cache-dit" not in families:
        notes.append("cache-dit not installed (pip install -e '.[bench]'): its rows are missing")
    rows, probe, reference = [], None, None
    for family in families:
        child = run_family_in_child(args, name, family)
        family_rows = {r["system"]: r for r in child["rows"]}
        if family == "cachedit":
            probe, reference = child["probe"], family_rows["inductor"]["_latent"]
        for row in child["rows"]:
            if family != "cachedit" and row["family"] in ("eager", "inductor"):
                continue
            baseline = family_rows["inductor" if row["compiled"] else "eager"]["seconds"]
            row["speedup"] = baseline / row["seconds"]
            row["speedup_vs_inductor"] = family_rows["inductor"]["seconds"] / row["seconds"]
            skipped = row.pop("skipped_blocks")
            if skipped is not None:
                saved = skipped * per_block_flops
                ideal = args.steps * forward_flops / (args.steps * forward_flops - saved)
                row["ideal_speedup"] = ideal
                row["realised_over_ideal"] = row["speedup"] / ideal
            rows.append(row)
    for row in rows:
        row.update(fidelity(row.pop("_latent"), reference))
    return {"model": bench.name, "class": bench.class_name, "config": bench.config, "steps": args.steps,
            "threshold0_overhead": probe, "num_blocks": num_blocks, "forward_gflops": forward_flops / 1e9,
            "block_share": per_block_flops * num_blocks / forward_flops,
            "threshold": SETTINGS["full" if args.full else "quick"][name], "rows": rows, "notes": notes}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="CPU size (default)")
    size.add_argument("--full", action="store_true", help="GPU size: real FLUX.1-dev and Wan2.1-1.3B architectures")
    parser.add_argument("--ci", action="store_true", help="smoke run: FLUX only, 6 steps, 1 repeat, fewer systems")
    parser.add_argument("--models", default="flux,wan")
    parser.add_argument("--systems", default="", help="comma-separated parts of system names to keep besides "
                        "the baselines (e.g. SCM,threshold0); default: all")
    parser.add_argument("--steps", type=int, default=None, help="default: 28 (quick and full), 6 with --ci")
    parser.add_argument("--repeats", type=int, default=None, help="warm generations per system (default 3; 1 with --ci)")
    parser.add_argument("--inner-backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: steadier timings on shared machines)")
    parser.add_argument("--out", default="benchmarks/results/suite")
    parser.add_argument("--readme", action="store_true", help="rewrite the generated benchmarks section in README.md from the results")
    parser.add_argument("--child-family", choices=FAMILIES, help=argparse.SUPPRESS)
    parser.add_argument("--child-model", help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    size_name = "full" if args.full else "quick"
    device = torch.device("cuda" if args.full else "cpu")
    dtype = torch.bfloat16 if args.full else torch.float32
    args.steps = args.steps or (6 if args.ci else 28)
    args.repeats = args.repeats or (1 if args.ci else 3)
    names = ["flux"] if args.ci else args.models.split(",")
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    if args.child_family:
        child_main(args, device, dtype)
        return {}
    results = {
        "date": datetime.date.today().isoformat(), "size": size_name, "ci": args.ci,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "dtype": str(dtype).replace("torch.", ""), "inner_backend": args.inner_backend, "repeats": args.repeats,
        "interleaved": not args.full,
        "versions": report.versions(),
        "models": [benchmark_model(args, n, device, dtype) for n in names],
    }
    out = Path(args.out)
    report.write(results, out)
    print(report.markdown(results))
    if args.readme:
        report.update_readme(results, out, report.README)
    return results


if __name__ == "__main__":
    main()
