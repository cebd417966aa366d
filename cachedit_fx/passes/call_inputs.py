"""Which of a graph's inputs are the call's inputs, its timestep and its latent.

The in-graph step reads the call inputs (warm-up detection fingerprints them), the timestep
(generation boundaries, CFG detection) and the latent (a CFG pair repeats it). Inputs are
found by the forward argument's name as Dynamo's sources record it.
"""

from __future__ import annotations

import torch.fx as fx

from cachedit_fx.passes.dataflow import is_module_state, tensor_meta


TIMESTEP_NAMES = ("timestep", "timesteps", "t")
"""Forward argument names taken for the timestep (diffusers: ``timestep``; HiDream ``timesteps``;
Z-Image ``t``)."""
LATENT_NAMES = ("hidden_states", "x", "sample", "latents", "vision_tokens")
"""Forward argument names taken for the latent a sampler moves (a CFG pair repeats it)."""


def call_inputs(parent: fx.GraphModule) -> list[fx.Node]:
    """The graph's call inputs: tensor placeholders that are not parameters or buffers."""
    return [n for n in parent.graph.find_nodes(op="placeholder")
            if not is_module_state(n) and tensor_meta(n) is not None]


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
