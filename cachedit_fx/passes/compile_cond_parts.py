"""Compile the in-graph step's program for CUDA graphs: as parts around its ``torch.cond``s.

Inductor compiles a graph holding a ``torch.cond`` into code that reads the predicate on the
host (``if pred.item():``) and turns CUDA graphs off for it. Here AOTAutograd traces the
program once (Inductor's decompositions, input mutations kept in the graph), the ATen graph is
cut at each ``cond`` in turn (``split_at_cond``; DBPrune has one per block), Inductor compiles
each part and both branches with CUDA graphs off, and the ``CondParts`` that dispatch the
``cond``s at run time are recorded by CUDA-graph trees (``runtime/cond_parts.py``), the weights
and the state tensors as static inputs. On a device without CUDA graphs the same parts run
unrecorded.

Assumes: a program from ``insert_in_graph_step`` (its state tensors are its last inputs,
``meta[IN_GRAPH_META_KEY]``), ``inner_backend="inductor"``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import IN_GRAPH_META_KEY
from cachedit_fx.passes.inner_compile import inductor_patches
from cachedit_fx.passes.split_at_cond import holds_cond, split_at_cond
from cachedit_fx.runtime.cond_parts import CondParts, cuda_graph_trees

log = logging.getLogger("cachedit_fx")


def compile_cond_parts(parent: fx.GraphModule, example_inputs: Sequence[Any],
                                settings: BackendSettings) -> Callable[..., Any]:
    from torch._dynamo.backends.common import aot_autograd
    from torch._inductor.decomposition import select_decomp_table

    num_state = len(parent.meta[IN_GRAPH_META_KEY].names)

    def compile_split(gm: fx.GraphModule) -> CondParts:
        split = split_at_cond(gm)
        parts = [_compile_part(part, settings) for part in (split.before, split.true_branch, split.false_branch)]
        after = compile_split(split.after) if holds_cond(split.after) else _compile_part(split.after, settings)
        return CondParts(split.positions(), *parts, after)  # the last part compiled last: its outputs are the program's

    def compile_parts(gm: fx.GraphModule, flat_inputs: Sequence[Any]) -> Callable[..., Any]:
        program = compile_split(gm)
        device = next(v.device for v in reversed(flat_inputs) if isinstance(v, torch.Tensor))
        if device.type != "cuda":
            log.info("cachedit: one program in parts around its torch.cond (no CUDA graphs on %s)", device)
            return program
        context = torch._guards.TracingContext.try_get()
        weights = context.fw_metadata.static_input_indices if context is not None and context.fw_metadata else []
        state = range(len(flat_inputs) - num_state, len(flat_inputs))
        log.info("cachedit: one program under CUDA-graph trees, its torch.cond a conditional node")
        return cuda_graph_trees(program, flat_inputs, sorted({*weights, *state}), device.index or 0)

    return aot_autograd(fw_compiler=compile_parts, decompositions=select_decomp_table(),
                        keep_inference_input_mutations=True)(parent, list(example_inputs))


def _compile_part(part: fx.GraphModule, settings: BackendSettings) -> Callable[..., Any]:
    """One ATen part compiled by Inductor with the compile's options, CUDA graphs off (the
    whole program is recorded instead), called with positional inputs."""
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx_inner
    from torch._inductor.utils import BoxedBool

    patches = {**inductor_patches(settings), "triton.cudagraphs": False}
    examples = [n.meta["val"] for n in part.graph.find_nodes(op="placeholder")]
    context = torch._guards.TracingContext.try_get()
    if context is not None and context.output_strides is not None:
        context.output_strides.clear()  # each part records its own outputs' strides there
    with inductor_config.patch(patches):
        compiled = compile_fx_inner(part, examples, cudagraphs=BoxedBool(False), is_inference=True)

    def run(*inputs: torch.Tensor) -> Sequence[torch.Tensor]:
        return compiled(list(inputs))

    return run
