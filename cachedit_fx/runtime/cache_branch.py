"""The module the ``insert_cache_branch`` pass puts in place of the middle piece."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from cachedit_fx.runtime.state import ModelCacheState


@dataclass(frozen=True)
class BranchSpec:
    """Layout of the branch's arguments: ``(x0, hF, *signature_inputs, *middle_inputs)``.

    ``timestep_index`` indexes ``signature_inputs`` (-1: the graph has no timestep input);
    ``partner_positions[k]`` indexes ``middle_inputs``: the head value that middle output k
    continues.
    """

    num_signature_inputs: int
    timestep_index: int
    partner_positions: tuple[int, ...]


class CacheBranch(torch.nn.Module):
    """Guarded branch: runs ``middle`` or applies the stored middle residuals."""

    def __init__(self, middle: Any, state: ModelCacheState, spec: BranchSpec) -> None:
        super().__init__()
        self.middle = middle
        self.state = state
        self.spec = spec

    def forward(self, hidden_entry: torch.Tensor, hidden_cut: torch.Tensor, *rest: torch.Tensor):
        spec = self.spec
        signature_inputs = rest[: spec.num_signature_inputs]
        middle_inputs = rest[spec.num_signature_inputs :]
        return self.state.run_middle(
            self.middle,
            middle_inputs,
            partners=[middle_inputs[i] for i in spec.partner_positions],
            hidden_entry=hidden_entry,
            hidden_cut=hidden_cut,
            signature_inputs=signature_inputs,
            timestep=signature_inputs[spec.timestep_index] if spec.timestep_index >= 0 else None,
        )
