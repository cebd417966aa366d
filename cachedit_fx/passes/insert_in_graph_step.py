"""Replace the call of the middle piece with the in-graph DBCache step
(``runtime/in_graph_step.py``): decision, ``torch.cond`` and state updates traced into the
program, state held as buffers of the ``in_graph_step`` submodule.

Assumes: the piecewise program from ``partition`` (``meta[PARTITION_META_KEY]``), static
shapes, a ``DBCacheConfig`` without a calibrator and without separate CFG streams.
Guarantees: the step receives x0, hF, the timestep input (when the graph has one), every call
input (for warm-up detection), the head value each middle output continues and the middle's
own inputs, and, when ``reset_input`` names a new placeholder, that placeholder as its reset
request; its outputs replace the middle's outputs one for one.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings, DBCacheConfig, DBPruneConfig
from cachedit_fx.passes import PARTITION_META_KEY
from cachedit_fx.passes.dataflow import is_module_state, tensor_meta
from cachedit_fx.passes.errors import UnsupportedGraph
from cachedit_fx.passes.insert_cache_branch import find_timestep_input
from cachedit_fx.passes.partition import Partition
from cachedit_fx.passes.split_pieces import piece_io
from cachedit_fx.runtime.in_graph_step import InGraphDBCacheStep

STEP_MODULE = "in_graph_step"


def check_in_graph_support(settings: BackendSettings) -> None:
    """Raise ``ValueError`` naming the first option the in-graph step does not implement."""
    cache = settings.cache
    if isinstance(cache, DBPruneConfig):
        raise ValueError("DBPrune decides per block, with one host read per block; the in-graph step "
                         "implements DBCache only")
    if settings.calibrator is not None:
        raise ValueError("calibrators (TaylorSeer, FoCa) are not in the in-graph step yet; drop the calibrator option")
    if cache.enable_separate_cfg:
        raise ValueError("enable_separate_cfg=True: separate CFG streams are not in the in-graph step yet; "
                         "batch the conditional and unconditional calls, or set enable_separate_cfg=False")


def insert_in_graph_step(parent: fx.GraphModule, settings: BackendSettings,
                         reset_input: Optional[str] = None) -> fx.GraphModule:
    part = parent.meta[PARTITION_META_KEY]
    if not isinstance(part, Partition) or not isinstance(settings.cache, DBCacheConfig):
        raise UnsupportedGraph("the in-graph step needs a DBCache partition")
    by_name = {n.name: n for n in parent.graph.nodes}
    _, middle_outputs = piece_io(parent, "middle")
    if middle_outputs != [s.middle_output for s in part.streams]:
        raise AssertionError("middle outputs do not match the partition's streams")
    placeholders = [n for n in parent.graph.nodes if n.op == "placeholder"]
    signature = [n for n in placeholders if not is_module_state(n) and tensor_meta(n) is not None]
    timestep = find_timestep_input(signature)
    partners = [by_name[s.head_value] for s in part.streams]
    hidden_cut = _static_example(by_name[part.hidden_cut])
    step = InGraphDBCacheStep(
        parent.get_submodule("middle"), settings.cache, hidden_cut, [_static_example(p) for p in partners],
        num_fingerprints=len(signature), num_blocks=part.num_blocks,
        skipped_blocks=part.num_blocks - part.Fn - part.Bn)
    parent.add_submodule(STEP_MODULE, step)
    reset = None
    if reset_input is not None:
        with parent.graph.inserting_after(placeholders[-1]):
            reset = parent.graph.placeholder(reset_input)
        reset.meta["example_value"] = torch.zeros(2, dtype=torch.int64)
    call = next(n for n in parent.graph.nodes if n.op == "call_module" and n.target == "middle")
    with parent.graph.inserting_before(call):
        node = parent.graph.create_node(
            "call_module", STEP_MODULE,
            (by_name[part.hidden_entry], by_name[part.hidden_cut], timestep, tuple(signature), tuple(partners),
             tuple(call.args), reset),
            name="cachedit_call_in_graph_step",
        )
    call.replace_all_uses_with(node)
    parent.graph.erase_node(call)
    parent.delete_submodule("middle")
    parent.recompile()
    return parent


def in_graph_step(parent: fx.GraphModule) -> InGraphDBCacheStep:
    """The step module ``insert_in_graph_step`` added."""
    return parent.get_submodule(STEP_MODULE)


def _static_example(node: fx.Node) -> torch.Tensor:
    value = tensor_meta(node)
    if value is None or not all(isinstance(s, int) for s in value.shape):
        raise UnsupportedGraph(f"the in-graph step needs static shapes; {node.name} has shape "
                               f"{None if value is None else tuple(value.shape)}")
    return value
