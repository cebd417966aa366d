"""Replace the call of every prunable block piece with a guarded ``PruneBranch`` (DBPrune).

Assumes: the program from ``partition_blocks`` (``meta[PARTITION_META_KEY]`` is a
``BlockPartition``) and a cache-state node from ``insert_cache_selector``.
Guarantees: each branch returns the block's outputs one for one; the first one in program
order also receives the call's tensor inputs (boundary detection, the timestep among them).
"""

from __future__ import annotations

import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import PARTITION_META_KEY
from cachedit_fx.passes.insert_cache_branch import LATENT_NAMES, TIMESTEP_NAMES, call_inputs, input_index
from cachedit_fx.passes.insert_cache_selector import cache_state_node
from cachedit_fx.passes.partition_blocks import BlockPartition
from cachedit_fx.passes.split_pieces import piece_io
from cachedit_fx.runtime.prune_branch import PruneBranch, PruneSpec


def insert_prune_branches(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    part: BlockPartition = parent.meta[PARTITION_META_KEY]
    signature = call_inputs(parent)
    calls = {n.target: n for n in parent.graph.nodes if n.op == "call_module"}
    by_name = {n.name: n for n in parent.graph.nodes}
    state = cache_state_node(parent)
    for k, block in enumerate(part.prunable):
        inputs, outputs = piece_io(parent, block.piece)
        if outputs != [s.middle_output for s in block.streams]:
            raise AssertionError(f"{block.piece} outputs do not match the block's streams")
        first, last = k == 0, k == len(part.prunable) - 1
        spec = PruneSpec(
            index=block.index, first=first, last=last,
            num_signature_inputs=len(signature) if first else 0,
            timestep_index=input_index(signature, TIMESTEP_NAMES) if first else -1,
            latent_index=input_index(signature, LATENT_NAMES) if first else -1,
            partner_positions=tuple(inputs.index(s.head_value) for s in block.streams),
        )
        call = calls[block.piece]
        name = f"prune_{block.piece}"
        parent.add_submodule(name, PruneBranch(parent.get_submodule(block.piece), spec))
        with parent.graph.inserting_before(call):
            branch = parent.graph.create_node(
                "call_module", name, (state, *(signature if first else ()), by_name[block.hidden_input], *call.args), name=f"cachedit_call_{name}"
            )
        call.replace_all_uses_with(branch)
        parent.graph.erase_node(call)
        parent.delete_submodule(block.piece)
    parent.recompile()
    return parent
