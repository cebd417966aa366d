"""Replace the call of every prunable block piece with its in-graph DBPrune step
(``runtime/dbprune_step.py``): one ``torch.cond`` per block, decisions and state updates
traced into the program.

Assumes: the program from ``partition_blocks`` (``meta[PARTITION_META_KEY]`` is a
``BlockPartition``) and a ``DBPruneConfig``. Guarantees: the steps run in program order; the
first receives the call's timestep (when the graph has one), every call input (warm-up
detection) and the reset input (when one is added), each later one the call's progress from
the one before; each returns its block's outputs one for one. The state is added as
``insert_in_graph_step`` adds it (``add_state``) and ``meta[IN_GRAPH_META_KEY]`` records the
``StepLayout`` (its ``blocks``).
"""

from __future__ import annotations

import operator
from typing import Optional

import torch.fx as fx

from cachedit_fx.config import BackendSettings, DBPruneConfig
from cachedit_fx.kernels import TORCH_KERNELS, StepKernels
from cachedit_fx.passes import IN_GRAPH_META_KEY, PARTITION_META_KEY
from cachedit_fx.passes.call_inputs import LATENT_NAMES, call_inputs, find_timestep_input, input_index
from cachedit_fx.passes.insert_in_graph_step import (
    RESET_INPUT, add_state, prepare_branch_inputs, state_example, static_example, stored_value, state_input_options,
    unaliased_operands)
from cachedit_fx.passes.partition_blocks import BlockPartition
from cachedit_fx.passes.dataflow import tensor_meta
from cachedit_fx.passes.split_pieces import piece_io
from cachedit_fx.runtime.dbcache_step import PrunedBlockLayout, StepLayout, streams_for
from cachedit_fx.runtime.dbprune_step import PrunedBlockStep


def insert_prune_steps(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    """The state becomes graph inputs (the backend's shim passes each context's tensors)."""
    return rewrite_blocks_as_steps(parent, settings.cache, **state_input_options(parent, settings))


def insert_exported_prune_steps(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    """The steps of an exported program: state as buffers, the reset input ``RESET_INPUT``."""
    return rewrite_blocks_as_steps(parent, settings.cache, state_as_inputs=False, reset_input=RESET_INPUT)


def rewrite_blocks_as_steps(parent: fx.GraphModule, config: DBPruneConfig, state_as_inputs: bool,
                            reset_input: Optional[str] = None, sums_group: Optional[str] = None,
                            kernels: StepKernels = TORCH_KERNELS) -> fx.GraphModule:
    part: BlockPartition = parent.meta[PARTITION_META_KEY]
    by_name = {n.name: n for n in parent.graph.nodes}
    calls = {n.target: n for n in parent.graph.nodes if n.op == "call_module"}
    example = state_example if state_as_inputs else static_example
    signature = call_inputs(parent)
    blocks = []
    for block in part.prunable:
        inputs, outputs = piece_io(parent, block.piece)
        if outputs != [s.middle_output for s in block.streams]:
            raise AssertionError(f"{block.piece} outputs do not match the block's streams")
        prepare_branch_inputs(parent, calls[block.piece])
        hidden = example(by_name[block.hidden_input])
        blocks.append(PrunedBlockLayout(block.index, stored_value(hidden), tuple(
            stored_value(example(by_name[s.middle_output])) for s in block.streams)))
    layout = StepLayout(
        hidden=None, values=(), num_fingerprints=len(signature), num_blocks=part.num_blocks, skipped_blocks=0,
        streams=streams_for(config), latent_index=input_index(signature, LATENT_NAMES),
        inputs=tuple((tuple(v.shape), v.dtype) for v in map(tensor_meta, signature)), blocks=tuple(blocks))
    state, reset = add_state(parent, layout, config, hidden.device, state_as_inputs, reset_input)
    progress: object = (find_timestep_input(signature), tuple(signature), reset)
    for position, block in enumerate(part.prunable):
        call = calls[block.piece]
        partners, block_inputs = unaliased_operands(
            parent.graph, call, [*(by_name[s.head_value] for s in block.streams), *call.args], len(block.streams))
        name = f"prune_{block.piece}"
        step = PrunedBlockStep(parent.get_submodule(block.piece), layout, position, sums_group, kernels)
        parent.add_submodule(name, step)
        with parent.graph.inserting_before(call):
            node = parent.graph.create_node(
                "call_module", name, (tuple(state), progress, by_name[block.hidden_input], tuple(partners),
                                      tuple(block_inputs)), name=f"cachedit_call_{name}")
        if not step.last:
            with parent.graph.inserting_after(node):
                progress = parent.graph.call_function(operator.getitem, (node, len(block.streams)))
        call.replace_all_uses_with(node)
        parent.graph.erase_node(call)
        parent.delete_submodule(block.piece)
    parent.meta[IN_GRAPH_META_KEY] = layout
    parent.recompile()
    return parent
