"""Bytes each rank sends per denoising step under TP and Ulysses, read from the sharded
graph, against the analytic minimum of each scheme.

    python -m benchmarks.communication            # tiny and small models, FLUX.1-dev and Wan2.1-1.3B on "meta"
    python -m benchmarks.communication --readme   # also rewrite the communication section of docs/parallelism.md

Nothing runs on real data: Dynamo traces each model (the full-size ones on the ``meta``
device, so no weights are allocated) and the parallel passes rewrite the graph on a fake
process group of ``--world`` ranks. Per-rank bytes use ring algorithms: an all-reduce of N
bytes sends 2(w-1)/w N, an all-gather (w-1)/w of the full tensor, an all-to-all (w-1)/w of
its input.

Analytic minimum (from the original graph's attention shapes, not from the pass):
  * Ulysses (DeepSpeed-Ulysses): each attention moves its local q and output, and k and v
    when they carry the split sequence (self / joint attention: Lk == Lq), through one
    all-to-all each; plus one all-gather of the chain's output hidden states.
  * TP (Megatron): one all-reduce of each sub-layer output: every attention output
    [B, L, C], and one MLP output of the same size per block unless the block fuses its
    MLP with attention into one projection (FLUX single blocks).
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist
import torch.fx as fx

from benchmarks import report
from benchmarks.models import MODELS

README_START, README_END = "<!-- communication:start -->", "<!-- communication:end -->"
DOCUMENT = report.DOCS / "parallelism.md"
"""The document holding the ``communication`` section that ``--readme`` rewrites."""
FUSED_MLP_BLOCKS = {"FluxSingleTransformerBlock"}
C10D = torch.ops._c10d_functional


def _cases() -> dict[str, Any]:
    from cachedit_fx.tiny_models import TINY_MODELS

    cases: dict[str, Any] = {f"tiny {name}": TINY_MODELS[name] for name in ("flux", "wan", "qwen_image")}
    for key in ("flux", "wan"):
        cases[MODELS["quick"][key].name] = (MODELS["quick"][key], torch.device("cpu"), torch.float32)
        cases[MODELS["full"][key].name] = (MODELS["full"][key], torch.device("meta"), torch.bfloat16)
    return cases


def _build(case: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
    if callable(case):
        return case()
    bench, device, dtype = case
    inputs = bench.make_inputs(torch.Generator().manual_seed(0), device, dtype)
    inputs["timestep"] = torch.full((1,), 0.5 * bench.timestep_scale, device=device, dtype=torch.float32)
    return bench.build(device, dtype), inputs


def sharded_graphs(model: torch.nn.Module, inputs: dict[str, Any], options: dict[str, Any]) -> tuple[fx.GraphModule, fx.GraphModule]:
    """Dynamo's graph of ``model`` (with its chain) and the same graph after the parallel passes."""
    import cachedit_fx
    from cachedit_fx.parallelism import bind_parallel_run
    from cachedit_fx.passes import HANDLES_META_KEY, CompileHandles
    from cachedit_fx.passes.context_parallel import context_parallel
    from cachedit_fx.passes.find_block_chain import find_block_chain
    from cachedit_fx.passes.tensor_parallel import tensor_parallel

    captured = []

    def backend(gm: fx.GraphModule, example_inputs: list[Any]):
        settings = cachedit_fx.parse_options(options)
        run = bind_parallel_run(settings.parallelism)
        run.inputs = dict(zip([n.name for n in gm.graph.nodes if n.op == "placeholder"], example_inputs))
        gm.meta[HANDLES_META_KEY] = CompileHandles(parallel_run=run)
        gm = find_block_chain(gm, settings)
        captured.append((gm, (tensor_parallel if run.config.kind == "tp" else context_parallel)(gm, settings)))
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        torch.compile(model, backend=backend, fullgraph=True)(**inputs, return_dict=False)
    return captured[0]


def _nbytes(node: fx.Node) -> int:
    value = node.meta["example_value"]
    return value.numel() * value.element_size()


def graph_bytes(gm: fx.GraphModule, world: int) -> dict[str, float]:
    """Bytes one rank sends per call, by collective."""
    sent: dict[str, float] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target is C10D.all_reduce.default:
            amount = 2 * (world - 1) / world * _nbytes(node.args[0])
        elif node.target is C10D.all_to_all_single.default:
            amount = (world - 1) / world * _nbytes(node.args[0])
        elif node.target is C10D.all_gather_into_tensor.default:
            amount = (world - 1) * _nbytes(node.args[0])
        else:
            continue
        name = node.target._opname
        sent[name] = sent.get(name, 0.0) + amount
    return sent


def _attentions(gm: fx.GraphModule) -> list[tuple[fx.Node, str]]:
    from cachedit_fx.passes import CHAIN_META_KEY
    from cachedit_fx.passes.shard_propagation import is_attention

    kind_of = {name: block.kind for block in gm.meta[CHAIN_META_KEY].blocks for name in block.node_names}
    return [(n, kind_of[n.name]) for n in gm.graph.nodes if n.name in kind_of and is_attention(n)]


def minimum_bytes(original: fx.GraphModule, kind: str, world: int) -> float:
    """The analytic minimum one rank sends per call (see the module docstring)."""
    from cachedit_fx.passes import CHAIN_META_KEY
    from cachedit_fx.passes.dataflow import node_positions
    from cachedit_fx.passes.shard_propagation import attention_call
    from cachedit_fx.passes.streams import hidden_exit

    total = 0.0
    blocks_with_mlp: set[int] = set()
    for attention, block_kind in _attentions(original):
        call = attention_call(attention)
        q, k = (call[name].meta["example_value"] for name in ("query", "key"))
        out = _nbytes(attention)
        if kind == "cp":
            moved = out * 2 + (2 * k.numel() * k.element_size() if k.shape[-2] == q.shape[-2] else 0)
            total += (world - 1) / world * moved / world
        else:
            block = next(b for b in original.meta[CHAIN_META_KEY].blocks if attention.name in b.node_names)
            mlp = block_kind not in FUSED_MLP_BLOCKS and block.chain_index not in blocks_with_mlp
            blocks_with_mlp.add(block.chain_index)
            total += 2 * (world - 1) / world * out * (2 if mlp else 1)
    if kind == "cp":
        chain = original.meta[CHAIN_META_KEY]
        nodes = list(original.graph.nodes)
        exit_value = hidden_exit(nodes, node_positions(original.graph), chain.blocks[0].first, chain.blocks[-1].last + 1)
        total += (world - 1) / world * _nbytes(exit_value)
    return total


def measure(world: int, names: Optional[list[str]] = None) -> dict[str, Any]:
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=world)
    rows = []
    try:
        for name, case in _cases().items():
            if names and name not in names:
                continue
            model, inputs = _build(case)
            for kind, option in (("tp", "tp_size"), ("cp", "ulysses_size")):
                print(f"[{name}] {kind} ...", flush=True)
                original, sharded = sharded_graphs(model, inputs, {option: world})
                sent = graph_bytes(sharded, world)
                sharding = sharded.meta["cachedit_fx.sharding"]
                rows.append({"model": name, "kind": kind, "bytes": sent, "total": sum(sent.values()),
                             "minimum": minimum_bytes(original, kind, world),
                             "weights_full": sharding.weight_bytes_full, "weights_local": sharding.weight_bytes_local,
                             "gathers": len(sharding.gathers)})
            del model
    finally:
        dist.destroy_process_group()
    return {"date": datetime.date.today().isoformat(), "world": world, "versions": report.versions(), "rows": rows}


def _size(n: float) -> str:
    for unit, scale in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def markdown(results: dict[str, Any]) -> str:
    lines = [f"Per rank and denoising step, {results['world']} ranks, {results['date']} (counted from the graph):", "",
             "| model | scheme | sent by one rank | analytic minimum | ratio | collectives | weights per rank |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for row in results["rows"]:
        scheme = "TP" if row["kind"] == "tp" else "Ulysses"
        ops = ", ".join(f"{op} {_size(b)}" for op, b in sorted(row["bytes"].items()))
        weights = f"{row['weights_local'] / row['weights_full']:.2f}x" if row["kind"] == "tp" else "1.00x"
        lines.append(f"| {row['model']} | {scheme} | {_size(row['total'])} | {_size(row['minimum'])} | "
                     f"{row['total'] / row['minimum']:.3f} | {ops} | {weights} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--models", default=None, help="comma-separated row names (default: all)")
    parser.add_argument("--out", default="benchmarks/results/communication")
    parser.add_argument("--readme", action="store_true", help="rewrite the generated communication section in docs/parallelism.md")
    args = parser.parse_args(argv)
    results = measure(args.world, args.models.split(",") if args.models else None)
    report.publish(results, markdown(results), Path(args.out), "python -m benchmarks.communication --readme", (README_START, README_END), args.readme, DOCUMENT)
    return results


if __name__ == "__main__":
    main()
