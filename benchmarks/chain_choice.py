"""One cached chain over all block lists, or one per list? Measured on the trained digits DiT.

    python -m benchmarks.chain_choice [--readme]

The two readings of DBCache on a model with several block lists (FLUX: double- then
single-stream blocks):

  * ``one chain`` (this backend): the lists form one chain; one decision per step, taken on the
    first Fn blocks, skips every block from Fn to N-Bn;
  * ``per list`` (cache-dit's contexts per block list, used for models whose lists take
    different inputs): each list is its own DBCache with its own Fn / Bn, decision, residuals
    and counters.

Both run eagerly here (``GroupedDBCache``, hooks on the blocks) over the same seeded noise and
the same Euler loop, at the same thresholds; per setting: the share of block FLOPs skipped and
PSNR against the uncached samples. Results go to ``benchmarks/results/chain_choice/``.
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import report
from benchmarks.models import generate
from benchmarks.quality.measures import batch_psnr
from benchmarks.quality.model import digits_bench_model, unpatchify
from benchmarks.quality.data import to_unit_range

STEPS = 28
WARMUP = 4
THRESHOLDS = (0.04, 0.08, 0.12, 0.2, 0.3)
LISTS = ("transformer_blocks", "single_transformer_blocks")
README_START = "<!-- chain-choice:start -->"
README_END = "<!-- chain-choice:end -->"
DOCUMENT = report.DOCS / "architecture.md"
"""The document holding the ``chain-choice`` section that ``--readme`` rewrites."""


class _Chain:
    """DBCache state of one chain (one or several block lists without glue between them)."""

    def __init__(self, blocks: list[torch.nn.Module], Fn: int, Bn: int, threshold: float) -> None:
        self.blocks, self.Fn, self.end, self.threshold = blocks, Fn, len(blocks) - Bn, threshold
        self.prev: Optional[torch.Tensor] = None
        self.residuals: Optional[list[torch.Tensor]] = None
        self.cache = False
        self.skipped = 0.0

    def decide(self, step: int, residual: torch.Tensor) -> None:
        diff = None
        if self.prev is not None:
            diff = ((self.prev - residual).abs().mean() / self.prev.abs().mean()).item()
        self.cache = step >= WARMUP and diff is not None and diff < self.threshold and self.residuals is not None
        if not self.cache:
            self.prev = residual.clone()


class GroupedDBCache:
    """DBCache with the model's blocks grouped into chains; every model call is one step."""

    def __init__(self, model: torch.nn.Module, groups: list[list[str]], Fn: int, Bn: int, threshold: float,
                 block_flops: dict[int, float]) -> None:
        self.model, self.step, self.block_flops = model, 0, block_flops
        self.chains = [_Chain([b for name in group for b in getattr(model, name)], Fn, Bn, threshold)
                       for group in groups]
        for chain in self.chains:
            for index, block in enumerate(chain.blocks):
                self._wrap(chain, index, block)
        model.register_forward_hook(lambda *_: self._end_step())

    def _end_step(self) -> None:
        self.step += 1

    def _wrap(self, chain: _Chain, index: int, block: torch.nn.Module) -> None:
        original = type(block).forward.__get__(block)

        def forward(hidden_states, encoder_hidden_states, *args, **kwargs):
            streams = [encoder_hidden_states, hidden_states]
            if index == 0:
                chain.entry = hidden_states
            if index == chain.Fn:
                chain.decide(self.step, hidden_states - chain.entry)
                chain.cut = streams
            if chain.Fn <= index < chain.end and chain.cache:
                chain.skipped += self.block_flops[id(block)]
                if index == chain.end - 1:
                    return tuple(s + r for s, r in zip(chain.cut, chain.residuals))
                return tuple(streams)
            out = original(hidden_states, encoder_hidden_states, *args, **kwargs)
            if index == chain.end - 1:
                chain.residuals = [o - c for o, c in zip(out, chain.cut)]
            return out

        block.forward = forward


def block_flops_of(model: torch.nn.Module, inputs: dict[str, Any]) -> dict[int, float]:
    """FLOPs of one call of every chain block (keyed by ``id(block)``), counted in one forward."""
    flops: dict[int, float] = {}
    handles = []
    for name in LISTS:
        for block in getattr(model, name):
            counter = FlopCounterMode(display=False)

            def enter(module, args, counter=counter):
                counter.__enter__()

            def leave(module, args, output, counter=counter):
                counter.__exit__(None, None, None)
                flops[id(module)] = float(counter.get_total_flops())

            handles += [block.register_forward_pre_hook(enter), block.register_forward_hook(leave)]
    with torch.no_grad():
        model(**inputs, timestep=torch.ones(1), return_dict=False)
    for handle in handles:
        handle.remove()
    return flops


def sample(model: torch.nn.Module, bench: Any, inputs: dict[str, Any]) -> torch.Tensor:
    with torch.no_grad():
        images = generate(lambda **kw: model(**kw, return_dict=False)[0], bench, inputs, STEPS)
    return to_unit_range(unpatchify(images))


def measure(per_class: int) -> dict[str, Any]:
    bench = digits_bench_model(per_class)
    inputs = bench.make_inputs(torch.Generator(), torch.device("cpu"), torch.float32)
    plain_model = bench.build(torch.device("cpu"), torch.float32)
    block_flops = block_flops_of(plain_model, inputs)
    total = STEPS * sum(block_flops.values())
    reference = sample(plain_model, bench, inputs)
    rows = []
    for threshold in THRESHOLDS:
        for scheme, groups in (("one chain", [list(LISTS)]), ("per list", [[name] for name in LISTS])):
            model = bench.build(torch.device("cpu"), torch.float32)
            cache = GroupedDBCache(model, groups, 1, 0, threshold, block_flops_of(model, inputs))
            images = sample(model, bench, inputs)
            rows.append({"scheme": scheme, "threshold": threshold,
                         "skipped_block_flops": sum(c.skipped for c in cache.chains) / total,
                         "psnr_db": batch_psnr(images, reference)})
    return {"date": datetime.date.today().isoformat(), "per_class": per_class, "steps": STEPS, "warmup": WARMUP,
            "model": bench.name, "versions": report.versions(), "rows": rows}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"{results['model']}, {results['steps']} Euler steps, F1B0, {results['warmup']} warmup steps, "
             f"eager, {results['date']}: share of block FLOPs skipped and PSNR against the uncached samples.", "",
             "| threshold | one chain: skipped | one chain: PSNR (dB) | per list: skipped | per list: PSNR (dB) |",
             "| --- | --- | --- | --- | --- |"]
    by_key = {(r["scheme"], r["threshold"]): r for r in results["rows"]}
    for threshold in sorted({r["threshold"] for r in results["rows"]}):
        one, per = by_key[("one chain", threshold)], by_key[("per list", threshold)]
        lines.append(f"| {threshold} | {one['skipped_block_flops']:.1%} | {one['psnr_db']:.1f} | "
                     f"{per['skipped_block_flops']:.1%} | {per['psnr_db']:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--out", default="benchmarks/results/chain_choice")
    parser.add_argument("--readme", action="store_true", help="rewrite the generated chain-choice section in docs/architecture.md")
    args = parser.parse_args(argv)
    results = measure(args.per_class)
    report.publish(results, markdown(results), Path(args.out), "python -m benchmarks.chain_choice --readme",
                   (README_START, README_END), args.readme, DOCUMENT)
    return results


if __name__ == "__main__":
    main()
