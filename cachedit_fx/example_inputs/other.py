"""Transformer classes of ``diffusers.models.transformers`` outside image and video DiTs
(audio DiTs, priors, temporal layers of UNets, ...): specs where they are denoising DiTs with a
repeated block list, and the reason where they are left out of coverage."""

from __future__ import annotations

from cachedit_fx.example_inputs.common import ClassSpec

SPECS: dict[str, ClassSpec] = {}

NOT_COVERED: dict[str, str] = {}
"""Class name -> why it is not a DiT this backend targets."""
