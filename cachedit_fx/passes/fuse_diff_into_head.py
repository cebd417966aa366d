"""Compute the cache decision's diff sums inside the compiled head piece.

Runs only with ``cache_kernels="inductor-fused"``. Assumes: the program from
``insert_cache_branch`` (a ``head`` piece exporting x0 and hF, a ``cache_branch`` call).
Guarantees: the head takes one more input, the stream's owned previous Fn residual
(from a ``PrevResidualSource`` called just before it), and returns one more output, the
fp32 sums ``[sum|prev - (hF - x0)|, sum|prev|]``, which the branch receives as
``head_sums``; Inductor can then fuse the reduction into the last head block's epilogue.
Nothing else changes. A hidden state without a static shape is left unfused (logged), as
the buffer must exist before the head runs.
"""

from __future__ import annotations

import logging
import operator

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.kernels.reference import l1_rel_diff_reference
from cachedit_fx.passes import PARTITION_META_KEY
from cachedit_fx.passes.insert_cache_selector import cache_state_node
from cachedit_fx.passes.partition import Partition
from cachedit_fx.runtime.cache_branch import PrevResidualSource

log = logging.getLogger("cachedit_fx")

PREV_RESIDUAL = "cachedit_prev_residual"
HEAD_SUMS = "cachedit_head_sums"


def fuse_diff_into_head(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    part: Partition = parent.meta[PARTITION_META_KEY]
    nodes = {n.name: n for n in parent.graph.nodes}
    cut_meta = nodes[part.hidden_cut].meta.get("example_value")
    if cut_meta is None or not all(isinstance(d, int) for d in cut_meta.shape):
        log.info("cachedit: hF has no static shape; the diff stays a separate kernel")
        return parent
    head_call = next(n for n in parent.graph.nodes if n.op == "call_module" and n.target == "head")
    branch_call = next(n for n in parent.graph.nodes if n.op == "call_module" and n.target == "cache_branch")

    head: fx.GraphModule = parent.get_submodule("head")
    num_outputs = _append_diff_sums(head, part, cut_meta)

    parent.add_submodule(
        "prev_residual_source",
        PrevResidualSource(tuple(cut_meta.shape), cut_meta.dtype, cut_meta.device),
    )
    with parent.graph.inserting_before(head_call):
        prev = parent.graph.create_node("call_module", "prev_residual_source", (cache_state_node(parent),),
                                        name=PREV_RESIDUAL)
    head_call.args = (*head_call.args, prev)
    with parent.graph.inserting_after(head_call):
        sums = parent.graph.create_node(
            "call_function", operator.getitem, (head_call, num_outputs - 1), name=HEAD_SUMS
        )
    branch_call.kwargs = {**branch_call.kwargs, "head_sums": sums}
    parent.graph.lint()
    parent.recompile()
    return parent


def _append_diff_sums(head: fx.GraphModule, part: Partition, cut_meta: torch.Tensor) -> int:
    """Add the ``prev`` input and the sums output to ``head``; returns its new output count."""
    graph = head.graph
    nodes = {n.name: n for n in graph.nodes}
    first_compute = next(n for n in graph.nodes if n.op != "placeholder")
    with graph.inserting_before(first_compute):
        prev = graph.placeholder(PREV_RESIDUAL)
    prev.meta["example_value"] = cut_meta.new_empty(cut_meta.shape)
    output = next(n for n in graph.nodes if n.op == "output")
    with graph.inserting_before(output):
        sums = graph.create_node(
            "call_function", l1_rel_diff_reference, (prev, nodes[part.hidden_cut], nodes[part.hidden_entry]),
            name=HEAD_SUMS,
        )
    results = (*output.args[0], sums)
    output.args = (results,)
    graph.lint()
    head.recompile()
    return len(results)
