"""``python -m benchmarks.coverage [--readme] [--classes A,B] [--jobs 2] [--tiny | --real]``: the support matrix.

For every transformer class of ``diffusers.models.transformers`` (``diffusers_transformer_classes``)
with a ``ClassSpec`` (``cachedit_fx.example_inputs``), in a worker process of its own:

  1. build the tiny random-init model (parameters a zero init left at exactly 0 redrawn, so
     every block changes its input) and its inputs;
  2. run ``STEPS`` denoising-like steps eagerly (the latent moves, the timestep falls);
  3. compile it with a plain ``torch.compile(model, backend="cachedit")`` (Dynamo's default
     settings, not ``cachedit_fx.compile``'s capture settings; huge threshold) and run the steps:
     the graphs Dynamo captured without the capture settings, and whether every step after the
     warmup was cached that way;
  4. ``cachedit_fx.compile`` it (F1B0, eager pieces, threshold 0, one warmup step) and run the
     same steps: every graph Dynamo captured and how it was compiled (the chain, or the
     fallback reason) is read from the model's cache records, graph breaks from Dynamo's
     counters; threshold 0 must equal eager within ``REL_TOLERANCE``;
  5. ``refresh`` with a huge threshold and run again: every step after the warmup must be
     cached and every output finite.

Classes without a spec are listed with the reason (``NOT_COVERED``, or "no spec"). Results go
to ``benchmarks/results/coverage/results.json`` and ``results.md``; ``--readme`` rewrites
README's "Supported models" table from them. The table's "published config: chain" column comes
from ``benchmarks/coverage/real_architectures.py`` (each class at its published configuration,
full depth, on fake tensors without weights; ``real_architectures.json`` beside
``results.json``). Without a flag both parts run; ``--tiny`` runs only the tiny models (reusing
the stored published-config rows), ``--real`` only the published-config analysis (reusing the
stored tiny rows).
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import inspect
import json
import multiprocessing
import pkgutil
import re
import time
import traceback
from pathlib import Path
from typing import Any, Optional

import torch

from benchmarks import report
from benchmarks.coverage import real_architectures

STEPS = 6
WARMUP = 1
REL_TOLERANCE = 1e-5
HUGE_THRESHOLD = 1e9
README_START = "<!-- coverage:start -->"
README_END = "<!-- coverage:end -->"
DOCUMENT = report.README
"""The document holding the ``coverage`` section that ``--readme`` rewrites."""
OUT = Path("benchmarks/results/coverage")
KNOWN_LIMITS: dict[str, str] = {
    "HiDreamImageTransformer2DModel":
        "every block's MoE feed-forward routes tokens with bincount().cpu() and a Python loop over the experts "
        "(transformer_hidream_image.py, moe_infer): Dynamo breaks the graph in each block, and with the capture "
        "settings gives up on the loop and runs the blocks eagerly",
    "WanAnimate2Transformer3DModel":
        "every block's attention reads the grid sizes with .tolist() (transformer_wan_animate_2.py, rope_apply and "
        "the attention processor): a graph break in each block",
}
"""Class -> the cause, found by reading the model, of what keeps it uncached (shown only while
its row is not cached)."""


def diffusers_transformer_classes() -> dict[str, str]:
    """Every ``ModelMixin`` class defined in a module of ``diffusers.models.transformers`` ->
    that module's name."""
    import diffusers
    import diffusers.models.transformers as transformers

    found = {}
    for info in pkgutil.iter_modules(transformers.__path__):
        module = importlib.import_module(f"{transformers.__name__}.{info.name}")
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, diffusers.ModelMixin) and obj.__module__ == module.__name__:
                found[name] = info.name
    return dict(sorted(found.items()))


def redraw_zero_parameters(model: torch.nn.Module, seed: int) -> int:
    """Give every floating parameter that is exactly zero everywhere small random values (a
    zero-initialised output or gate layer would make the tiny model's blocks the identity, or
    its output 0, and hide what caching does). Returns how many tensors were redrawn."""
    gen = torch.Generator().manual_seed(seed)
    count = 0
    with torch.no_grad():
        for param in model.parameters():
            if param.is_floating_point() and param.numel() and not param.any():
                param.copy_(0.02 * torch.randn(param.shape, generator=gen, dtype=param.dtype))
                count += 1
    return count


def _moved(value: Any, target: Any, a: float) -> Any:
    if torch.is_tensor(value) and value.is_floating_point():
        return (1 - a) * value + a * target
    if isinstance(value, (list, tuple)):
        return type(value)(_moved(v, t, a) for v, t in zip(value, target))
    return value


def _noise_like(value: Any, gen: torch.Generator) -> Any:
    if torch.is_tensor(value):
        return torch.randn(value.shape, generator=gen, dtype=value.dtype) if value.is_floating_point() else value
    if isinstance(value, (list, tuple)):
        return type(value)(_noise_like(v, gen) for v in value)
    return value


def _fallen(timestep: Any, a: float) -> Any:
    if torch.is_tensor(timestep):
        scaled = timestep.double() * (1 - a)
        return (scaled if timestep.is_floating_point() else scaled.round()).to(timestep.dtype)
    if isinstance(timestep, (int, float)):
        return type(timestep)(timestep * (1 - a))
    return timestep


def trajectory(inputs: dict[str, Any], latent: str, timestep: Optional[str], steps: int) -> list[dict[str, Any]]:
    """Per-step inputs: the latent moves toward fixed noise and the timestep falls, like a sampler."""
    target = _noise_like(inputs[latent], torch.Generator().manual_seed(1))
    result = []
    for k in range(steps):
        a = k / (steps + 1)
        step = dict(inputs)
        step[latent] = _moved(inputs[latent], target, a)
        if timestep is not None and timestep in inputs:
            step[timestep] = _fallen(inputs[timestep], a)
        result.append(step)
    return result


def _first_output(result: Any) -> Any:
    output = result[0] if isinstance(result, (tuple, list)) else result
    return getattr(output, "sample", output)


def _tensors(value: Any) -> list[torch.Tensor]:
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _run(model: Any, steps: list[dict[str, Any]]) -> list[list[torch.Tensor]]:
    with torch.no_grad():
        return [[t.detach().clone() for t in _tensors(_first_output(model(**s, return_dict=False)))] for s in steps]


def _max_rel_err(got: list[list[torch.Tensor]], want: list[list[torch.Tensor]]) -> float:
    worst = 0.0
    for got_step, want_step in zip(got, want):
        for g, w in zip(got_step, want_step):
            scale = w.abs().max().clamp_min(1e-12)
            worst = max(worst, ((g - w).abs().max() / scale).item())
    return worst


def _breaks() -> list[str]:
    """Dynamo's graph-break reasons so far, and the frames it gave up on (run eagerly)."""
    from torch._dynamo.utils import counters

    return [reason.splitlines()[0][:160] for key in ("graph_break", "unimplemented") for reason in counters[key]]


def _cached_steps(compiled: Any) -> list[int]:
    """The steps ``compiled`` cached in its latest generation; [] where no graph caches a chain."""
    import cachedit_fx

    try:
        return cachedit_fx.summary(compiled).cached_steps
    except ValueError:  # summary's answer for a model compiled without cache
        return []


def measure(class_name: str) -> dict[str, Any]:
    """One row of the matrix (see the module docstring)."""
    import cachedit_fx
    from cachedit_fx.example_inputs import SPECS, tiny_model
    from cachedit_fx.runtime.registry import cache_for_model, forget_model
    from torch._dynamo.utils import counters

    torch.set_num_threads(1)
    start = time.perf_counter()
    spec = SPECS[class_name]
    row: dict[str, Any] = {"class": class_name}
    model, inputs = tiny_model(class_name)
    row["redrawn_zero_params"] = redraw_zero_parameters(model, seed=0)
    row["params"] = sum(p.numel() for p in model.parameters())
    steps = trajectory(inputs, spec.latent, spec.timestep, STEPS)
    eager = _run(model, steps)
    torch._dynamo.reset()
    counters.clear()
    plain = torch.compile(model, backend="cachedit", options=dict(
        inner_backend="eager", Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=HUGE_THRESHOLD,
        max_warmup_steps=WARMUP, num_inference_steps=STEPS))
    outputs = _run(plain, steps)
    row["graphs_default_settings"] = int(counters["stats"]["unique_graphs"])
    row["breaks_default_settings"] = list(dict.fromkeys(_breaks()))
    row["cached_steps_default_settings"] = _cached_steps(plain)
    row["caches_default_settings"] = (row["cached_steps_default_settings"] == list(range(WARMUP, STEPS))
                                      and all(bool(torch.isfinite(t).all()) for step in outputs for t in step))
    forget_model(model)
    torch._dynamo.reset()
    counters.clear()
    compiled = cachedit_fx.compile(model, inner_backend="eager", Fn_compute_blocks=1, Bn_compute_blocks=0,
                                   residual_diff_threshold=0.0, max_warmup_steps=WARMUP,
                                   num_inference_steps=STEPS)
    threshold0 = _run(compiled, steps)
    cache = cache_for_model(model)
    row["graphs"] = int(counters["stats"]["unique_graphs"])
    row["breaks"] = list(dict.fromkeys(_breaks()))
    row["chains"] = [detail for cached, detail in cache.graphs if cached]
    row["fallbacks"] = list(dict.fromkeys(detail for cached, detail in cache.graphs if not cached))
    row["threshold0_max_rel_err"] = _max_rel_err(threshold0, eager)
    row["threshold0_equal"] = row["threshold0_max_rel_err"] <= REL_TOLERANCE
    if row["chains"]:
        cachedit_fx.refresh(compiled, residual_diff_threshold=HUGE_THRESHOLD)
        outputs = _run(compiled, steps)
        summary = cachedit_fx.summary(compiled)
        row["cached_steps"] = summary.cached_steps
        row["expected_cached_steps"] = list(range(WARMUP, STEPS))
        row["finite"] = all(bool(torch.isfinite(t).all()) for step in outputs for t in step)
        row["caches"] = (row["threshold0_equal"] and row["finite"]
                         and row["cached_steps"] == row["expected_cached_steps"])
    else:
        row["caches"] = False
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _measure_safely(class_name: str) -> dict[str, Any]:
    try:
        return measure(class_name)
    except Exception as error:  # a row records any failure; the matrix goes on
        return {"class": class_name, "caches": False, "error": f"{type(error).__name__}: {error}"[:600],
                "traceback": traceback.format_exc()[-2000:]}


def run_matrix(classes: list[str], jobs: int) -> list[dict[str, Any]]:
    if jobs <= 1:
        return [_measure_safely(name) for name in classes]
    context = multiprocessing.get_context("spawn")
    with context.Pool(jobs, maxtasksperchild=1) as pool:
        return pool.map(_measure_safely, classes, chunksize=1)


def status(row: dict[str, Any]) -> str:
    if "skipped" in row:
        return "not a target"
    if row.get("caches"):
        return "cached"
    if "error" in row:
        return "error"
    if not row.get("chains"):
        return "no cache"
    return "wrong" if not row.get("threshold0_equal", True) or not row.get("finite", True) else "partial"


def note(row: dict[str, Any]) -> str:
    """What a reader needs about the row: graph breaks around a cached chain; for a model without
    cache, why (the known limitation, the fallback reasons of graphs holding blocks, the breaks)."""
    breaks = "; ".join(row.get("breaks") or [])
    state = status(row)
    if state == "cached":
        after = [part.split(" epilogue")[0] for chain in row.get("chains") or [] for part in chain.split(", ")
                 if part.endswith(" epilogue")]
        parts = ([f"graph breaks outside the chain: {breaks}"] if breaks else []) + (
            [f"after the chain, not cached: {', '.join(after)}"] if after else [])
        return "; ".join(parts)
    if state == "error":
        return row["error"]
    reasons = [r.split(" If an earlier call")[0] for r in row.get("fallbacks") or []
               if not r.startswith("no repeated transformer blocks found")]
    parts = [KNOWN_LIMITS.get(row["class"], "")] + reasons + ([f"graph breaks: {breaks}"] if breaks else [])
    if state == "wrong":
        parts.insert(0, f"threshold 0 differs from eager ({row.get('threshold0_max_rel_err'):.1e}) or output not finite")
    if state == "partial":
        parts.insert(0, f"cached steps {row.get('cached_steps')} instead of {row.get('expected_cached_steps')}")
    return "; ".join(p for p in parts if p)


NEEDS_CAPTURE_SETTINGS = "no: needs `cachedit_fx.compile` (or the two Dynamo capture settings)"
_CHAIN_LIST = re.compile(r"(\S+)\[\d+\] \(")


def plain_compile_cell(row: dict[str, Any]) -> str:
    """Whether a class that caches under ``cachedit_fx.compile`` also caches under a plain
    ``torch.compile(model, backend="cachedit")``; "-" for a class that does not cache at all."""
    if status(row) != "cached" or "caches_default_settings" not in row:
        return "-"
    return "yes" if row["caches_default_settings"] else NEEDS_CAPTURE_SETTINGS


def published_chain_cell(row: dict[str, Any], published: Optional[dict[str, Any]]) -> str:
    """The published-configuration chain of ``row``'s class, marked where its lists differ from
    the tiny model's chain."""
    cell = real_architectures.published_cell(published)
    tiny_lists = [_CHAIN_LIST.findall(chain.split("; side lists")[0]) for chain in row.get("chains") or []]
    full_lists = [[path for path, _ in lists] for lists in (published or {}).get("chain_lists") or []]
    if tiny_lists and full_lists and tiny_lists != full_lists:
        cell += " (other lists than the tiny model's chain)"
    return cell


def markdown(results: dict[str, Any], published: Optional[dict[str, Any]] = None) -> str:
    """The matrix table; ``published``: the stored results of ``real_architectures`` (its column
    reads "not analysed" without them)."""
    rows = results["rows"]
    counted = [r for r in rows if "skipped" not in r]
    cached = sum(1 for r in counted if status(r) == "cached")
    by_class = {row["class"]: row for row in (published or {}).get("rows", [])}
    full = sum(1 for r in counted if by_class.get(r["class"], {}).get("chains"))
    needs = sum(1 for r in counted if plain_compile_cell(r) == NEEDS_CAPTURE_SETTINGS)
    analysed = (f"{published['date']}, {published['total_s']:.0f} s in all" if published else "not run yet")
    lines = [f"{cached} of {len(counted)} DiT classes of diffusers {results['versions'].get('diffusers')} cache with "
             f"zero configuration; {len(rows) - len(counted)} transformer classes are not DiT denoisers. "
             f"{results['date']}, CPU, tiny random-init models, {results['steps']} steps, F1B0, eager pieces; "
             "graphs: Dynamo graphs under `cachedit_fx.compile`'s capture settings (without them, in brackets, "
             "where they differ). Published config: the chain of the class at its published configuration (the "
             "`__init__` defaults, or the model named in brackets) at full depth and width, analysed on fake tensors "
             f"without weights ({analysed}): {full} of {len(counted)} classes hold a chain there. Plain "
             "torch.compile: whether `torch.compile(model, backend=\"cachedit\")`, which traces without those "
             f"capture settings, caches every step after the warmup too ({needs} classes need them).", "",
             "| class | status | graphs | chain (side lists) | published config: chain | threshold 0 vs eager | "
             "caches under plain torch.compile | note |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        state = status(row)
        if state == "not a target":
            lines.append(f"| {row['class']} | not a target | - | - | - | - | - | {row['skipped']} |")
            continue
        graphs = str(row.get("graphs", "-"))
        if row.get("graphs_default_settings") not in (None, row.get("graphs")):
            graphs += f" ({row['graphs_default_settings']})"
        chain = "; ".join(row.get("chains") or []) or "-"
        err = row.get("threshold0_max_rel_err")
        full_chain = published_chain_cell(row, by_class.get(row["class"]) if published else None)
        lines.append(f"| {row['class']} | {state} | {graphs} | {chain} | {full_chain.replace('|', '/')} | "
                     f"{'-' if err is None else f'{err:.1e}'} | {plain_compile_cell(row)} | "
                     f"{note(row).replace('|', '/')[:400]} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default=None, help="comma-separated class names (default: all)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--readme", action="store_true", help="rewrite the generated coverage section in README.md")
    part = parser.add_mutually_exclusive_group()
    part.add_argument("--tiny", action="store_true", help="only the tiny models; published-config rows as stored")
    part.add_argument("--real", action="store_true", help="only the published-config analysis "
                      "(benchmarks/coverage/real_architectures.py); tiny rows as stored")
    args = parser.parse_args(argv)
    from cachedit_fx.example_inputs import SPECS

    out = Path(args.out)
    every = diffusers_transformer_classes()
    wanted = args.classes.split(",") if args.classes else list(every)
    unknown = sorted(set(wanted) - set(every))
    if unknown:
        parser.error(f"not transformer classes of diffusers: {unknown}")
    measured = [name for name in wanted if name in SPECS]
    if args.real:
        stored = out / "results.json"
        if not stored.exists():
            parser.error(f"--real reuses the tiny rows of {stored}, which does not exist: run without --real")
        results = json.loads(stored.read_text())
    else:
        results = tiny_results(wanted, measured, every, args.jobs)
    if args.tiny:
        published = real_architectures.load(out)
    else:
        published = real_architectures.run_and_write(measured if args.classes else None, args.jobs, out)
    report.publish(results, markdown(results, published), out, "python -m benchmarks.coverage --readme",
                   (README_START, README_END), args.readme, DOCUMENT)
    return results


def tiny_results(wanted: list[str], measured: list[str], every: dict[str, str], jobs: int) -> dict[str, Any]:
    """The tiny-model rows of ``wanted`` (``measured``: those with a ``ClassSpec``, each run)."""
    from cachedit_fx.example_inputs import NOT_COVERED, SPECS

    by_class = {row["class"]: row for row in run_matrix(measured, jobs)}
    rows = []
    for name in wanted:
        if name in NOT_COVERED:
            rows.append({"class": name, "skipped": NOT_COVERED[name], "caches": False})
        elif name not in SPECS:
            rows.append({"class": name, "caches": False, "error": "no ClassSpec yet"})
        else:
            rows.append({**by_class[name], "module": every[name]})
    return {"date": datetime.date.today().isoformat(), "versions": report.versions(), "steps": STEPS,
            "rows": rows}


if __name__ == "__main__":
    main()
