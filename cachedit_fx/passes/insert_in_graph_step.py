"""Replace the call of the middle piece with the in-graph DBCache step
(``runtime/dbcache_step.py``): decision, ``torch.cond`` and state updates traced into the
program.

Assumes: the piecewise program from ``partition`` (``meta[PARTITION_META_KEY]``), a
``DBCacheConfig`` and its calibrator; static
shapes for an exported program (state buffers), static or symbolic ones for state inputs.
Guarantees: the step receives its state tensors, x0, hF, the timestep input (when the graph
has one), every call input (for warm-up detection), the head value each middle output
continues, the middle's own inputs and the reset input (when one is added); its outputs
replace the middle's outputs one for one. The state is either graph inputs appended after
Dynamo's (named ``STATE_INPUT_PREFIX + name``; the backend's shim passes each context's
tensors) or buffers of the ``in_graph_state`` submodule (an exported program);
``meta[IN_GRAPH_META_KEY]`` records the ``StepLayout`` (its sizes symbolic where the graph's
are: ``StepLayout.sized`` makes them a call's).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Optional

import torch
import torch.fx as fx
from torch._guards import detect_fake_mode
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
from torch.multiprocessing.reductions import StorageWeakRef

from cachedit_fx.config import BackendSettings, DBCacheConfig
from cachedit_fx.kernels import TORCH_KERNELS, StepKernels, step_kernels
from cachedit_fx.passes import IN_GRAPH_META_KEY, ONE_PROGRAM_META_KEY, PARTITION_META_KEY, compile_handles
from cachedit_fx.passes.dataflow import tensor_meta
from cachedit_fx.passes.errors import UnsupportedGraph
from cachedit_fx.passes.call_inputs import LATENT_NAMES, call_inputs, find_timestep_input, input_index
from cachedit_fx.passes.split_pieces import piece_io
from cachedit_fx.runtime.calibration import Calibrator, value_plans
from cachedit_fx.runtime.dbcache_step import DBCacheStep, StepLayout, ValueLadder, streams_for
from cachedit_fx.runtime.stateful_program import StepProgram, SymbolSource

log = logging.getLogger("cachedit_fx")

STEP_MODULE = "in_graph_step"
STATE_MODULE = "in_graph_state"
STATE_INPUT_PREFIX = "cachedit_state_"
RESET_INPUT = "cachedit_reset"
"""Name of the exported program's reset input (int64, shape [2]): nonzero starts a new generation."""


def insert_in_graph_step(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    """The state becomes graph inputs (of symbolic shape in a dynamic-shape graph: the backend's
    shim sizes them per call); a graph the step cannot take raises ``UnsupportedGraph`` before
    anything is changed (the backend compiles it uncached)."""
    return rewrite_middle_as_step(parent, settings.cache, settings.calibrator, **state_input_options(parent, settings))


def state_input_options(parent: fx.GraphModule, settings: BackendSettings) -> dict[str, Any]:
    """The rewrite's options for a compiled program: state as graph inputs, the arithmetic of
    ``cache_kernels``, diff sums added over the parallel run's group."""
    run = compile_handles(parent).parallel_run
    return dict(state_as_inputs=True, sums_group=run.group_name if run is not None else None,
                kernels=step_kernels(settings.cache_kernels))


def insert_exported_step(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    """The step of an exported program: its state as buffers of the ``STATE_MODULE`` submodule
    (static shapes), and an int64 [2] input ``RESET_INPUT`` that starts a new generation when
    nonzero."""
    return rewrite_middle_as_step(parent, settings.cache, settings.calibrator, state_as_inputs=False,
                                  reset_input=RESET_INPUT)


def rewrite_middle_as_step(parent: fx.GraphModule, config: DBCacheConfig, calibrator: Optional[Calibrator],
                           state_as_inputs: bool, reset_input: Optional[str] = None,
                           sums_group: Optional[str] = None,
                           kernels: StepKernels = TORCH_KERNELS) -> fx.GraphModule:
    part = parent.meta[PARTITION_META_KEY]
    by_name = {n.name: n for n in parent.graph.nodes}
    _, middle_outputs = piece_io(parent, "middle")
    if middle_outputs != [s.middle_output for s in part.streams]:
        raise AssertionError("middle outputs do not match the partition's streams")
    call = next(n for n in parent.graph.nodes if n.op == "call_module" and n.target == "middle")
    prepare_branch_inputs(parent, call)
    signature = call_inputs(parent)
    partners = [by_name[s.head_value] for s in part.streams]
    partners, middle_inputs = unaliased_operands(parent.graph, call, [*partners, *call.args], len(partners))
    example = state_example if state_as_inputs else static_example
    hidden = example(by_name[part.hidden_cut])
    plans = value_plans(calibrator, len(partners), part.hidden_position)
    layout = StepLayout(
        hidden=stored_value(hidden),
        values=tuple(stored_value(v, order=plan.order, residual=plan.residual, kind=plan.kind)
                     for v, plan in zip(map(example, (by_name[name] for name in middle_outputs)), plans)),
        num_fingerprints=len(signature), num_blocks=part.num_blocks,
        skipped_blocks=part.num_blocks - part.Fn - part.Bn, streams=streams_for(config),
        latent_index=input_index(signature, LATENT_NAMES),
        inputs=tuple((tuple(v.shape), v.dtype) for v in map(tensor_meta, signature)))
    parent.add_submodule(STEP_MODULE, DBCacheStep(parent.get_submodule("middle"), layout, sums_group, kernels))
    state_nodes, reset = add_state(parent, layout, config, hidden.device, state_as_inputs, reset_input)
    with parent.graph.inserting_before(call):
        node = parent.graph.create_node(
            "call_module", STEP_MODULE,
            (tuple(state_nodes), by_name[part.hidden_entry], by_name[part.hidden_cut],
             find_timestep_input(signature), tuple(signature), tuple(partners), tuple(middle_inputs), reset),
            name="cachedit_call_in_graph_step",
        )
    call.replace_all_uses_with(node)
    parent.graph.erase_node(call)
    parent.delete_submodule("middle")
    parent.meta[IN_GRAPH_META_KEY] = layout
    parent.recompile()
    return parent


def add_state(parent: fx.GraphModule, layout: StepLayout, config: DBCacheConfig, device: torch.device,
              state_as_inputs: bool, reset_input: Optional[str]) -> tuple[list[fx.Node], Optional[fx.Node]]:
    """The nodes of the step's state tensors (``layout.names`` order): placeholders after the
    last of Dynamo's, or ``STATE_MODULE`` buffers made for ``config``; and the reset input's
    placeholder when ``reset_input`` names one."""
    placeholders = list(parent.graph.find_nodes(op="placeholder"))
    if state_as_inputs:
        nodes = _state_inputs(parent, layout, placeholders, device)
    else:
        nodes = _state_buffers(parent, layout, layout.new_state(config, device), placeholders)
    reset = None
    if reset_input is not None:
        with parent.graph.inserting_after(placeholders[-1]):
            reset = parent.graph.placeholder(reset_input)
        reset.meta["example_value"] = torch.zeros(2, dtype=torch.int64, device=device)
    return nodes, reset


def step_program(parent: fx.GraphModule) -> StepProgram:
    """The lowered program of ``insert_in_graph_step`` (``meta[ONE_PROGRAM_META_KEY]``) with
    what its shim reads from the graph: the anchor parameter, the state's device, where each
    size symbol of a dynamic-shape graph comes from."""
    layout = parent.meta[IN_GRAPH_META_KEY]
    placeholders = list(parent.graph.find_nodes(op="placeholder"))
    dynamo_inputs = placeholders[: len(placeholders) - len(layout.names)]
    anchor = next(k for k, n in enumerate(dynamo_inputs)
                  if isinstance(getattr(n.meta.get("grapharg"), "example", None), torch.nn.Parameter))
    return StepProgram(parent.meta[ONE_PROGRAM_META_KEY], layout, anchor, tensor_meta(placeholders[-1]).device,
                       _symbol_sources(dynamo_inputs))


def _symbol_sources(placeholders: list[fx.Node]) -> tuple[SymbolSource, ...]:
    sources: list[SymbolSource] = []
    for index, node in enumerate(placeholders):
        value = node.meta.get("example_value")
        if isinstance(value, torch.SymInt) and value.node.expr.is_Symbol:
            sources.append((value.node.expr, index, None))
        elif isinstance(value, torch.Tensor):
            sources.extend((d.node.expr, index, dim) for dim, d in enumerate(value.shape)
                           if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol)
    return tuple(sources)


def _state_inputs(parent: fx.GraphModule, layout: StepLayout, placeholders: list[fx.Node],
                  device: torch.device) -> list[fx.Node]:
    """One placeholder per state tensor after the last of Dynamo's, with fake example values
    (of symbolic shape where the graph's shapes are symbolic)."""
    nodes = []
    anchor = placeholders[-1]
    for name, (shape, dtype) in layout.shapes().items():
        with parent.graph.inserting_after(anchor):
            node = anchor = parent.graph.placeholder(STATE_INPUT_PREFIX + name)
        with _fake_mode(parent):
            node.meta["example_value"] = torch.empty(shape, dtype=dtype, device=device)
        nodes.append(node)
    return nodes


def _state_buffers(parent: fx.GraphModule, layout: StepLayout, state: dict[str, torch.Tensor],
                   placeholders: list[fx.Node]) -> list[fx.Node]:
    holder = torch.nn.Module()
    for name in layout.names:
        holder.register_buffer(name, state[name])
    parent.add_submodule(STATE_MODULE, holder)
    nodes = []
    with parent.graph.inserting_after(placeholders[-1]):
        for name in reversed(layout.names):
            nodes.append(parent.graph.get_attr(f"{STATE_MODULE}.{name}"))
    return nodes[::-1]


def prepare_branch_inputs(parent: fx.GraphModule, call: fx.Node) -> None:
    """Make the piece ``call`` calls a ``torch.cond`` branch: a float input, or a symbolic float
    whose value the shape environment fixed (an expression without symbols, e.g. a norm's eps
    read with ``.item()`` under ``dynamic=True``), becomes a constant in the piece (inside a
    branch it would be data-dependent); a float Dynamo keeps symbolic (a scale computed from a
    size under ``dynamic=True``) crosses as a 0-d fp64 tensor read back with ``.item()`` in the
    piece; ``UnsupportedGraph`` for any other input that is neither a tensor nor an integer."""
    piece = parent.get_submodule(call.target)
    placeholders = list(piece.graph.find_nodes(op="placeholder"))
    kept = []
    for value, placeholder in zip(call.args, placeholders):
        example = value.meta.get("example_value", value.meta.get("val")) if isinstance(value, fx.Node) else value
        known = _known_float(example)
        if known is not None:
            placeholder.replace_all_uses_with(known)
            piece.graph.erase_node(placeholder)
            continue
        if isinstance(example, torch.SymFloat):
            value = _float_as_tensor(parent, piece, call, value, placeholder)
        elif not isinstance(example, (torch.Tensor, int, torch.SymInt)) or isinstance(example, bool):
            raise UnsupportedGraph(f"the middle blocks take {type(example).__name__} {getattr(value, 'name', value)}, "
                                   "which torch.cond cannot pass to a branch")
        kept.append(value)
    for node in list(piece.graph.nodes):  # a float read from an input (.item()), known: Dynamo guards it
        known = _known_float(node.meta.get("example_value"))
        if node.op != "placeholder" and known is not None:
            node.replace_all_uses_with(known)
            piece.graph.erase_node(node)
    call.args = tuple(kept)
    piece.recompile()


def _float_as_tensor(parent: fx.GraphModule, piece: fx.GraphModule, call: fx.Node, value: fx.Node,
                     placeholder: fx.Node) -> fx.Node:
    """``value`` (a symbolic float) made a 0-d fp64 tensor before ``call``; in the piece,
    ``placeholder`` takes the tensor and its users read ``.item()`` of it."""
    with _fake_mode(parent):
        example = torch.empty((), dtype=torch.float64)
    with parent.graph.inserting_before(call):
        tensor = parent.graph.call_function(torch.scalar_tensor, (value,), {"dtype": torch.float64})
    tensor.meta["example_value"] = example
    users = list(placeholder.users)
    with piece.graph.inserting_after(placeholder):
        item = piece.graph.call_method("item", (placeholder,))
    item.meta["example_value"] = placeholder.meta.get("example_value")
    for user in users:
        user.replace_input_with(placeholder, item)
    placeholder.meta["example_value"] = example
    return tensor


def _fake_mode(parent: fx.GraphModule) -> contextlib.AbstractContextManager:
    """The fake mode of ``parent``'s placeholder values (nothing for a graph without one): new
    example values made in it share the graph's shape environment."""
    values = [tensor_meta(n) for n in parent.graph.find_nodes(op="placeholder") if tensor_meta(n) is not None]
    return detect_fake_mode(values) or contextlib.nullcontext()


def _known_float(example: Any) -> Optional[float]:
    """``example`` as a constant: a float, or a symbolic float whose expression has no symbols."""
    if isinstance(example, torch.SymFloat) and example.node.expr.is_number:
        return float(example.node.expr)
    return example if isinstance(example, float) else None


def unaliased_operands(graph: fx.Graph, before: fx.Node, operands: list[Any], num_partners: int
                        ) -> tuple[list[Any], list[Any]]:
    """The ``torch.cond`` operands (partners, then the middle's inputs) with every tensor that
    shares storage with an earlier, different operand replaced by a clone made before
    ``before``: ``torch.cond`` refuses operands aliasing each other, as the text and image
    slices of one joined tensor do where the middle starts at a single-stream block."""
    seen: dict[Any, fx.Node] = {}
    clones: dict[fx.Node, fx.Node] = {}
    result = []
    for operand in operands:
        value = tensor_meta(operand) if isinstance(operand, fx.Node) else None
        if value is not None and not isinstance(value, torch.nn.Parameter):
            storage = StorageWeakRef(value.untyped_storage())
            if seen.setdefault(storage, operand) is not operand:
                if operand not in clones:  # one copy per value, however often it is an operand
                    with graph.inserting_before(before):
                        clones[operand] = graph.call_function(torch.clone, (operand,))
                    clones[operand].meta["example_value"] = value.clone()
                operand = clones[operand]
        result.append(operand)
    return result[:num_partners], result[num_partners:]


def stored_value(value: torch.Tensor, **plan: Any) -> ValueLadder:
    """How the step stores ``value``: a size that depends on data (an unbacked symbol, e.g. a
    count from ``.item()``: FramePack's text length) at its upper bound, as a fitted dimension;
    ``UnsupportedGraph`` when such a size has no finite bound (the state could not be made
    before the call)."""
    shape, fitted = [], []
    for dim, size in enumerate(value.shape):
        if isinstance(size, torch.SymInt) and free_unbacked_symbols(size):
            bound = size.node.shape_env.bound_sympy(size.node.expr).upper
            if not (bound.is_finite and bound.is_integer):
                raise UnsupportedGraph(f"a carried value's size depends on data ({size}) with no upper bound, so "
                                       "the in-graph step cannot size its state before the call")
            size = int(bound)
            fitted.append(dim)
        shape.append(size)
    return ValueLadder(tuple(shape), value.dtype, fitted=tuple(fitted), **plan)


def state_example(node: fx.Node) -> torch.Tensor:
    value = tensor_meta(node)
    if value is None:
        raise UnsupportedGraph(f"the in-graph step needs a tensor at {node.name}")
    return value


def static_example(node: fx.Node) -> torch.Tensor:
    value = tensor_meta(node)
    if value is None or not all(isinstance(s, int) for s in value.shape):
        raise UnsupportedGraph(f"the in-graph step needs static shapes; {node.name} has shape "
                               f"{None if value is None else tuple(value.shape)}")
    return value
