"""The module the ``insert_prune_branches`` pass puts in place of each prunable block piece."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cachedit_fx.runtime.cache_selector import refuse_gradients
from cachedit_fx.runtime.state import ModelCacheState


@dataclass(frozen=True)
class PruneSpec:
    """Layout of a branch's arguments: ``(*signature_inputs, hidden_input, *block_inputs)``; only
    the first prunable block of the program receives signature inputs (``num_signature_inputs > 0``
    or ``first``). ``partner_positions[k]`` indexes ``block_inputs``: the input that block
    output k continues; ``hidden_input`` is what the block's diff compares."""

    index: int
    first: bool
    last: bool
    num_signature_inputs: int
    timestep_index: int
    latent_index: int
    partner_positions: tuple[int, ...]


class PruneBranch(torch.nn.Module):
    """Guarded branch of one prunable block: runs the block piece (``self.piece``) or applies
    the block's stored residuals."""

    def __init__(self, piece: Any, spec: PruneSpec) -> None:
        super().__init__()
        self.piece = piece
        self.spec = spec

    def forward(self, state: ModelCacheState, *args: torch.Tensor):
        refuse_gradients(args)
        spec = self.spec
        signature_inputs = args[: spec.num_signature_inputs]
        hidden_input = args[spec.num_signature_inputs]
        block_inputs = args[spec.num_signature_inputs + 1 :]
        return state.run_block(
            spec.index,
            self.piece,
            block_inputs,
            partners=[block_inputs[i] for i in spec.partner_positions],
            hidden_input=hidden_input,
            first=spec.first,
            last=spec.last,
            signature_inputs=signature_inputs,
            timestep=signature_inputs[spec.timestep_index] if spec.first and spec.timestep_index >= 0 else None,
            latent_index=spec.latent_index,
        )
