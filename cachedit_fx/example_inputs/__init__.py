"""Synthetic forward kwargs for diffusers transformer classes, derived from a model's config alone.

``example_inputs_for(class_name, config)`` returns kwargs such that
``model(**kwargs, return_dict=False)[0]`` runs for ``model = getattr(diffusers, class_name)
.from_config(config)``. Inputs are small: 4x4 spatial patches, 2 temporal patches for video
models, 8 text tokens (unless the architecture fixes the text length), float32 on CPU, drawn
from one generator seeded with ``seed``. Timesteps follow each pipeline's convention (in [0, 1]
for Flux / QwenImage, integer-valued in [0, 1000) otherwise). Config keys the dict lacks take
the class's ``__init__`` defaults.

Each family module registers a ``ClassSpec`` per class (input builder, a tiny random-init
config, which input is the latent and which the timestep); ``tiny_model(class_name)`` builds
the tiny instance with its inputs.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from cachedit_fx.example_inputs import flux_family, image, other, sana_cosmos_kandinsky, video, wan_family
from cachedit_fx.example_inputs.common import ClassSpec

__all__ = ["ClassSpec", "NOT_COVERED", "SPECS", "SUPPORTED_CLASSES", "example_inputs_for", "resolved_config",
           "tiny_model"]

SPECS: dict[str, ClassSpec] = {}
for _family in (flux_family, wan_family, video, sana_cosmos_kandinsky, image, other):
    _clash = SPECS.keys() & _family.SPECS.keys()
    if _clash:
        raise AssertionError(f"classes registered twice: {sorted(_clash)}")
    SPECS.update(_family.SPECS)

NOT_COVERED: dict[str, str] = dict(other.NOT_COVERED)
"""Transformer classes left out of coverage, with the reason."""

SUPPORTED_CLASSES: tuple[str, ...] = tuple(sorted(SPECS))


def _model_class(class_name: str) -> type:
    import diffusers

    return getattr(diffusers, class_name)


def resolved_config(class_name: str, config: dict[str, Any]) -> dict[str, Any]:
    """``config`` over the ``__init__`` defaults of ``diffusers.<class_name>``; private keys dropped."""
    parameters = inspect.signature(_model_class(class_name).__init__).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**defaults, **{key: value for key, value in config.items() if not key.startswith("_")}}


def example_inputs_for(class_name: str, config: dict[str, Any], *, seed: int = 0, batch: int = 1) -> dict[str, Any]:
    """Forward kwargs (without ``return_dict``) for ``diffusers.<class_name>`` built from ``config``.

    Same ``seed`` and arguments give identical tensors. Raises ValueError for unsupported classes."""
    if class_name not in SPECS:
        raise ValueError(f"no example inputs for {class_name!r}; supported: {', '.join(SUPPORTED_CLASSES)}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    cfg = resolved_config(class_name, config)
    gen = torch.Generator().manual_seed(seed)
    return SPECS[class_name].inputs(cfg, gen, batch)


def tiny_model(class_name: str, seed: int = 0, batch: int = 1) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The class built from its spec's tiny config (weights seeded with ``seed``, eval mode) and
    example inputs for it."""
    if class_name not in SPECS:
        raise ValueError(f"no spec for {class_name!r}; supported: {', '.join(SUPPORTED_CLASSES)}")
    torch.manual_seed(seed)
    model = _model_class(class_name)(**SPECS[class_name].tiny_config).eval()
    return model, example_inputs_for(class_name, dict(model.config), seed=seed, batch=batch)
