"""Effective bandwidth of the per-step cache kernels against torch and Inductor equivalents.

    python -m benchmarks.kernels                       # GPU: FLUX and Wan activation sizes
    python -m benchmarks.kernels --quick               # CPU-sized run (tokens / 8)

For each activation size and op, three implementations run side by side on the same
tensors: ``cachedit`` (the custom op: Triton on CUDA, the torch fallback on CPU), ``torch``
(the eager reference) and ``inductor`` (``torch.compile`` of the reference). Effective
bandwidth = bytes the op must move (each input read once, each output written once) / median
time. On a GPU the fraction of the device's HBM peak is reported too. Results: a markdown
table on stdout and JSON in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from cachedit_fx.kernels import (
    l1_rel_diff_op,
    l1_rel_diff_reference,
    taylor_forecast_op,
    taylor_forecast_reference,
    taylor_push_op,
    taylor_push_reference,
)
from cachedit_fx.kernels.triton_support import runs_triton

SIZES = {
    "flux-1024px": (1, 4608, 3072),
    "wan-480p-81f": (1, 32760, 5120),
    "tiny": (1, 256, 64),
}
HBM_PEAK_BYTES_PER_S = {"H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class Row:
    size: str
    shape: list[int]
    op: str
    impl: str
    median_us: float
    gbps: float
    peak_fraction: Optional[float]


@dataclass
class OpCase:
    """One op on one size: ``run(impl)`` returns a zero-argument callable doing the op once."""

    name: str
    bytes_moved: int
    run: Callable[[str], Callable[[], object]]


def op_cases(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> list[OpCase]:
    g = torch.Generator(device=device).manual_seed(0)
    make = lambda: torch.randn(shape, generator=g, device=device, dtype=torch.float32).to(dtype)  # noqa: E731
    prev, cur, base = make(), make(), make()
    es, n = prev.element_size(), prev.numel()
    cases = [
        OpCase("l1_rel_diff", 2 * n * es, lambda impl: _diff(impl, prev, cur, None)),
        OpCase("l1_rel_diff(cur-base)", 3 * n * es, lambda impl: _diff(impl, prev, cur, base)),
    ]
    for order in (1, 2):
        ladder = torch.stack([make() for _ in range(order + 1)])
        levels = order + 1
        gap, pushed = torch.full((1,), 2.0, device=device), torch.full((1,), levels, device=device)
        weights = torch.tensor([1.5**k / math.factorial(k) for k in range(levels)], device=device)
        # push: reads value, base and every level; writes a new ladder.
        cases.append(OpCase(f"taylor_push(order={order})", (2 + 2 * levels) * n * es,
                            lambda impl, ladder=ladder: _run(impl, taylor_push_op, taylor_push_reference,
                                                             ladder, cur, base, gap, pushed)))
        # forecast: reads the levels and base; writes one tensor.
        cases.append(OpCase(f"taylor_forecast(order={order})", (levels + 2) * n * es,
                            lambda impl, ladder=ladder, weights=weights: _run(
                                impl, taylor_forecast_op, taylor_forecast_reference, ladder, base, weights)))
    return cases


def _diff(impl, prev, cur, base):
    return _run(impl, l1_rel_diff_op, l1_rel_diff_reference, prev, cur, base)


def _run(impl, op, reference, *args):
    """A call of the custom op ("cachedit") or of its torch reference, eager or compiled."""
    fn = op if impl == "cachedit" else _maybe_compiled(impl, reference)
    return lambda: fn(*args)


def _maybe_compiled(impl: str, fn: Callable) -> Callable:
    return torch.compile(fn, fullgraph=True, dynamic=False) if impl == "inductor" else fn


def median_time_s(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        from triton.testing import do_bench

        # many calls per measurement with the L2 cache flushed between them: the kernel's time,
        # not one launch's latency
        return do_bench(fn, warmup=25, rep=max(100, repeats), return_mode="median") / 1e3
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def device_peak(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in HBM_PEAK_BYTES_PER_S.items() if key in name), None)


def run_benchmark(sizes: list[str], dtype: torch.dtype, device: torch.device, impls: list[str],
                  token_divisor: int, warmup: int, repeats: int) -> list[Row]:
    peak = device_peak(device)
    rows = []
    for size in sizes:
        b, tokens, dim = SIZES[size]
        shape = (b, max(1, tokens // token_divisor), dim)
        for case in op_cases(shape, dtype, device):
            for impl in impls:
                seconds = median_time_s(case.run(impl), device, warmup, repeats)
                gbps = case.bytes_moved / seconds / 1e9
                rows.append(Row(size, list(shape), case.name, impl, seconds * 1e6, gbps,
                                None if peak is None else gbps * 1e9 / peak))
                print(f"  {size} {case.name} {impl}: {seconds * 1e6:.1f} us, {gbps:.1f} GB/s", flush=True)
            torch._dynamo.reset()
    return rows


def cachedit_impl(device: torch.device) -> str:
    if not runs_triton(torch.empty(0, device=device)):
        return "torch fallback"
    return "triton" if device.type == "cuda" else "triton interpreter (not a performance path)"


def markdown(rows: list[Row]) -> str:
    lines = ["| size | shape | op | impl | median us | GB/s | of HBM peak |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        frac = "-" if r.peak_fraction is None else f"{100 * r.peak_fraction:.0f}%"
        lines.append(f"| {r.size} | {'x'.join(map(str, r.shape))} | {r.op} | {r.impl} | {r.median_us:.1f} | "
                     f"{r.gbps:.1f} | {frac} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="flux-1024px,wan-480p-81f", help=f"comma list of {sorted(SIZES)}")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--impls", default="cachedit,torch,inductor")
    parser.add_argument("--quick", action="store_true", help="divide token counts by 8 and repeat less (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="benchmarks/results", help="folder for kernels_<device>.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = run_benchmark(
        sizes=args.sizes.split(","), dtype=DTYPES[args.dtype], device=device, impls=args.impls.split(","),
        token_divisor=8 if args.quick else 1, warmup=3 if args.quick else 10, repeats=5 if args.quick else 50,
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU {platform.processor() or platform.machine()}"
    result = {
        "device": name,
        "date": time.strftime("%Y-%m-%d"),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "hbm_peak_bytes_per_s": device_peak(device),
        "cachedit_impl": cachedit_impl(device),
        "rows": [asdict(r) for r in rows],
    }
    print(f"device: {name}; cachedit impl: {result['cachedit_impl']}")
    print(markdown(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"kernels_{device.type}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    main()
