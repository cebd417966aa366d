"""``python -m benchmarks.gpu_check``: the checks that need a GPU, in one run of under 8 minutes.

    python -m benchmarks.gpu_check --out $OUT            # on the GPU machine (H100 / H200)
    python -m benchmarks.gpu_check --dry-run --out DIR    # every section at tiny size on CPU (CI)

Sections, each timed and recorded (``ok`` or the error) in ``gpu_check.json``; one failing
section does not stop the others:

  1. ``kernels``: the Triton diff and ladder kernels against fp64 references at FLUX and Wan
     activation sizes (bf16), and their bandwidth (``triton.testing.do_bench``) against the
     device's HBM peak;
  2. ``mid_flux``: a FLUX of width 3072 (24 heads of 128), 2 double + 4 single blocks, 4096
     image + 512 text tokens, bf16, 8 steps: threshold 0 against plain Inductor (error and
     step time), a caching run's decisions against the eager reference DBCache
     (``tests/reference_dbcache.py``), and host syncs per step under
     ``torch.cuda.set_sync_debug_mode``, with the program in parts
     (``in_graph_decision=False``) and as one program (the default);
  3. ``cuda_graph_branch``: the same model under ``mode="reduce-overhead"`` (the step
     recorded as one CUDA graph, the branch a conditional node): host syncs over a replayed generation, its cached steps and outputs
     against the one program without CUDA graphs, threshold-0 step time against plain
     Inductor in that mode (about 2 minutes on an H200 on its own:
     ``--sections cuda_graph_branch``);
  4. ``offload``: the mid FLUX with diffusers' group offloading (block level, with and without
     its streams) and with accelerate's sequential CPU offload, weights on the CPU, adopted by ``cachedit_fx.compile``:
     where the block weights live, peak GPU memory and step time against the model resident on
     the GPU (plain Inductor), threshold-0 error, and the weight bytes fetched by a caching
     generation against an uncached one;
  5. ``flux_dev``: the FLUX.1-dev transformer (random bf16 weights, 1024px) with the SCM-fast
     mask for 28 steps against plain Inductor (skipped when the time left is short).

The device machine has an older torch and no diffusers: carry wheels as the device tool's
README says (diffusers, huggingface_hub, safetensors, filelock, regex, requests and their
needs), install them with ``--no-deps`` into a target folder and put it and the repository on
``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch

SECTIONS = ("kernels", "mid_flux", "cuda_graph_branch", "offload", "flux_dev")
MID_FLUX = dict(patch_size=1, in_channels=64, num_layers=2, num_single_layers=4, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=[16, 56, 56])
TINY_FLUX = dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=4, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
                 axes_dims_rope=[4, 4, 8])


class Check:
    """Sizes, device and time budget of one run."""

    def __init__(self, dry_run: bool, budget_s: float) -> None:
        self.dry_run = dry_run
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.dtype = torch.float32 if dry_run else torch.bfloat16
        self.inner = "eager" if dry_run else "inductor"
        self.started = time.perf_counter()
        self.budget_s = budget_s

    def left_s(self) -> float:
        return self.budget_s - (time.perf_counter() - self.started)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def flux(self, full: bool = False) -> tuple[torch.nn.Module, dict[str, Any]]:
        """The mid-size FLUX (or FLUX.1-dev with ``full``; tiny in a dry run) and its inputs."""
        from benchmarks.models import MODELS, BenchModel, _flux_inputs

        if self.dry_run:
            bench = BenchModel("tiny flux", "FluxTransformer2DModel", TINY_FLUX,
                               ("transformer_blocks", "single_transformer_blocks"), _flux_inputs(16, 8, 4, 32, 32, True))
        elif full:
            bench = MODELS["full"]["flux"]
        else:
            bench = BenchModel("mid flux", "FluxTransformer2DModel", MID_FLUX,
                               ("transformer_blocks", "single_transformer_blocks"),
                               _flux_inputs(4096, 512, 64, 4096, 768, True))
        model = bench.build(self.device, self.dtype)
        return model, bench.make_inputs(torch.Generator().manual_seed(1), self.device, self.dtype)


def steps_of(inputs: dict[str, Any], count: int) -> list[dict[str, Any]]:
    """A falling timestep and a latent moving toward fixed noise, like a sampler."""
    start = inputs["hidden_states"]
    target = torch.randn(start.shape, generator=torch.Generator().manual_seed(2)).to(start.device, start.dtype)
    return [dict(inputs, hidden_states=(1 - k / (count + 1)) * start + k / (count + 1) * target,
                 timestep=torch.full((1,), 1.0 - k / count, device=start.device)) for k in range(count)]


def timed_generation(model: Callable[..., Any], steps: list[dict[str, Any]], check: Check
                     ) -> tuple[list[torch.Tensor], float]:
    outputs = []
    with torch.no_grad():
        check.sync()
        start = time.perf_counter()
        for step in steps:
            outputs.append(model(**step, return_dict=False)[0])
        check.sync()
    return [o.float().cpu() for o in outputs], (time.perf_counter() - start) / len(steps)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()


def check_kernels(check: Check) -> dict[str, Any]:
    from benchmarks.kernels import SIZES, run_benchmark
    from cachedit_fx.kernels import l1_rel_diff_op, taylor_forecast_op, taylor_push_op

    errors = {}
    sizes = ["tiny"] if check.dry_run else ["flux-1024px", "wan-480p-81f"]
    for size in sizes:
        shape = SIZES[size]
        g = torch.Generator().manual_seed(0)
        prev, cur, base = (torch.randn(shape, generator=g).to(check.device, check.dtype) for _ in range(3))
        sums = l1_rel_diff_op(prev, cur, base).double().cpu()
        exact = torch.stack([(prev.double() - (cur.double() - base.double())).abs().sum(),
                             prev.double().abs().sum()]).cpu()
        ladder = torch.zeros((3, *shape), device=check.device, dtype=check.dtype)
        for value, gap, levels in ((cur, 1.0, 1), (prev, 2.0, 2)):
            ladder = taylor_push_op(ladder, value, base, torch.tensor([gap], device=check.device),
                                    torch.tensor([levels], device=check.device))
        out = taylor_forecast_op(ladder, base, torch.tensor([1.0, 1.5, 0.0], device=check.device))
        first, second = (cur.double() - base.double()), (prev.double() - base.double())
        forecast = base.double() + second + (second - first) / 2.0 * 1.5
        errors[size] = {"l1_sums_rel_err": ((sums - exact).abs() / exact.abs()).max().item(),
                        "forecast_max_abs_err": (out.double() - forecast).abs().max().item()}
    rows = run_benchmark(sizes, check.dtype, check.device, ["cachedit", "inductor"] if not check.dry_run
                         else ["cachedit", "torch"], token_divisor=1, warmup=3, repeats=20)
    return {"accuracy": errors, "bandwidth": [vars(r) for r in rows]}


def check_mid_flux(check: Check) -> dict[str, Any]:
    import cachedit_fx

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from reference_dbcache import ReferenceDBCache

    count = 4 if check.dry_run else 8
    model, inputs = check.flux()
    steps = steps_of(inputs, count)
    plain = torch.compile(model, backend=check.inner)
    timed_generation(plain, steps, check)  # compiles
    plain_out, plain_s = timed_generation(plain, steps, check)
    torch._dynamo.reset()
    options = dict(inner_backend=check.inner, Fn_compute_blocks=1, max_warmup_steps=1, num_inference_steps=count,
                   in_graph_decision=False)
    zero = cachedit_fx.compile(model, **options, residual_diff_threshold=0.0)
    timed_generation(zero, steps, check)
    zero_out, zero_s = timed_generation(zero, steps, check)
    cachedit_fx.disable(model)
    torch._dynamo.reset()

    reference = ReferenceDBCache(model, ["transformer_blocks", "single_transformer_blocks"], 1, 0,
                                 threshold=math.inf, warmup=1)
    timed_generation(reference.model, steps, check)
    reference.close()
    diffs = sorted(reference.diffs.values())
    threshold = (diffs[len(diffs) // 2 - 1] + diffs[len(diffs) // 2]) / 2
    reference = ReferenceDBCache(model, ["transformer_blocks", "single_transformer_blocks"], 1, 0,
                                 threshold=threshold, warmup=1)
    want, _ = timed_generation(reference.model, steps, check)
    reference.close()
    caching = cachedit_fx.compile(model, **options, residual_diff_threshold=threshold)
    got, _ = timed_generation(caching, steps, check)
    syncs = count_host_syncs(caching, steps[:1], check)
    summary = cachedit_fx.summary(caching)
    cachedit_fx.disable(model)
    torch._dynamo.reset()
    in_graph = dict(options, in_graph_decision=True, enable_separate_cfg=False)
    one_zero = cachedit_fx.compile(model, **in_graph, residual_diff_threshold=0.0)
    timed_generation(one_zero, steps, check)
    one_zero_out, one_zero_s = timed_generation(one_zero, steps, check)
    cachedit_fx.refresh(one_zero, residual_diff_threshold=threshold)
    one_got, _ = timed_generation(one_zero, steps, check)
    one_syncs = count_host_syncs(one_zero, steps[:1], check)
    return {"threshold0_max_rel_err": max(rel_err(a, b) for a, b in zip(zero_out, plain_out)),
            "threshold0_step_s": zero_s, "inductor_step_s": plain_s, "overhead": zero_s / plain_s - 1,
            "threshold": threshold, "reference_cached_steps": reference.cached_steps,
            "cached_steps": summary.cached_steps,
            "max_rel_err_vs_reference": max(rel_err(a, b) for a, b in zip(got, want)),
            "host_syncs_per_step": syncs,
            "in_graph_threshold0_max_rel_err": max(rel_err(a, b) for a, b in zip(one_zero_out, plain_out)),
            "in_graph_threshold0_step_s": one_zero_s, "in_graph_overhead": one_zero_s / plain_s - 1,
            "in_graph_cached_steps": cachedit_fx.summary(one_zero).cached_steps,
            "in_graph_max_rel_err_vs_reference": max(rel_err(a, b) for a, b in zip(one_got, want)),
            "in_graph_host_syncs_per_step": one_syncs}


def count_host_syncs(model: Callable[..., Any], steps: list[dict[str, Any]], check: Check) -> Optional[float]:
    """Synchronising CUDA calls per step over ``steps``, from ``torch.cuda.set_sync_debug_mode("warn")``."""
    if check.device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught, torch.no_grad():
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for step in steps:
                model(**step, return_dict=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught) / max(len(steps), 1)


def check_cuda_graph_branch(check: Check) -> dict[str, Any]:
    import cachedit_fx

    count = 4 if check.dry_run else 8
    model, inputs = check.flux()
    steps = steps_of(inputs, count)
    mode = {} if check.dry_run else {"mode": "reduce-overhead"}
    plain = torch.compile(model, backend=check.inner) if check.dry_run else torch.compile(model, **mode)
    timed_generation(plain, steps, check)
    timed_generation(plain, steps, check)
    plain_out, plain_s = timed_generation(plain, steps, check)
    torch._dynamo.reset()
    options = dict(inner_backend=check.inner, Fn_compute_blocks=1, max_warmup_steps=1, num_inference_steps=count,
                   in_graph_decision=True, enable_separate_cfg=False)
    graphs = cachedit_fx.compile(model, **options, **mode, residual_diff_threshold=0.0)
    timed_generation(graphs, steps, check)  # warm-up run, then recording
    timed_generation(graphs, steps, check)
    zero_out, zero_s = timed_generation(graphs, steps, check)
    diffs = sorted(cachedit_fx.summary(graphs).residual_diffs.values())
    threshold = diffs[len(diffs) // 2] * 1.01
    cachedit_fx.refresh(graphs, residual_diff_threshold=threshold)
    timed_generation(graphs, steps, check)
    syncs = count_host_syncs(graphs, steps, check)
    got, _ = timed_generation(graphs, steps, check)
    cached = cachedit_fx.summary(graphs).cached_steps
    cachedit_fx.disable(model)
    torch._dynamo.reset()
    one_program = cachedit_fx.compile(model, **options, residual_diff_threshold=threshold)
    want, _ = timed_generation(one_program, steps, check)
    return {"host_syncs_per_step": syncs, "cached_steps": cached,
            "one_program_cached_steps": cachedit_fx.summary(one_program).cached_steps,
            "max_rel_err_vs_one_program": max(rel_err(a, b) for a, b in zip(got, want)),
            "threshold0_max_rel_err": max(rel_err(a, b) for a, b in zip(zero_out, plain_out)),
            "threshold0_step_s": zero_s, "inductor_step_s": plain_s, "overhead": zero_s / plain_s - 1}


def _offloaded(model: torch.nn.Module, kind: str, device: torch.device) -> None:
    """``model`` (on the CPU) offloaded the way ``kind`` names, computing on ``device``."""
    if kind.startswith("group_offloading_block_level"):
        from diffusers.hooks import apply_group_offloading

        apply_group_offloading(model, onload_device=device, offload_device=torch.device("cpu"),
                               offload_type="block_level", num_blocks_per_group=1, use_stream=kind.endswith("streams"))
    else:
        import accelerate

        accelerate.cpu_offload(model, execution_device=device)


def check_offload(check: Check) -> dict[str, Any]:
    import cachedit_fx

    count = 4 if check.dry_run else 8
    model, inputs = check.flux()
    steps = steps_of(inputs, count)
    plain = torch.compile(model, backend=check.inner)
    timed_generation(plain, steps, check)
    if check.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    plain_out, plain_s = timed_generation(plain, steps, check)
    resident_peak = torch.cuda.max_memory_allocated() if check.device.type == "cuda" else None
    del plain
    torch._dynamo.reset()
    model.to("cpu")
    results: dict[str, Any] = {"resident_peak_bytes": resident_peak, "resident_inductor_step_s": plain_s}
    kinds = (["sequential_cpu_offload"] if check.dry_run  # group offloading runs in tests/test_stacks.py
             else ["group_offloading_block_level", "group_offloading_block_level_streams", "sequential_cpu_offload"])
    for kind in kinds:
        offloaded, _ = check.flux()
        offloaded.load_state_dict(model.state_dict())
        offloaded.to("cpu")
        _offloaded(offloaded, kind, check.device)
        compiled = cachedit_fx.compile(offloaded, inner_backend=check.inner, Fn_compute_blocks=1,
                                       max_warmup_steps=1, num_inference_steps=count, residual_diff_threshold=0.0)
        timed_generation(compiled, steps, check)
        if check.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        cachedit_fx.fetched_bytes(reset=True)
        zero_out, zero_s = timed_generation(compiled, steps, check)
        uncached_bytes = cachedit_fx.fetched_bytes(reset=True)
        peak = torch.cuda.max_memory_allocated() if check.device.type == "cuda" else None
        cachedit_fx.refresh(compiled, residual_diff_threshold=1e9)
        _, cached_s = timed_generation(compiled, steps, check)
        block = offloaded.transformer_blocks[0].attn.to_q.weight
        results[kind] = {
            "block_weight_stored_on": str(getattr(block, "stored", block).device),
            "peak_bytes": peak, "threshold0_step_s": zero_s, "threshold0_vs_resident": zero_s / plain_s,
            "threshold0_max_rel_err": max(rel_err(a, b) for a, b in zip(zero_out, plain_out)),
            "caching_step_s": cached_s, "cached_steps": cachedit_fx.summary(compiled).cached_steps,
            "fetched_bytes_uncached": uncached_bytes, "fetched_bytes_caching": cachedit_fx.fetched_bytes(reset=True)}
        cachedit_fx.disable(compiled)
        del compiled, offloaded
        torch._dynamo.reset()
    return results


def check_flux_dev(check: Check) -> dict[str, Any]:
    import cachedit_fx

    if not check.dry_run and check.left_s() < 240:
        return {"skipped": f"{check.left_s():.0f} s left of the budget"}
    count = 4 if check.dry_run else 28
    model, inputs = check.flux(full=True)
    steps = steps_of(inputs, count)
    plain = torch.compile(model, backend=check.inner)
    timed_generation(plain, steps[:2], check)
    reference, plain_s = timed_generation(plain, steps, check)
    torch._dynamo.reset()
    mask = cachedit_fx.steps_mask(mask_policy="fast", total_steps=count)
    compiled = cachedit_fx.compile(model, inner_backend=check.inner, Fn_compute_blocks=1, max_warmup_steps=4,
                                   num_inference_steps=count, steps_computation_mask=mask,
                                   steps_computation_policy="static")
    timed_generation(compiled, steps[:2], check)
    cachedit_fx.refresh(compiled)
    got, cached_s = timed_generation(compiled, steps, check)
    return {"steps": count, "inductor_s_per_step": plain_s, "scm_fast_s_per_step": cached_s,
            "speedup": plain_s / cached_s, "cached_steps": cachedit_fx.summary(compiled).cached_steps,
            "max_rel_err": max(rel_err(a, b) for a, b in zip(got, reference))}


CHECKS: dict[str, Callable[[Check], dict[str, Any]]] = {
    "kernels": check_kernels, "mid_flux": check_mid_flux,
    "cuda_graph_branch": check_cuda_graph_branch, "offload": check_offload, "flux_dev": check_flux_dev,
}


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU (what CI runs)")
    parser.add_argument("--out", default="benchmarks/results/gpu_check")
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--budget-s", type=float, default=450.0, help="skip flux_dev when less is left")
    args = parser.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        parser.error("no CUDA GPU: run with --dry-run on CPU")
    check = Check(args.dry_run, args.budget_s)
    results: dict[str, Any] = {"device": torch.cuda.get_device_name() if not args.dry_run else "CPU (dry run)",
                               "torch": torch.__version__, "sections": {}}
    for name in args.sections.split(","):
        start = time.perf_counter()
        try:
            entry = {"status": "ok", **CHECKS[name](check)}
        except Exception as error:  # every section reports; one failure does not stop the run
            entry = {"status": "error", "error": f"{type(error).__name__}: {error}"[:2000],
                     "traceback": traceback.format_exc()[-3000:]}
        entry["seconds"] = round(time.perf_counter() - start, 1)
        results["sections"][name] = entry
        print(f"{name}: {entry['status']} ({entry['seconds']} s)", flush=True)
        torch._dynamo.reset()
        if check.device.type == "cuda":
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
