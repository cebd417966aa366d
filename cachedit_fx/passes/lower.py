"""Compile every piece of the piecewise program with the inner backend.

Assumes: a parent graph whose pieces (``split_pieces.piece_modules``) are ``GraphModule``s
whose placeholders carry Dynamo's fake ``example_value``; a piece marked
``meta[BLOCKWISE_META_KEY]`` (``split_blocks``) has its sub-pieces compiled instead.
Guarantees: every piece carries Dynamo's input metadata (``DynamoInputs``), so Inductor marks
its parameters static; pieces with equal ``graph_signature`` (same nodes, same constants, same
input shapes, strides and dtypes) are compiled once and share the compiled callable, which is
sound because every parameter is a graph input (not under CUDA graphs, whose static weights
live at fixed addresses: there each piece is compiled alone); everything is compiled from fake inputs in Dynamo's
fake mode (nothing runs); the parent graph and the branch modules keep their structure.
``meta[COMPILE_REPORT_META_KEY]`` records pieces and distinct compiles. A program with the
in-graph step (``meta[IN_GRAPH_META_KEY]``) is compiled whole instead, as one unit, into
``meta[ONE_PROGRAM_META_KEY]``; under CUDA graphs as its parts around the ``torch.cond``
(``lower_conditional_program``), so the branch is captured as a conditional node.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Hashable

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import BLOCKWISE_META_KEY, COMPILE_REPORT_META_KEY, IN_GRAPH_META_KEY, ONE_PROGRAM_META_KEY
from cachedit_fx.passes.split_pieces import piece_modules

log = logging.getLogger("cachedit_fx")


class CompiledPiece(torch.nn.Module):
    """A compiled piece callable as a module (the inner backends' results take ``*args``)."""

    def __init__(self, name: str, compiled: Callable[..., Any]) -> None:
        super().__init__()
        self.piece_name = name
        self.compiled = compiled

    def forward(self, *args: Any) -> Any:
        return self.compiled(*args)


@dataclass(frozen=True)
class CompileReport:
    """``pieces`` compiled units of the program, ``compiles`` distinct compilations among them."""

    pieces: int
    compiles: int


@dataclass(frozen=True)
class DynamoInputs:
    """What Dynamo records about its graph's inputs for AOTAutograd and Inductor: the graph's
    meta (``dynamo_compile_id``), its parameter sources and each placeholder's source and tensor
    dict. Carried onto every piece (as DDPOptimizer does for its buckets), Inductor finds the
    parameters among a piece's inputs and marks them static, so CUDA graphs never copy weights."""

    meta: dict[str, Any]
    param_name_to_source: dict[str, Any]
    sources: dict[str, Any]
    tensor_dicts: dict[str, dict[str, Any]]

    @staticmethod
    def of(gm: fx.GraphModule) -> "DynamoInputs":
        placeholders = list(gm.graph.find_nodes(op="placeholder"))
        return DynamoInputs(
            meta=dict(gm.meta), param_name_to_source=dict(getattr(gm, "_param_name_to_source", None) or {}),
            sources={n.name: getattr(n, "_dynamo_source", None) for n in placeholders},
            tensor_dicts={n.name: n.meta["tensor_dict"] for n in placeholders if "tensor_dict" in n.meta})

    def carry_onto(self, piece: fx.GraphModule) -> None:
        if "dynamo_compile_id" not in self.meta:
            return
        piece.meta.update({k: v for k, v in self.meta.items() if k not in piece.meta})
        piece._param_name_to_source = self.param_name_to_source
        for node in piece.graph.find_nodes(op="placeholder"):
            node._dynamo_source = self.sources.get(node.name)
            if node.name in self.tensor_dicts:
                node.meta["tensor_dict"] = self.tensor_dicts[node.name]
            elif node.meta.get(STATIC_WEIGHT_META_KEY):
                node.meta["tensor_dict"] = {"_dynamo_static_input_type": "unguarded"}


STATIC_WEIGHT_META_KEY = "cachedit_fx.static_weight"
"""Placeholder meta flag of weights the passes add (tensor-parallel shards): static inputs."""


def lower(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    if IN_GRAPH_META_KEY in parent.meta:
        return _lower_as_one_program(parent, settings)
    compiled: dict[Hashable, Callable[..., Any]] = {}
    units = 0
    for owner, name, piece in piece_modules(parent):
        targets = piece_modules(piece) if piece.meta.get(BLOCKWISE_META_KEY) else [(owner, name, piece)]
        for unit_owner, unit_name, unit in targets:
            if settings.dynamo_inputs is not None:
                settings.dynamo_inputs.carry_onto(unit)
            signature = graph_signature(unit)
            if uses_cuda_graphs(settings):  # static weights at other addresses would re-record every graph
                signature = (signature, id(unit))
            if signature not in compiled:
                compiled[signature] = compile_piece(unit, settings)
            setattr(unit_owner, unit_name, CompiledPiece(unit_name, compiled[signature]))
            units += 1
    parent.meta[COMPILE_REPORT_META_KEY] = CompileReport(units, len(compiled))
    log.info("cachedit: %d pieces, %d distinct compiles", units, len(compiled))
    return parent


COND_CACHE_KEY = "torch.ops.higher_order.cond"
"""Inductor's FX graph cache and AOTAutograd's cache skip graphs holding a ``torch.cond`` unless
the HOP is named in ``unsafe_marked_cacheable_functions``. Sound for the in-graph step: its
branches are ``GraphModule`` submodules, whose code the cache key pickles with the parent's."""


def _lower_as_one_program(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    """The in-graph step's program (pieces, decision and state updates) compiled as one unit
    (cacheable by Inductor's caches: ``COND_CACHE_KEY``); ``meta[ONE_PROGRAM_META_KEY]`` holds
    the compiled callable."""
    if settings.dynamo_inputs is not None:
        settings.dynamo_inputs.carry_onto(parent)
    if settings.inner_backend == "inductor":
        from torch._inductor import config as inductor_config

        marked = {**inductor_config.unsafe_marked_cacheable_functions,
                  **settings.inductor_options.get("unsafe_marked_cacheable_functions", {}),
                  COND_CACHE_KEY: torch.__version__}
        settings = dataclasses.replace(settings, inductor_options={
            **settings.inductor_options, "unsafe_marked_cacheable_functions": marked})
    if uses_cuda_graphs(settings):
        from cachedit_fx.passes.lower_conditional_program import compile_conditional_program

        examples = [_example(n) for n in parent.graph.find_nodes(op="placeholder")]
        parent.meta[ONE_PROGRAM_META_KEY] = compile_conditional_program(parent, examples, settings)
    else:
        parent.meta[ONE_PROGRAM_META_KEY] = compile_piece(parent, settings)
    parent.meta[COMPILE_REPORT_META_KEY] = CompileReport(1, 1)
    log.info("cachedit: one program (decision in the graph)")
    return parent


def uses_cuda_graphs(settings: BackendSettings) -> bool:
    """Inductor captures CUDA graphs for this compile (``mode="reduce-overhead"`` or
    ``"max-autotune"``, or ``triton.cudagraphs`` in ``inductor_options``)."""
    if settings.inner_backend != "inductor":
        return False
    return bool(inductor_patches(settings).get("triton.cudagraphs"))


def inductor_patches(settings: BackendSettings) -> dict[str, Any]:
    """Inductor's config for this compile: the options of ``mode``, then ``inductor_options``."""
    from torch._inductor import list_mode_options

    return {**(list_mode_options(settings.mode) if settings.mode else {}), **settings.inductor_options}


def compile_piece(piece: fx.GraphModule, settings: BackendSettings) -> Callable[..., Any]:
    """Compile one piece with ``settings.inner_backend``."""
    if settings.inner_backend == "eager":
        return piece
    example_inputs = [_example(n) for n in piece.graph.nodes if n.op == "placeholder"]
    if settings.inner_backend == "aot_eager":
        from torch._dynamo.backends.debugging import aot_eager

        return aot_eager(piece, example_inputs)
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(piece, example_inputs, config_patches=inductor_patches(settings) or None)


def graph_signature(piece: fx.GraphModule) -> Hashable:
    """What makes two pieces interchangeable: each node's op, target and arguments (other nodes
    by position, constants by value and type), and each input's shape, stride, dtype and device.
    ``get_attr`` nodes keep their attribute name, so pieces reading different constants differ."""
    position: dict[fx.Node, int] = {}
    entries: list[Hashable] = []
    for index, node in enumerate(piece.graph.nodes):
        position[node] = index
        if node.op == "placeholder":
            entries.append(("placeholder", _value_signature(_example(node))))
        else:
            entries.append((node.op, node.target, _argument_signature(node.args, position),
                            _argument_signature(node.kwargs, position)))
    return tuple(entries)


def _argument_signature(value: Any, position: dict[fx.Node, int]) -> Hashable:
    if isinstance(value, fx.Node):
        return ("node", position[value])
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_argument_signature(v, position) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((k, _argument_signature(v, position)) for k, v in value.items()))
    if isinstance(value, slice):
        return ("slice", _argument_signature((value.start, value.stop, value.step), position))
    return (type(value).__qualname__, repr(value))


def _value_signature(value: Any) -> Hashable:
    if isinstance(value, torch.Tensor):
        return ("tensor", str(tuple(value.shape)), str(value.stride()), value.dtype, value.device.type,
                value.requires_grad, isinstance(value, torch.nn.Parameter))
    return (type(value).__qualname__, str(value))


def _example(node: fx.Node) -> Any:
    value = node.meta.get("example_value", node.meta.get("val"))
    if value is None:
        raise AssertionError(f"piece input {node.name} has no example value")
    return value
