"""Replace the call of the middle piece with a guarded ``CacheBranch``.

Assumes: the piecewise program from ``partition`` (``meta[PARTITION_META_KEY]``) and a
cache-state node from ``insert_cache_selector``.
Guarantees: the branch receives x0, hF, the call's tensor inputs (for boundary detection,
the timestep among them when the graph has one), the head value each middle output continues
and the middle's own inputs; its outputs
replace the middle's outputs one for one, so the rest of the program is unchanged.
"""

from __future__ import annotations

import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import PARTITION_META_KEY
from cachedit_fx.passes.dataflow import is_module_state, tensor_meta
from cachedit_fx.passes.insert_cache_selector import cache_state_node
from cachedit_fx.passes.partition import Partition
from cachedit_fx.passes.split_pieces import piece_io
from cachedit_fx.runtime.cache_branch import BranchSpec, CacheBranch


def insert_cache_branch(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    part: Partition = parent.meta[PARTITION_META_KEY]
    by_name = {n.name: n for n in parent.graph.nodes}
    _, middle_outputs = piece_io(parent, "middle")
    if middle_outputs != [s.middle_output for s in part.streams]:
        raise AssertionError("middle outputs do not match the partition's streams")
    signature = call_inputs(parent)
    spec = BranchSpec(
        num_signature_inputs=len(signature),
        timestep_index=input_index(signature, TIMESTEP_NAMES),
        latent_index=input_index(signature, LATENT_NAMES),
        num_partners=len(part.streams),
        hidden_position=part.hidden_position,
    )
    partners = [by_name[s.head_value] for s in part.streams]
    call = next(n for n in parent.graph.nodes if n.op == "call_module" and n.target == "middle")
    parent.add_submodule("cache_branch", CacheBranch(parent.get_submodule("middle"), spec))
    with parent.graph.inserting_before(call):
        branch = parent.graph.create_node(
            "call_module", "cache_branch",
            (cache_state_node(parent), by_name[part.hidden_entry], by_name[part.hidden_cut], *signature, *partners,
             *call.args),
            name="cachedit_call_cache_branch",
        )
    call.replace_all_uses_with(branch)
    parent.graph.erase_node(call)
    parent.delete_submodule("middle")
    parent.recompile()
    return parent


TIMESTEP_NAMES = ("timestep", "timesteps", "t")
"""Forward argument names taken for the timestep (diffusers: ``timestep``; HiDream ``timesteps``;
Z-Image ``t``)."""
LATENT_NAMES = ("hidden_states", "x", "sample", "latents", "vision_tokens")
"""Forward argument names taken for the latent a sampler moves (a CFG pair repeats it)."""


def call_inputs(parent: fx.GraphModule) -> list[fx.Node]:
    """The graph's call inputs: tensor placeholders that are not parameters or buffers."""
    return [n for n in parent.graph.find_nodes(op="placeholder") if not is_module_state(n) and tensor_meta(n) is not None]


def find_named_input(placeholders: list[fx.Node], names: tuple[str, ...]) -> fx.Node | None:
    """The call input named like one of ``names`` (positional or keyword; ``names`` in order)."""
    for wanted in names:
        for node in placeholders:
            source = getattr(node.meta.get("grapharg"), "source", None)
            name = source.name if source is not None else node.name
            if name.endswith(f"['{wanted}']") or name in (f"L_{wanted}_", f"l_{wanted}_"):
                return node
    return None


def find_timestep_input(placeholders: list[fx.Node]) -> fx.Node | None:
    """The call input named like a timestep (``TIMESTEP_NAMES``)."""
    return find_named_input(placeholders, TIMESTEP_NAMES)


def input_index(placeholders: list[fx.Node], names: tuple[str, ...]) -> int:
    """The position among ``placeholders`` of the input named like one of ``names``; -1 if none."""
    found = find_named_input(placeholders, names)
    return placeholders.index(found) if found is not None else -1
