"""Modules the rewrite passes wire into the piecewise program: the guarded ``CacheBranch``
in place of the middle piece, and the ``PrevResidualSource`` that feeds the head piece the
stream's previous Fn residual when the head computes the diff."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from cachedit_fx.runtime.cache_selector import refuse_gradients
from cachedit_fx.runtime.state import ModelCacheState


@dataclass(frozen=True)
class BranchSpec:
    """Layout of the branch's arguments: ``(x0, hF, *signature_inputs, *partners, *middle_inputs)``.

    ``timestep_index`` / ``latent_index`` index ``signature_inputs`` (-1: the graph has no
    timestep / no input named like a latent);
    ``partners[k]`` is the head value that middle output k continues (its source at the cut);
    ``hidden_position`` is the k of the hidden stream.
    """

    num_signature_inputs: int
    timestep_index: int
    latent_index: int
    num_partners: int
    hidden_position: int


class CacheBranch(torch.nn.Module):
    """Guarded branch: runs the middle piece (``self.piece``) or applies the stored middle
    residuals."""

    def __init__(self, middle: Any, spec: BranchSpec) -> None:
        super().__init__()
        self.piece = middle
        self.spec = spec

    def forward(
        self, state: ModelCacheState, hidden_entry: torch.Tensor, hidden_cut: torch.Tensor, *rest: torch.Tensor,
        head_sums: Optional[torch.Tensor] = None,
    ):
        refuse_gradients((hidden_entry, hidden_cut, *rest))
        spec = self.spec
        signature_inputs = rest[: spec.num_signature_inputs]
        partners = rest[spec.num_signature_inputs : spec.num_signature_inputs + spec.num_partners]
        middle_inputs = rest[spec.num_signature_inputs + spec.num_partners :]
        return state.run_middle(
            self.piece,
            middle_inputs,
            partners=partners,
            hidden_entry=hidden_entry,
            hidden_cut=hidden_cut,
            signature_inputs=signature_inputs,
            timestep=signature_inputs[spec.timestep_index] if spec.timestep_index >= 0 else None,
            hidden_position=spec.hidden_position,
            head_sums=head_sums,
            latent_index=spec.latent_index,
        )


class PrevResidualSource(torch.nn.Module):
    """Returns the owned previous-Fn-residual buffer of the stream the coming call uses,
    shaped like the head's ``hF`` (a fresh, invalid buffer if the stream's does not fit)."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> None:
        super().__init__()
        self.shape = torch.Size(shape)
        self.dtype = dtype
        self.device = device

    def forward(self, state: ModelCacheState) -> torch.Tensor:
        stream = state.upcoming_stream()
        state.head_sums_stream = stream.name
        return stream.fn_residual.buffer_for(self.shape, self.dtype, self.device)
