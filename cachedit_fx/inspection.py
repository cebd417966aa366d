"""``cachedit_fx.inspect``: what the backend would do with a model, without caching anything.

Dynamo hands the model's graph to a capturing backend that runs the pass list up to
``find_block_chain``, then ``plan_partition`` or ``plan_block_partition``, and stops compilation:
the model is neither run nor cached, and no compiled code is kept.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional, Sequence, Union

import torch
import torch.fx as fx

from cachedit_fx.config import DBPruneConfig, FoCaCalibratorConfig, TaylorSeerCalibratorConfig, parse_options
from cachedit_fx.passes.compute import total_flops
from cachedit_fx.passes.dataflow import tensor_meta
from cachedit_fx.passes.errors import NoBlocks
from cachedit_fx.passes.find_block_chain import BlockChain
from cachedit_fx.passes.pass_list import build_pass_list
from cachedit_fx.pipelines import traced_with_capture_settings
from cachedit_fx.passes import CHAIN_META_KEY
from cachedit_fx.passes.partition import plan_partition
from cachedit_fx.passes.partition_blocks import plan_block_partition

__all__ = ["BlockList", "InspectReport", "ValueInfo", "inspect_model"]


@dataclass(frozen=True)
class ValueInfo:
    """A graph value the rewrite cuts through: its node name, shape and dtype."""

    name: str
    shape: tuple[Union[int, str], ...]
    dtype: str

    @property
    def numel(self) -> Optional[int]:
        return math.prod(self.shape) if all(isinstance(size, int) for size in self.shape) else None

    @property
    def nbytes(self) -> Optional[int]:
        numel = self.numel
        return None if numel is None else numel * torch.empty((), dtype=getattr(torch, self.dtype)).element_size()

    def __str__(self) -> str:
        return f"{self.name} {list(self.shape)} {self.dtype}"


@dataclass(frozen=True)
class BlockList:
    """One block list of the chain: module path, block class, count and nodes per block."""

    path: str
    kind: str
    count: int
    nodes_per_block: tuple[int, ...]
    first_chain_index: int


@dataclass(frozen=True)
class InspectReport:
    """The chain, the cut values and the pieces the backend builds for ``options``."""

    model: str
    graph_nodes: int
    block_lists: tuple[BlockList, ...]
    num_blocks: int
    rewrite: str
    Fn: int
    Bn: int
    hidden_entry: Optional[ValueInfo] = None
    hidden_cut: Optional[ValueInfo] = None
    carried: tuple[ValueInfo, ...] = ()
    shared: tuple[ValueInfo, ...] = ()
    streams: tuple[tuple[str, str], ...] = ()
    prunable_blocks: tuple[int, ...] = ()
    piece_sizes: dict[str, int] = field(default_factory=dict)
    residual_levels: int = 0
    cache_bytes_per_stream: Optional[int] = None
    """Owned buffers per stream: the Fn residual plus ``residual_levels`` ladders per carried
    value (DBCache), or the last input plus one residual per handed-on value per prunable
    block (DBPrune); None when a shape is symbolic."""
    problem: Optional[str] = None
    """Why ``options`` give no cacheable region on this chain (then no cut is reported)."""
    side_lists: tuple[tuple[str, int, str], ...] = ()
    """Block lists outside the chain: (path, block count, role: prologue / interleaved / epilogue)."""
    chain_flops_share: Optional[float] = None
    """The chain blocks' share of the graph's FLOPs (``passes/compute.py``)."""
    replayed: tuple[str, ...] = ()
    """Glue between blocks copied into the head to form what the middle continues (DBCache)."""
    replayed_flops_share: Optional[float] = None
    """The replayed glue's share of the graph's FLOPs."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        lines = [f"{self.model}: {self.graph_nodes} graph nodes, {self.num_blocks} blocks"]
        for blocks in self.block_lists:
            sizes = sorted(set(blocks.nodes_per_block))
            lines.append(f"  {blocks.path}[{blocks.count}] {blocks.kind}: chain "
                         f"{blocks.first_chain_index}..{blocks.first_chain_index + blocks.count - 1}, "
                         f"{'/'.join(map(str, sizes))} nodes per block")
        if self.side_lists:
            lines.append("  side lists: " + ", ".join(f"{p}[{n}] {role}" for p, n, role in self.side_lists))
        if self.chain_flops_share is not None:
            lines.append(f"  chain blocks: {self.chain_flops_share:.1%} of the graph's FLOPs")
        lines.append(f"rewrite: {self.rewrite} F{self.Fn}B{self.Bn}")
        if self.problem is not None:
            lines.append(f"  no cacheable region: {self.problem}")
            return "\n".join(lines)
        if self.hidden_entry is not None:
            lines.append(f"  hidden stream: entry {self.hidden_entry}, cut {self.hidden_cut}")
        for title, values in (("carried (live across the cut, defined in blocks)", self.carried),
                              ("shared (defined before the chain, read by the middle)", self.shared)):
            if values:
                lines += [f"  {title}:", *(f"    {value}" for value in values)]
        if self.streams:
            lines.append("  streams (middle output <- head value): "
                         + ", ".join(f"{out} <- {head}" for out, head in self.streams))
        if self.replayed:
            share = "" if self.replayed_flops_share is None else f", {self.replayed_flops_share:.2%} of the FLOPs"
            names = ", ".join(self.replayed) if len(self.replayed) <= 4 else f"{len(self.replayed)} ops"
            lines.append(f"  glue replayed in the head: {names}{share}")
        if self.prunable_blocks:
            lines.append(f"  prunable blocks: {list(self.prunable_blocks)}")
        lines.append("  pieces (nodes): " + ", ".join(f"{k} {v}" for k, v in self.piece_sizes.items()))
        if self.cache_bytes_per_stream is not None:
            lines.append(f"  cache buffers per stream: {self.cache_bytes_per_stream / 2**20:.3f} MiB "
                         f"({self.residual_levels} level(s) per carried value)")
        return "\n".join(lines)


class _Captured(Exception):
    """Carries the report (or the analysis error), its only argument, out of Dynamo's backend call."""


def inspect_model(model: torch.nn.Module, example_inputs: Union[dict[str, Any], Sequence[Any]],
                  options: Optional[dict[str, Any]] = None) -> InspectReport:
    """What the backend would cut for ``model`` called with ``example_inputs`` (a kwargs dict or an
    args tuple) and backend ``options``, traced as ``cachedit_fx.compile`` does; graphs without
    blocks before the chain's graph are run and passed over. Raises ``UnsupportedGraph`` when the
    chain's graph cannot be cached, ``ValueError`` for bad options."""
    settings = parse_options(options)
    module = getattr(model, "_orig_mod", model)

    skipped: list[NoBlocks] = []

    def capture(gm: fx.GraphModule, _inputs: Sequence[Any]) -> Any:
        try:
            analysed = build_pass_list(settings).up_to("find_block_chain").run(gm, settings)
            report = _report(analysed, type(module).__name__, settings)
        except NoBlocks as error:
            skipped.append(error)
            return gm.forward
        except Exception as error:
            raise _Captured(error) from error
        raise _Captured(report)

    compiled = traced_with_capture_settings(torch.compile(module, backend=capture))
    args, kwargs = ((), example_inputs) if isinstance(example_inputs, dict) else (example_inputs, {})
    try:
        with torch.no_grad():
            compiled(*args, **kwargs)
    except Exception as error:
        captured = _find_captured(error)
        if captured is None:
            raise
        (outcome,) = captured.args
        if isinstance(outcome, Exception):
            raise outcome from None
        return outcome
    if skipped:
        raise skipped[-1]
    raise RuntimeError(f"{type(module).__name__}: Dynamo captured no graph to inspect")


def _find_captured(error: BaseException) -> Optional[_Captured]:
    seen: set[int] = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        if isinstance(current, _Captured):
            return current
        seen.add(id(current))
        inner = getattr(current, "inner_exception", None)
        current = inner if isinstance(inner, BaseException) else (current.__cause__ or current.__context__)
    return None


def _value(gm: fx.GraphModule, name: str) -> ValueInfo:
    node = next(n for n in gm.graph.nodes if n.name == name)
    meta = tensor_meta(node)
    if meta is None:
        return ValueInfo(name, (), "non-tensor")
    shape = tuple(int(s) if isinstance(s, int) else str(s) for s in meta.shape)
    return ValueInfo(name, shape, str(meta.dtype).replace("torch.", ""))


def _block_lists(chain: BlockChain) -> tuple[BlockList, ...]:
    members = {path: [b for b in chain.blocks if b.list_path == path] for path in chain.list_paths}
    return tuple(BlockList(path, blocks[0].kind, len(blocks), tuple(len(b.node_names) for b in blocks),
                           blocks[0].chain_index) for path, blocks in members.items())


def _residual_levels(calibrator: Any) -> int:
    if isinstance(calibrator, TaylorSeerCalibratorConfig):
        return calibrator.taylorseer_order + 1
    if isinstance(calibrator, FoCaCalibratorConfig):
        return 4
    return 1


def _sum_bytes(values: Sequence[ValueInfo]) -> Optional[int]:
    sizes = [v.nbytes for v in values]
    return None if any(s is None for s in sizes) else sum(sizes)


def _report(gm: fx.GraphModule, model_name: str, settings: Any) -> InspectReport:
    chain: BlockChain = gm.meta[CHAIN_META_KEY]
    config = settings.cache
    total = chain.graph_flops
    common = dict(model=model_name, graph_nodes=len(gm.graph.nodes), block_lists=_block_lists(chain),
                  num_blocks=len(chain), Fn=config.Fn_compute_blocks, Bn=config.Bn_compute_blocks,
                  side_lists=tuple((i.path, i.count, i.role) for i in chain.lists if i.role != "chain"),
                  chain_flops_share=chain.chain_flops / total if total else None)
    try:
        config.check_against_chain(len(chain))
    except ValueError as problem:
        return InspectReport(**common, rewrite="none", problem=str(problem))
    if isinstance(config, DBPruneConfig):
        plan, _ = plan_block_partition(gm, chain, config)
        handed_on = [_value(gm, s.middle_output) for block in plan.prunable for s in block.streams]
        inputs = [_value(gm, block.hidden_input) for block in plan.prunable]
        return InspectReport(
            **common, rewrite="DBPrune",
            streams=tuple((s.middle_output, s.head_value) for s in plan.prunable[0].streams),
            prunable_blocks=tuple(b.index for b in plan.prunable), piece_sizes=plan.piece_sizes, residual_levels=1,
            cache_bytes_per_stream=_sum_bytes(handed_on + inputs))
    plan = plan_partition(gm, chain, config.Fn_compute_blocks, config.Bn_compute_blocks).partition
    levels = _residual_levels(settings.calibrator)
    hidden_cut = _value(gm, plan.hidden_cut)
    outputs = [_value(gm, s.middle_output) for s in plan.streams]
    return InspectReport(
        **common, rewrite="DBCache", hidden_entry=_value(gm, plan.hidden_entry), hidden_cut=hidden_cut,
        carried=tuple(_value(gm, name) for name in plan.carried), shared=tuple(_value(gm, n) for n in plan.shared),
        streams=tuple((s.middle_output, s.head_value) for s in plan.streams), piece_sizes=plan.piece_sizes,
        residual_levels=levels, cache_bytes_per_stream=_sum_bytes([hidden_cut, *outputs * levels]),
        replayed=plan.replayed, replayed_flops_share=total_flops(n for n in gm.graph.nodes if n.name in plan.replayed)
        / total if total else None)
