"""Turn suite results into files: ``results.json``, ``results.md``, PNG plots, and README's
performance section (between ``<!-- benchmarks:start -->`` and ``<!-- benchmarks:end -->``).
Every number in README and ``docs/`` comes from a results file; none is typed by hand. Each
generator names the document holding its section (``README`` or a guide under ``DOCS``)."""

from __future__ import annotations

import importlib.metadata
import json
import math
from pathlib import Path
from typing import Any

README_START = "<!-- benchmarks:start -->"
README_END = "<!-- benchmarks:end -->"
ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PACKAGES = ("torch", "diffusers", "triton", "cache-dit")


def versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            found[package] = "not installed"
    return found


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "inf" if math.isinf(value) else f"{value:.{digits}f}"
    return str(value)


def model_table(model: dict[str, Any]) -> str:
    header = ("| system | ms / generation | speedup | vs Inductor | realised / ideal | cached steps | "
              "rel. L2 | PSNR dB | cold compile s | warm compile s | recompiles | graph breaks | peak GB |")
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    for row in model["rows"]:
        lines.append("| " + " | ".join([
            row["system"], _fmt(row["seconds"] * 1e3, 1), _fmt(row["speedup"]), _fmt(row["speedup_vs_inductor"]),
            _fmt(row.get("realised_over_ideal")), _fmt(row["num_cached_steps"]), _fmt(row["rel_l2"], 4),
            _fmt(row["psnr_db"], 1), _fmt(row["cold_compile_s"], 1), _fmt(row.get("warm_compile_s"), 1),
            _fmt(row["recompiles_per_generation"], 1), _fmt(row["graph_breaks_per_generation"], 1),
            _fmt(row.get("peak_memory_gb")),
        ]) + " |")
    return "\n".join(lines)


def goal_lines(model: dict[str, Any], cpu: bool) -> str:
    """The goals against this model's figures: threshold-0 overhead, realised / ideal
    speedup of the cachedit configs that cached, and cachedit against compiled cache-dit at
    the same skipped steps (the static-mask rows)."""
    overhead_goal, ratio_goal = (3.0, 0.9) if cpu else (1.0, 0.95)
    rows = {r["system"]: r for r in model["rows"]}
    overhead = model["threshold0_overhead"]["overhead_pct"]
    lines = [f"Goals ({'CPU' if cpu else 'GPU'}): threshold-0 overhead {overhead:+.1f}% (goal <= {overhead_goal:.0f}%: "
             f"{'met' if overhead <= overhead_goal else 'missed'})"]
    ratios = {n: r["realised_over_ideal"] for n, r in rows.items()
              if r["family"] == "cachedit" and r["num_cached_steps"] and r.get("realised_over_ideal") is not None}
    if ratios:
        below = sorted(n.split("/", 1)[1] for n, v in ratios.items() if v < ratio_goal)
        lines.append(f"realised / ideal of cachedit configs {min(ratios.values()):.2f}-{max(ratios.values()):.2f} "
                     f"(goal >= {ratio_goal}: " + (f"missed by {', '.join(below)}" if below else "met") + ")")
    for name, row in rows.items():
        peer = rows.get(f"cache-dit/{name.split('/', 1)[1]}/compiled") if name.startswith("cachedit/SCM") else None
        if peer is not None and peer["cached_steps"] == row["cached_steps"]:
            lines.append(f"{name.split('/', 1)[1]} (same {row['num_cached_steps']} steps skipped): "
                         f"{peer['seconds'] / row['seconds']:.2f}x compiled cache-dit")
    return "; ".join(lines) + "."


def markdown(results: dict[str, Any]) -> str:
    parts = [f"Benchmark `{results['size']}`{' (CI smoke)' if results['ci'] else ''} on {results['device']}, "
             f"{results['date']}, {results['dtype']}, inner backend {results['inner_backend']}, median of "
             f"{results['repeats']} warm generations"
             f"{' (systems interleaved round by round)' if results.get('interleaved') else ' (one system at a time)'}; versions: "
             + ", ".join(f"{k} {v}" for k, v in results["versions"].items()) + "."]
    for model in results["models"]:
        parts.append(f"#### {model['model']} ({model['class']}, {model['num_blocks']} blocks, {model['steps']} steps, "
                     f"threshold {model['threshold']}; chain blocks are {model['block_share']:.0%} of the "
                     f"{model['forward_gflops']:.2f} GFLOP forward)")
        parts.append(model_table(model))
        probe = model["threshold0_overhead"]
        parts.append(f"Threshold-0 overhead, interleaved ({probe['rounds']} alternating generations each): plain "
                     f"Inductor {probe['inductor_ms']:.1f} ms, cachedit threshold 0 {probe['cachedit_threshold0_ms']:.1f} ms "
                     f"per generation: {probe['overhead_pct']:+.1f}%.")
        parts.append(goal_lines(model, results["device"].startswith("CPU")))
        parts += [f"- {note}" for note in model["notes"]]
    parts.append("speedup: over plain Inductor for compiled systems, over eager for eager ones. "
                 "realised / ideal: that speedup over the FLOP ratio of the uncached generation to the one "
                 "with the skipped blocks removed. Fidelity: final latent against plain Inductor's.")
    return "\n\n".join(parts)


def write(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "results.md").write_text(markdown(results) + "\n")
    plot(results, out)


def plot(results: dict[str, Any], out: Path) -> None:
    """``time.png`` (ms per generation and speedup per system) and ``speedup_vs_fidelity.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = results["models"]
    fig, axes = plt.subplots(len(models), 2, figsize=(14, 4 + 0.25 * max(len(m["rows"]) for m in models) * len(models)),
                             squeeze=False)
    for (time_ax, speed_ax), model in zip(axes, models):
        names = [r["system"] for r in model["rows"]]
        time_ax.barh(names, [r["seconds"] * 1e3 for r in model["rows"]])
        time_ax.set_xlabel("ms per generation")
        time_ax.set_title(model["model"])
        time_ax.invert_yaxis()
        speed_ax.barh(names, [r["speedup_vs_inductor"] for r in model["rows"]])
        speed_ax.axvline(1.0, color="black", linewidth=0.8)
        speed_ax.set_xlabel("speedup over plain Inductor")
        speed_ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(out / "time.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, model in zip(axes[0], models):
        for family in sorted({r["family"] for r in model["rows"]}):
            rows = [r for r in model["rows"] if r["family"] == family and r["num_cached_steps"]]
            if rows:
                ax.scatter([min(r["psnr_db"], 100.0) for r in rows], [r["speedup_vs_inductor"] for r in rows],
                           label=family)
        ax.set_xlabel("PSNR of final latent vs plain Inductor (dB, capped at 100)")
        ax.set_ylabel("speedup over plain Inductor")
        ax.set_title(model["model"])
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "speedup_vs_fidelity.png", dpi=110)
    plt.close(fig)


def publish(results: dict[str, Any], table: str, out: Path, command: str, markers: tuple[str, str],
            readme: bool, document: Path = README) -> None:
    """Write ``results.json`` and ``results.md`` (``table``) to ``out``, print the table and,
    with ``readme``, put it between the ``markers`` of ``document`` (README.md or a guide in
    ``docs/``) credited to ``command``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table + "\n")
    print(table)
    if readme:
        body = f"_Generated by `{command}` from `{out}/results.json`._\n\n{table}"
        replace_readme_section(document, *markers, body)


def replace_readme_section(readme: Path, start: str, end: str, body: str) -> None:
    """Replace what stands between the ``start`` and ``end`` markers of ``readme`` (any markdown
    document: README.md or a guide in ``docs/``) with ``body``."""
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} has no {start} ... {end} section")
    head, rest = text.split(start, 1)
    readme.write_text(f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}")


def update_readme(results: dict[str, Any], out: Path, readme: Path) -> None:
    """Replace README's performance section with the tables of ``results`` (``out`` named)."""
    body = (f"_Generated by `python -m benchmarks --readme` from `{out}/results.json`; "
            f"plots: `{out}/time.png`, `{out}/speedup_vs_fidelity.png`._\n\n{markdown(results)}")
    replace_readme_section(readme, README_START, README_END, body)


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.report RESULTS_DIR``: rewrite ``results.md`` and README's performance section."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results_dir")
    args = parser.parse_args(argv)
    out = Path(args.results_dir)
    results = json.loads((out / "results.json").read_text())
    (out / "results.md").write_text(markdown(results) + "\n")
    update_readme(results, out, README)


if __name__ == "__main__":
    main()
