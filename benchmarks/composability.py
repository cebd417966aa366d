"""``python -m benchmarks.composability [--readme] [--stacks a,b] [--inner-backend inductor]``: the
composability matrix: what diffusers users stack on a transformer, each with cachedit.

For every stack (``STACKS``) on tiny FLUX, built fresh: the eager model with the stack is the
reference. ``cachedit_fx.compile`` (F1B0) runs it at threshold 0 (must equal the reference
within ``REL_TOLERANCE`` of its compute dtype: "equals the reference"; in bf16 a whole-graph
Inductor program rounds less often than eager, so plain ``torch.compile`` of tiny FLUX in bf16
without any hook differs from eager by 2.8e-2), then, refreshed to a huge
threshold, again ("caches": every step after the warmup reuses the cache); Dynamo's graph count
over both generations gives "recompiles" (graphs beyond the first). With timing, the
threshold-0 program is timed against plain ``torch.compile`` of the same stacked model (median
of generations after a warm-up; one after the other with Dynamo reset between them, not
interleaved: two models of one class share code objects, and a hooked model's guards would
make Dynamo recompile the other's frames): the overhead of caching with that stack. Results go to
``benchmarks/results/composability/``; ``--readme`` rewrites README's matrix.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from benchmarks import report
from benchmarks.kernels import median_time_s

STEPS = 5
REL_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 4 * torch.finfo(torch.bfloat16).eps}
HUGE_THRESHOLD = 1e9
README_START = "<!-- composability:start -->"
README_END = "<!-- composability:end -->"
CPU = torch.device("cpu")
DOCUMENT = report.README
"""The document holding the ``composability`` section that ``--readme`` rewrites."""
OFFLOADING = ("offload",)
"""Stacks whose name holds one of these move weights: their rows report the bytes fetched."""


def _lora(model: torch.nn.Module) -> None:
    import peft

    torch.manual_seed(1)
    model.add_adapter(peft.LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                      init_lora_weights=False))


def _layerwise_casting(model: torch.nn.Module) -> None:
    model.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.float32)


def _layerwise_casting_bf16(model: torch.nn.Module) -> torch.dtype:
    model.to(torch.bfloat16).enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    return torch.bfloat16


def _group_offloading(offload_type: str) -> Callable[[torch.nn.Module], None]:
    def apply(model: torch.nn.Module) -> None:
        from diffusers.hooks import apply_group_offloading

        cpu = torch.device("cpu")
        apply_group_offloading(model, onload_device=cpu, offload_device=cpu, offload_type=offload_type,
                               **({"num_blocks_per_group": 1} if offload_type == "block_level" else {}))

    return apply


def _sequential_cpu_offload(model: torch.nn.Module) -> None:
    import accelerate

    accelerate.cpu_offload(model, execution_device=torch.device("cpu"))


def _model_cpu_offload(model: torch.nn.Module) -> None:
    import accelerate

    accelerate.cpu_offload_with_hook(model, execution_device=torch.device("cpu"))


def _int8_weights(model: torch.nn.Module) -> None:
    from cachedit_fx.quantization import quantize

    quantize(model, "int8_weight_only")


def _attention_backend(name: str) -> Callable[[torch.nn.Module], None]:
    def apply(model: torch.nn.Module) -> None:
        model.set_attention_backend(name)

    return apply


STACKS: dict[str, Callable[[torch.nn.Module], Optional[torch.dtype]]] = {
    "none": lambda model: None,
    "LoRA on attention (PEFT)": _lora,
    "layerwise casting (float8 storage)": _layerwise_casting,
    "layerwise casting (float8 storage / bf16 compute)": _layerwise_casting_bf16,
    "group offloading (block level)": _group_offloading("block_level"),
    "group offloading (leaf level)": _group_offloading("leaf_level"),
    "sequential CPU offload (accelerate)": _sequential_cpu_offload,
    "model CPU offload (accelerate)": _model_cpu_offload,
    "torchao int8 weight-only": _int8_weights,
    "attention backend _native_math": _attention_backend("_native_math"),
    "attention backend flex": _attention_backend("flex"),
}


def _stacked(stack: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    from cachedit_fx.tiny_models import TINY_MODELS

    model, inputs = TINY_MODELS["flux"]()
    dtype = STACKS[stack](model)
    if dtype is not None:
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in inputs.items()}
    return model, inputs


def _steps(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    steps = []
    for k in range(STEPS):
        latent = inputs["hidden_states"] + 0.05 * k * torch.randn(inputs["hidden_states"].shape, generator=generator)
        steps.append(dict(inputs, hidden_states=latent.to(inputs["hidden_states"].dtype),
                          timestep=inputs["timestep"] * (1 - k / (2 * STEPS))))
    return steps


def _run(model: Callable[..., Any], steps: list[dict[str, Any]]) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model(**step, return_dict=False)[0] for step in steps]


def measure(stack: str, inner_backend: str = "eager", timing: bool = False, repeats: int = 5) -> dict[str, Any]:
    """One row of the matrix (module docstring)."""
    import cachedit_fx
    from torch._dynamo.utils import counters

    reference_model, inputs = _stacked(stack)
    steps = _steps(inputs)
    want = _run(reference_model, steps)
    model, _ = _stacked(stack)
    torch._dynamo.reset()
    counters.clear()
    compiled = cachedit_fx.compile(model, inner_backend=inner_backend, Fn_compute_blocks=1,
                                   residual_diff_threshold=0.0, max_warmup_steps=1)
    cachedit_fx.fetched_bytes(reset=True)
    got = _run(compiled, steps)
    uncached_bytes = cachedit_fx.fetched_bytes(reset=True)
    error = max(((g - w).float().abs().max() / w.float().abs().max().clamp_min(1e-12)).item()
                for g, w in zip(got, want))
    cachedit_fx.refresh(compiled, residual_diff_threshold=HUGE_THRESHOLD)
    _run(compiled, steps)
    cached_bytes = cachedit_fx.fetched_bytes(reset=True)
    cached = cachedit_fx.summary(compiled).cached_steps
    row = {"stack": stack, "equals_reference": error <= REL_TOLERANCE[want[0].dtype], "max_rel_error": error,
           "caches": cached == list(range(1, STEPS)), "cached_steps": cached,
           "recompiles": counters["stats"]["unique_graphs"] - 1}
    if any(word in stack for word in OFFLOADING):
        row["fetched_bytes"] = {"uncached": uncached_bytes, "cached": cached_bytes}
    if timing:
        cachedit_fx.refresh(compiled, residual_diff_threshold=0.0)
        cachedit_s = median_time_s(lambda: _run(compiled, steps), CPU, 1, repeats)
        cachedit_fx.disable(compiled)
        torch._dynamo.reset()  # the plain model shares the class's code objects: no guard churn between them
        plain_model, _ = _stacked(stack)
        plain = torch.compile(plain_model, backend=inner_backend)
        row["overhead"] = cachedit_s / median_time_s(lambda: _run(plain, steps), CPU, 1, repeats) - 1
        torch._dynamo.reset()
        return row
    cachedit_fx.disable(compiled)
    return row


def markdown(results: dict[str, Any]) -> str:
    lines = ["| stack | caches | equals the eager model | threshold-0 overhead vs plain `torch.compile` | recompiles "
             "| weight bytes fetched, cached / uncached |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in results["rows"]:
        overhead = f"{100 * row['overhead']:+.1f}%" if "overhead" in row else "-"
        fetched = row.get("fetched_bytes")
        moved = f"{fetched['cached'] / fetched['uncached']:.3f}" if fetched and fetched["uncached"] else "-"
        lines.append(f"| {row['stack']} | {'yes' if row['caches'] else 'no'} | "
                     f"{'yes' if row['equals_reference'] else 'no'} ({row['max_rel_error']:.1e}) | {overhead} | "
                     f"{row['recompiles']} | {moved} |")
    lines += ["", f"Tiny FLUX, {STEPS} steps, `cachedit_fx.compile` (F1B0), {results['inner_backend']} inner backend, "
              f"CPU ({results['threads']} threads), {results['date']}; overhead: median of 5 generations each, "
              "cachedit then plain `torch.compile`; error: max relative error against the eager model, "
              "within 1e-5 in fp32, 3.1e-2 (4 bf16 ulps) in bf16."]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--inner-backend", default="inductor", choices=["inductor", "aot_eager", "eager"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/results/composability")
    parser.add_argument("--readme", action="store_true", help="rewrite README's composability matrix")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    stacks = args.stacks.split(",")
    unknown = set(stacks) - set(STACKS)
    if unknown:
        raise SystemExit(f"unknown stacks {sorted(unknown)}; known: {list(STACKS)}")
    rows = [measure(stack, args.inner_backend, timing=True) for stack in stacks]
    results = {"date": datetime.date.today().isoformat(), "threads": args.threads,
               "inner_backend": args.inner_backend, "versions": report.versions(), "rows": rows}
    report.publish(results, markdown(results), Path(args.out), "python -m benchmarks.composability --readme",
                   (README_START, README_END), args.readme, DOCUMENT)
    return results


if __name__ == "__main__":
    main()
