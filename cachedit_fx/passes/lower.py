"""Compile the program holding the cache step.

Assumes: a program from ``insert_in_graph_step`` / ``insert_prune_steps``
(``meta[IN_GRAPH_META_KEY]``), its placeholders carrying Dynamo's fake ``example_value``.
Guarantees: the program carries Dynamo's input metadata (``DynamoInputs``), so Inductor marks
its parameters static, and is compiled from fake inputs in Dynamo's fake mode (nothing runs)
into ``meta[ONE_PROGRAM_META_KEY]``. Where the branch is taken is chosen here:
  * by default, inside the compiled program (Inductor's code for a ``torch.cond`` reads the
    predicate, ``if pred.item():``);
  * under CUDA graphs, as a conditional node of the recorded program, and with
    ``in_graph_decision=False`` on the host between compiled parts: both compile the program
    as its parts around each ``torch.cond`` (``compile_cond_parts``).
``compile_units`` compiles equal graphs (``graph_signature``: same nodes, constants, input
shapes, strides and dtypes) once, which is sound because every parameter is a graph input
(not under CUDA graphs, whose static weights live at fixed addresses: there each is alone).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, Callable, Hashable, Optional, Sequence

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import COMPILE_REPORT_META_KEY, ONE_PROGRAM_META_KEY, compile_handles
from cachedit_fx.passes.compile_cond_parts import compile_cond_parts
from cachedit_fx.passes.inner_compile import DynamoInputs, compile_piece, example_value, piece_examples, uses_cuda_graphs

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



def lower(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    """``parent`` with its compiled program in ``meta[ONE_PROGRAM_META_KEY]`` (cacheable by
    Inductor's caches: ``COND_CACHE_KEY``)."""
    dynamo_inputs = compile_handles(parent).dynamo_inputs
    if dynamo_inputs is not None:
        dynamo_inputs.carry_onto(parent)
    if settings.inner_backend == "inductor":
        from torch._inductor import config as inductor_config

        marked = {**inductor_config.unsafe_marked_cacheable_functions,
                  **settings.inductor_options.get("unsafe_marked_cacheable_functions", {}),
                  COND_CACHE_KEY: torch.__version__}
        settings = dataclasses.replace(settings, inductor_options={
            **settings.inductor_options, "unsafe_marked_cacheable_functions": marked})
    if uses_cuda_graphs(settings) or settings.in_graph_decision is False:
        parent.meta[ONE_PROGRAM_META_KEY] = compile_cond_parts(parent, piece_examples(parent, dynamo_inputs), settings)
        log.info("cachedit: the program in parts around its torch.cond")
    else:
        parent.meta[ONE_PROGRAM_META_KEY] = compile_piece(parent, settings, dynamo_inputs)
        log.info("cachedit: one program (decision in the graph)")
    regions = parent.meta.get(COMPILE_REPORT_META_KEY, CompileReport(0, 0))
    parent.meta[COMPILE_REPORT_META_KEY] = CompileReport(regions.pieces + 1, regions.compiles + 1)
    return parent


def compile_units(units: Sequence[tuple[torch.nn.Module, str, fx.GraphModule]], settings: BackendSettings,
                  dynamo_inputs: Optional[DynamoInputs], compiled: dict[Hashable, Callable[..., Any]]
                  ) -> CompileReport:
    """Compile each ``(owner, attribute, graph)`` unit and put it in place as a
    ``CompiledPiece``, compiling equal graphs (``graph_signature``) once; ``compiled`` holds the
    callables by signature (shared across calls). Reports units and distinct compiles."""
    before = len(compiled)
    for owner, name, unit in units:
        if dynamo_inputs is not None:
            dynamo_inputs.carry_onto(unit)
        signature = graph_signature(unit)
        if uses_cuda_graphs(settings):  # static weights at other addresses would re-record every graph
            signature = (signature, id(unit))
        if signature not in compiled:
            compiled[signature] = compile_piece(unit, settings, dynamo_inputs)
        setattr(owner, name, CompiledPiece(name, compiled[signature]))
    return CompileReport(len(units), len(compiled) - before)


COND_CACHE_KEY = "torch.ops.higher_order.cond"
"""Inductor's FX graph cache and AOTAutograd's cache skip graphs holding a ``torch.cond`` unless
the HOP is named in ``unsafe_marked_cacheable_functions``. Sound for the in-graph step: its
branches are ``GraphModule`` submodules, whose code the cache key pickles with the parent's."""


def graph_signature(piece: fx.GraphModule) -> Hashable:
    """What makes two pieces interchangeable: each node's op, target and arguments (other nodes
    by position, constants by value and type), and each input's shape, stride, dtype and device.
    ``get_attr`` nodes keep their attribute name, so pieces reading different constants differ."""
    position: dict[fx.Node, int] = {}
    entries: list[Hashable] = []
    for index, node in enumerate(piece.graph.nodes):
        position[node] = index
        if node.op == "placeholder":
            entries.append(("placeholder", _value_signature(example_value(node))))
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
    """A tensor by its shape, its strides (0 for a dimension of size 1: its stride addresses
    nothing, so FLUX's blocks fed slices of one joined tensor and fresh tensors stay equal),
    dtype and device."""
    if isinstance(value, torch.Tensor):
        strides = tuple(0 if isinstance(size, int) and size == 1 else stride
                        for size, stride in zip(value.shape, value.stride()))
        return ("tensor", str(tuple(value.shape)), str(strides), value.dtype, value.device.type,
                value.requires_grad, isinstance(value, torch.nn.Parameter))
    return (type(value).__qualname__, str(value))
