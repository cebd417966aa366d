"""The step's branch taken inside one compiled program against the same program cut at its
branches, the branch taken on the host between compiled parts.

    python -m benchmarks.one_program [--models flux,wan] [--steps 28] [--repeats 5] [--readme]

Per model (the suite's quick sizes), in one process with every system alive and their warm
generations interleaved round by round: plain Inductor, then cachedit at threshold 0, F1B0,
SCM-fast and DBPrune, each in parts (``in_graph_decision=False``: the predicate read on the host
between parts) and as one program (the default). Reported: ms per
generation, threshold-0 overhead over Inductor, realised / ideal speedup of the cached rows
(ideal: FLOPs of the uncached generation over those with the skipped blocks removed), cached
steps, and cold compile time (the first generation minus a warm one; Inductor's on-disk cache
starts empty). Results go to ``benchmarks/results/one_program/``; CPU timings are ratios only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch

from benchmarks import report
from benchmarks.models import MODELS
from benchmarks.suite import SETTINGS, block_flops, run_systems
from benchmarks.systems import CacheSetting, baselines, cachedit_system

README_START = "<!-- one-program:start -->"
README_END = "<!-- one-program:end -->"
DOCUMENT = report.DOCS / "export.md"
"""The document holding the ``one-program`` section that ``--readme`` rewrites."""
HOST, IN_GRAPH = "between parts", "in the program"


def settings(threshold: float, warmup: int, in_graph: bool) -> list[CacheSetting]:
    suffix = "/in-graph" if in_graph else ""
    return [CacheSetting(f"threshold0{suffix}", 1, 0, 0.0, warmup, in_graph=in_graph),
            CacheSetting(f"F1B0{suffix}", 1, 0, threshold, warmup, in_graph=in_graph),
            CacheSetting(f"SCM-fast{suffix}", 1, 0, threshold, warmup, mask_policy="fast", in_graph=in_graph),
            CacheSetting(f"DBPrune{suffix}", 1, 0, threshold, warmup, prune=True, in_graph=in_graph)]


def measure_model(name: str, steps: int, repeats: int) -> dict[str, Any]:
    bench = MODELS["quick"][name]
    device, dtype = torch.device("cpu"), torch.float32
    probe = bench.build(device, dtype)
    num_blocks = sum(len(getattr(probe, n)) for n in bench.block_lists)
    forward_flops, per_block_flops = block_flops(probe, bench, bench.make_inputs(torch.Generator().manual_seed(1),
                                                                                 device, dtype))
    del probe
    warmup = min(4, steps // 4)
    threshold = SETTINGS["quick"][name]
    systems = baselines("inductor")[1:] + [cachedit_system(s, steps, "inductor")
                                          for in_graph in (False, True) for s in settings(threshold, warmup, in_graph)]
    rows = run_systems(systems, bench, device, dtype, steps, repeats, interleave=True, warm_compile=False)
    inductor = next(r for r in rows if r["system"] == "inductor")
    table = []
    for row, system in zip(rows, systems):
        if system.setting is None:
            continue
        skipped = system.skipped_blocks(num_blocks)
        ideal = steps * forward_flops / (steps * forward_flops - skipped * per_block_flops)
        speedup = inductor["seconds"] / row["seconds"]
        table.append({
            "setting": system.setting.name.split("/")[0], "decision": IN_GRAPH if system.setting.in_graph else HOST,
            "ms_per_generation": row["seconds"] * 1e3, "speedup_vs_inductor": speedup, "ideal_speedup": ideal,
            "realised_over_ideal": speedup / ideal, "cached_steps": row["num_cached_steps"],
            "cold_compile_s": row["cold_compile_s"],
        })
    return {"model": bench.name, "num_blocks": num_blocks, "steps": steps, "repeats": repeats,
            "inductor_ms": inductor["seconds"] * 1e3, "inductor_cold_compile_s": inductor["cold_compile_s"],
            "rows": table}


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for model in results["models"]:
        lines += [f"**{model['model']}** ({model['num_blocks']} blocks, {model['steps']} steps, median of "
                  f"{model['repeats']} interleaved generations; plain Inductor {model['inductor_ms']:.0f} ms, "
                  f"cold compile {model['inductor_cold_compile_s']:.0f} s)", "",
                  "| setting | branch taken | ms / generation | vs Inductor | realised / ideal | cached steps | cold compile s |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for row in model["rows"]:
            versus = (f"{100 * (1 / row['speedup_vs_inductor'] - 1):+.1f}%" if row["setting"] == "threshold0"
                      else f"{row['speedup_vs_inductor']:.2f}x")
            lines.append(f"| {row['setting']} | {row['decision']} | {row['ms_per_generation']:.0f} | {versus} | "
                         f"{row['realised_over_ideal']:.2f} | {row['cached_steps']} | {row['cold_compile_s']:.0f} |")
        lines.append("")
    lines.append(f"CPU ({results['threads']} threads), fp32, {results['date']}; threshold-0 rows give the overhead over "
                 "plain Inductor, cached rows the speedup over it.")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="flux,wan")
    parser.add_argument("--steps", type=int, default=28)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/one_program")
    parser.add_argument("--readme", action="store_true", help="rewrite the generated one-program section in docs/export.md")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as cache_dir:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir  # cold compiles for every system
        models = [measure_model(name, args.steps, args.repeats) for name in args.models.split(",")]
    results = {"date": datetime.date.today().isoformat(), "threads": args.threads, "versions": report.versions(),
               "models": models}
    report.publish(results, markdown(results), Path(args.out), "python -m benchmarks.one_program --readme",
                   (README_START, README_END), args.readme, DOCUMENT)
    return results


if __name__ == "__main__":
    main()
