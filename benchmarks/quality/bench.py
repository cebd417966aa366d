"""What each cache setting costs in quality, on the trained digits DiT.

    python -m benchmarks.quality                 # every setting and peer; writes results + the quality section of docs/performance.md
    python -m benchmarks.quality --quick         # a few settings, fewer samples (a smoke run)

Every system samples the same seeded noise for ``--per-class`` images of each digit with the
same Euler flow-matching loop. Per system: time per generation and speedup (over plain
Inductor for compiled systems, over eager for eager ones), ideal speedup from the FLOPs of the
skipped blocks, cached steps; quality against the uncached compiled samples (PSNR over all
pixels, mean SSIM) and against the real test digits through the shipped classifier (Frechet
distance of its features, label agreement). Families run in their own processes, as in the
compiled-model suite (``benchmarks/suite.py``), whose runner they share.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from benchmarks import report
from benchmarks.quality.classifier import DigitClassifier, load_classifier
from benchmarks.quality.data import load_digits_split, to_unit_range
from benchmarks.quality.measures import (batch_psnr, classifier_features, frechet_distance, label_agreement,
                                         mean_ssim)
from benchmarks.quality.model import CLASSIFIER_WEIGHTS, balanced_labels, digits_bench_model, unpatchify
from benchmarks.suite import block_flops, run_systems
from benchmarks.systems import (CacheSetting, System, available_peers, baselines, cache_dit_system,
                                cachedit_system, diffusers_fbc_system)

WARMUP = 4
FAMILIES = ("cachedit", "cache-dit", "diffusers-fbc")
README_START = "<!-- quality:start -->"
README_END = "<!-- quality:end -->"
DOCUMENT = report.DOCS / "performance.md"
"""The document holding the ``quality`` section that ``--readme`` rewrites."""


def cachedit_settings(quick: bool) -> list[CacheSetting]:
    """Thresholds, F/B counts, calibrators, static step masks and DBPrune."""
    settings = [CacheSetting(f"F1B0 t={t}", 1, 0, t, WARMUP) for t in (0.04, 0.08, 0.12, 0.2, 0.3)]
    settings += [CacheSetting(f"F{f}B{b} t=0.12", f, b, 0.12, WARMUP) for f, b in ((2, 0), (4, 0), (1, 1), (2, 2))]
    settings += [CacheSetting(f"F1B0 t=0.12 TaylorSeer{k}", 1, 0, 0.12, WARMUP, taylor_order=k) for k in (1, 2, 3)]
    settings += [CacheSetting("F1B0 t=0.12 FoCa", 1, 0, 0.12, WARMUP, foca=True)]
    settings += [CacheSetting(f"SCM-{p}", 1, 0, 0.12, WARMUP, mask_policy=p) for p in ("slow", "medium", "fast", "ultra")]
    settings += [CacheSetting("SCM-fast TaylorSeer1", 1, 0, 0.12, WARMUP, taylor_order=1, mask_policy="fast")]
    settings += [CacheSetting(f"DBPrune F1B0 t={t}", 1, 0, t, WARMUP, prune=True) for t in (0.08, 0.12)]
    if quick:
        keep = {"F1B0 t=0.12", "F1B0 t=0.12 TaylorSeer1", "SCM-fast", "DBPrune F1B0 t=0.12"}
        settings = [s for s in settings if s.name in keep]
    return settings


def peer_settings(quick: bool) -> list[CacheSetting]:
    names = {"F1B0 t=0.08", "F1B0 t=0.12", "F1B0 t=0.12 TaylorSeer1", "SCM-fast"}
    if quick:
        names = {"F1B0 t=0.12"}
    return [s for s in cachedit_settings(False) if s.name in names]


def build_systems(family: str, steps: int, inner: str, quick: bool, block_lists: tuple[str, ...]) -> list[System]:
    systems = baselines(inner)
    if family == "cachedit":
        systems += [cachedit_system(s, steps, inner) for s in cachedit_settings(quick)]
    elif family == "cache-dit":
        systems += [cache_dit_system(s, steps, False, inner) for s in peer_settings(quick)]
    else:
        thresholds = (0.12,) if quick else (0.08, 0.12)
        systems += [diffusers_fbc_system(t, block_lists, False, inner, name=f"diffusers-fbc t={t}")
                    for t in thresholds]
    return systems


def child_main(args: argparse.Namespace) -> None:
    bench = digits_bench_model(args.per_class)
    systems = build_systems(args.child_family, args.steps, args.inner_backend, args.quick, bench.block_lists)
    rows = run_systems(systems, bench, torch.device("cpu"), torch.float32, args.steps, args.repeats,
                       interleave=True, warm_compile=False)
    num_blocks = bench.config["num_layers"] + bench.config["num_single_layers"]
    for row, system in zip(rows, systems):
        row["skipped_blocks"] = system.skipped_blocks(num_blocks)
        row["run"] = args.child_family
    torch.save(rows, args.child_out)


def run_family(args: argparse.Namespace, family: str) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rows.pt"
        command = [sys.executable, "-m", "benchmarks.quality", "--child-family", family, "--child-out", str(out),
                   "--steps", str(args.steps), "--repeats", str(args.repeats), "--per-class", str(args.per_class),
                   "--inner-backend", args.inner_backend, "--threads", str(args.threads)]
        command += ["--quick"] if args.quick else []
        subprocess.run(command, check=True)
        return torch.load(out, weights_only=False)


def score(rows: list[dict[str, Any]], per_class: int, steps: int, forward_flops: float, block_flops_mean: float,
          classifier: DigitClassifier, real: np.ndarray) -> list[dict[str, Any]]:
    """Quality and speed figures of every row (latents dropped), against the uncached compiled run;
    ``real``: the classifier's features of the real test digits."""
    labels = balanced_labels(per_class)
    by_name = {(r["run"], r["system"]): r for r in rows}
    reference = to_unit_range(unpatchify(by_name[("cachedit", "inductor")]["_latent"]))
    scored = []
    for row in rows:
        if row["run"] != "cachedit" and row["family"] in ("eager", "inductor"):
            continue
        images = to_unit_range(unpatchify(row.pop("_latent")))
        baseline = by_name[(row["run"], "inductor" if row["compiled"] else "eager")]["seconds"]
        saved = (row["skipped_blocks"] or 0) * block_flops_mean
        row.update(speedup=baseline / row["seconds"], ideal_speedup=steps * forward_flops / (steps * forward_flops - saved),
                   psnr_db=batch_psnr(images, reference), ssim=mean_ssim(images, reference),
                   frechet=frechet_distance(classifier_features(classifier, images), real),
                   label_agreement=label_agreement(classifier, images, labels))
        scored.append(row)
    return scored


MIN_PSNR_DB = 30.0
MAX_AGREEMENT_DROP = 0.01
MAX_FRECHET_RISE = 0.10
"""A config is "near-lossless" when its samples stay within these bounds of the uncached ones
(fixed before the first measurement, not fitted to it)."""


def recommend(results: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The fastest cachedit row that is near-lossless (bounds above), or None."""
    reference = next(r for r in results["rows"] if r["system"] == "inductor")
    fits = [r for r in results["rows"] if r["run"] == "cachedit" and r["num_cached_steps"]
            and r["psnr_db"] >= MIN_PSNR_DB and r["label_agreement"] >= reference["label_agreement"] - MAX_AGREEMENT_DROP
            and r["frechet"] <= reference["frechet"] * (1 + MAX_FRECHET_RISE)]
    return max(fits, key=lambda r: r["speedup"], default=None)


def markdown(results: dict[str, Any]) -> str:
    header = ("| system | cached steps | skipped blocks | ms / generation | speedup | ideal | PSNR dB vs uncached | "
              "SSIM | Frechet (test digits) | label agreement |")
    lines = [f"Quality benchmark on {results['device']}, {results['date']}: {results['model']}, {results['samples']} "
             f"samples ({results['per_class']} per digit), {results['steps']} Euler steps, warmup {WARMUP}, inner backend "
             f"{results['inner_backend']}. Real test digits against the training digits give a Frechet distance of "
             f"{results['frechet_train_vs_test']:.2f} (the floor at this sample size).", "",
             header, "|" + " --- |" * (header.count("|") - 1)]
    for row in results["rows"]:
        psnr = "inf" if row["psnr_db"] == float("inf") else f"{row['psnr_db']:.1f}"
        lines.append(f"| {row['system']} | {row['num_cached_steps'] if row['num_cached_steps'] is not None else '-'} | "
                     f"{row['skipped_blocks'] if row['skipped_blocks'] is not None else '-'} | {row['seconds'] * 1e3:.0f} | "
                     f"{row['speedup']:.2f} | {row['ideal_speedup']:.2f} | {psnr} | {row['ssim']:.4f} | "
                     f"{row['frechet']:.2f} | {row['label_agreement']:.3f} |")
    best = recommend(results)
    bounds = (f"PSNR >= {MIN_PSNR_DB:.0f} dB, label agreement at most {MAX_AGREEMENT_DROP:.0%} below uncached, "
              f"Frechet at most {MAX_FRECHET_RISE:.0%} above uncached")
    lines += ["", f"Recommended (the fastest near-lossless cachedit config: {bounds}): "
              + (f"**{best['system'].split('/', 1)[1]}**, {best['speedup']:.2f}x, {best['psnr_db']:.1f} dB, "
                 f"Frechet {best['frechet']:.2f} vs {results['frechet_uncached']:.2f} uncached."
                 if best else "none of the configs stays within these bounds.")]
    lines += ["", "speedup: over plain Inductor (compiled systems) or eager (eager systems), measured in the same "
              "process round by round; ideal: FLOPs of the uncached generation over those left after the skipped "
              "blocks. PSNR / SSIM: against plain Inductor's uncached samples from the same noise."]
    return "\n".join(lines)


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 5.5))
    rows = [r for r in results["rows"] if r["num_cached_steps"]]
    for family in sorted({r["run"] for r in rows}):
        mine = [r for r in rows if r["run"] == family]
        axes[0].scatter([r["psnr_db"] for r in mine], [r["speedup"] for r in mine], label=family)
        axes[1].scatter([r["frechet"] for r in mine], [r["speedup"] for r in mine], label=family)
        for r in mine:
            axes[0].annotate(r["system"].split("/", 1)[-1], (r["psnr_db"], r["speedup"]), fontsize=6)
    axes[0].set_xlabel("PSNR vs uncached samples (dB)")
    axes[1].set_xlabel("Frechet distance to the real test digits (lower is better)")
    axes[1].axvline(results["frechet_uncached"], color="black", linewidth=0.8, label="uncached")
    for ax in axes:
        ax.set_ylabel("speedup")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "speed_vs_quality.png", dpi=110)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few settings, 5 per class, 10 steps")
    parser.add_argument("--per-class", type=int, default=None, help="samples per digit (default 30; 5 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="default 28; 10 with --quick")
    parser.add_argument("--repeats", type=int, default=1, help="timed warm generations per system")
    parser.add_argument("--inner-backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--out", default="benchmarks/results/quality")
    parser.add_argument("--readme", action="store_true", help="rewrite the generated quality section in docs/performance.md from the results")
    parser.add_argument("--child-family", choices=FAMILIES, help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.per_class = args.per_class or (5 if args.quick else 30)
    args.steps = args.steps or (10 if args.quick else 28)
    torch.set_num_threads(args.threads)
    if args.child_family:
        child_main(args)
        return {}
    families = [f for f in args.families.split(",") if f != "cache-dit" or available_peers()["cache-dit"]]
    unknown = set(families) - set(FAMILIES)
    if unknown or "cachedit" not in families:
        raise SystemExit(f"--families must include cachedit and name only {FAMILIES}, got {args.families!r}")
    bench = digits_bench_model(args.per_class)
    forward_flops, per_block = block_flops(bench.build(torch.device("cpu"), torch.float32), bench,
                                           bench.make_inputs(torch.Generator(), torch.device("cpu"), torch.float32))
    rows = [row for family in families for row in run_family(args, family)]
    classifier = load_classifier(CLASSIFIER_WEIGHTS)
    train, test = load_digits_split()
    real = classifier_features(classifier, to_unit_range(test.images))
    rows = score(rows, args.per_class, args.steps, forward_flops, per_block, classifier, real)
    results = {
        "date": datetime.date.today().isoformat(), "device": f"CPU ({platform.machine()}, {args.threads} threads)",
        "model": bench.name, "per_class": args.per_class, "samples": 10 * args.per_class, "steps": args.steps,
        "inner_backend": args.inner_backend, "versions": report.versions(), "rows": rows,
        "frechet_uncached": next(r["frechet"] for r in rows if r["system"] == "inductor"),
        "frechet_train_vs_test": frechet_distance(classifier_features(classifier, to_unit_range(train.images)), real),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.md").write_text(markdown(results) + "\n")
    plot(results, out)
    print(markdown(results))
    if args.readme:
        body = (f"_Generated by `python -m benchmarks.quality --readme` from `{out}/results.json`; plot: "
                f"`{out}/speed_vs_quality.png`._\n\n{markdown(results)}")
        report.replace_readme_section(DOCUMENT, README_START, README_END, body)
    return results
