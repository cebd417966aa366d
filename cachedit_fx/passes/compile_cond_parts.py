"""Compile the cache step's program as parts around its ``torch.cond``s: the branch is taken
between compiled parts, on the host or as a CUDA graph's conditional node (Inductor would read
the predicate on the host and turn CUDA graphs off for the whole graph).

AOTAutograd traces the program once (Inductor's decompositions, input mutations kept), the ATen
graph is cut at each ``cond`` (``split_at_cond``; DBPrune has one per block), the inner backend
compiles each part and both branches (Inductor with CUDA graphs off; "eager" and "aot_eager" run
them as they are) and ``CondParts`` dispatch the ``cond``s, recorded by CUDA-graph trees under
CUDA graphs (weights and state tensors static inputs).

Assumes: a program from ``insert_in_graph_step`` (its state tensors its last inputs,
``meta[IN_GRAPH_META_KEY]``).
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import IN_GRAPH_META_KEY
from cachedit_fx.passes.inner_compile import inductor_patches, uses_cuda_graphs
from cachedit_fx.passes.split_at_cond import holds_cond, split_at_cond
from cachedit_fx.runtime.cond_parts import CondParts, cuda_graph_trees
from cachedit_fx.runtime.stateful_program import refuse_gradients

log = logging.getLogger("cachedit_fx")


def compile_cond_parts(parent: fx.GraphModule, example_inputs: Sequence[Any],
                       settings: BackendSettings) -> Callable[..., Any]:
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    num_state = len(parent.meta[IN_GRAPH_META_KEY].names)
    refuse_gradients(example_inputs)  # the parts are compiled for inference (no backward graph)

    def compile_split(gm: fx.GraphModule) -> CondParts:
        split = split_at_cond(gm)
        parts = [_compile_part(part, settings) for part in (split.before, split.true_branch, split.false_branch)]
        after = compile_split(split.after) if holds_cond(split.after) else _compile_part(split.after, settings)
        return CondParts(split.positions(), *parts, after)  # the last part compiled last: its outputs are the program's

    def compile_parts(gm: fx.GraphModule, flat_inputs: Sequence[Any]) -> Callable[..., Any]:
        program = compile_split(gm)
        device = next(v.device for v in reversed(flat_inputs) if isinstance(v, torch.Tensor))
        if device.type != "cuda" or not uses_cuda_graphs(settings):
            return program
        context = torch._guards.TracingContext.try_get()
        weights = context.fw_metadata.static_input_indices if context is not None and context.fw_metadata else []
        state = range(len(flat_inputs) - num_state, len(flat_inputs))
        log.info("cachedit: one program under CUDA-graph trees, its torch.cond a conditional node")
        return cuda_graph_trees(program, flat_inputs, sorted({*weights, *state}), device.index or 0)

    decompositions = select_decomp_table() if settings.inner_backend == "inductor" else {}
    program = aot_autograd(fw_compiler=compile_parts, decompositions=decompositions,
                           keep_inference_input_mutations=True)(parent, list(example_inputs))

    def run_for_inference(*inputs: Any) -> Any:
        refuse_gradients(inputs)
        return program(*inputs)

    return run_for_inference


def _compile_part(part: fx.GraphModule, settings: BackendSettings) -> Callable[..., Any]:
    """One ATen part, called with positional inputs: compiled by Inductor with the compile's
    options and CUDA graphs off (the whole program is recorded instead), or as it is."""
    if settings.inner_backend != "inductor":
        return part
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._inductor.utils import BoxedBool

    examples = [n.meta["val"] for n in part.graph.find_nodes(op="placeholder")]
    context = torch._guards.TracingContext.try_get()
    if context is not None and context.output_strides is not None:
        context.output_strides.clear()  # each part records its own outputs' strides there
    with inductor_config.patch({**inductor_patches(settings), "triton.cudagraphs": False}):
        compiled = compile_fx_inner(part, examples, cudagraphs=BoxedBool(False), is_inference=True)
    return lambda *inputs: compiled(list(inputs))
