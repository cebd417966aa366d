"""Run a cached FLUX transformer over several processes: ``torchrun --nproc_per_node N
examples/parallel_flux.py --tp-size N`` (or ``--ulysses-size N``).

Uses the built-in tiny FLUX (random weights, no downloads) unless ``--full`` asks for the
FLUX.1-dev architecture (random bf16 weights, one GPU per rank). NCCL on CUDA, gloo on CPU.
Rank 0 prints the output's agreement with a single-process compile, the cached steps and the
sharding report.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist

import cachedit_fx
from cachedit_fx.tiny_models import tiny_flux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tp-size", type=int, default=1)
    parser.add_argument("--ulysses-size", type=int, default=1)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--threshold", type=float, default=0.33)
    parser.add_argument("--full", action="store_true", help="FLUX.1-dev architecture on GPUs")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if args.full:
        from benchmarks.models import MODELS

        bench = MODELS["full"]["flux"]
        build = lambda: bench.build(device, torch.bfloat16)  # noqa: E731
        inputs = bench.make_inputs(torch.Generator().manual_seed(0), device, torch.bfloat16)
    else:
        build = lambda: tiny_flux()[0].to(device)  # noqa: E731
        inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in tiny_flux()[1].items()}
    options = {"Fn_compute_blocks": 1, "residual_diff_threshold": args.threshold, "max_warmup_steps": 1,
               "num_inference_steps": args.steps, "inner_backend": "inductor" if cuda else "aot_eager"}
    parallel = torch.compile(build(), backend="cachedit", options={
        **options, "parallelism_config": cachedit_fx.ParallelismConfig(tp_size=args.tp_size, ulysses_size=args.ulysses_size)})
    single = torch.compile(build(), backend="cachedit", options=options)
    worst = 0.0
    with torch.no_grad():
        for step in range(args.steps):
            t = torch.full((1,), 1.0 - step / args.steps, device=device)
            latent = inputs["hidden_states"] * (1 - step / (2 * args.steps))
            step_inputs = {**inputs, "hidden_states": latent, "timestep": t}
            got = parallel(**step_inputs, return_dict=False)[0]
            want = single(**step_inputs, return_dict=False)[0]
            worst = max(worst, ((got - want).abs().max() / want.abs().max()).item())
    if rank == 0:
        report = cachedit_fx.sharding_report(parallel)
        print(f"world {dist.get_world_size()}: max rel. error vs single process {worst:.2e}")
        print(f"cached steps {cachedit_fx.summary(parallel).cached_steps} (single process: "
              f"{cachedit_fx.summary(single).cached_steps})")
        print(f"{report.kind}: {len(report.columns)} column / {len(report.rows)} row-parallel linears, "
              f"collectives {report.collectives}, weights per rank {report.weight_bytes_local / 2**20:.2f} of "
              f"{report.weight_bytes_full / 2**20:.2f} MB")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
