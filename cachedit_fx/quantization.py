"""Weight quantization of a DiT before compiling it with the ``cachedit`` backend: a thin
wrapper over ``torchao.quantization.quantize_`` (torchao >= 0.18, the ``full`` extra)::

    cachedit_fx.quantize(transformer, "int8_dynamic")       # in place, before torch.compile
    transformer = torch.compile(transformer, backend="cachedit", options={...})

Schemes (``SCHEMES``; the weights become torchao tensor subclasses Dynamo traces into the graph):
``int8_weight_only``, ``int8_dynamic`` (int8 activations too), ``float8_weight_only`` (a memory
saving; runs on CPU) and ``float8_dynamic`` (``torch._scaled_mm``: CUDA compute capability >= 8.9,
AMD MI300+ or an Intel XPU). Invariants:
  * the module (or a ``torch.compile`` wrapper's ``_orig_mod``) is quantized in place and
    returned; quantizing after the first compiled call recompiles and starts a new generation;
  * only ``nn.Linear`` layers change, of the shapes the scheme's kernel accepts (in/out features
    multiples of 8 for int8_dynamic, of 16 for float8_dynamic); ``filter_fn(module, fqn)``
    replaces that default filter entirely;
  * torchao's global Inductor config tweaks are not applied;
  * an unknown scheme raises ``ValueError``, a missing torchao ``ImportError``, float8 dynamic
    quantization on unsupported hardware ``RuntimeError``: all before any weight is changed.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch
from torch import nn

FilterFn = Callable[[nn.Module, str], bool]

SCHEMES: dict[str, str] = {
    "int8_weight_only": "Int8WeightOnlyConfig",
    "int8_dynamic": "Int8DynamicActivationInt8WeightConfig",
    "float8_weight_only": "Float8WeightOnlyConfig",
    "float8_dynamic": "Float8DynamicActivationFloat8WeightConfig",
}
"""scheme name -> torchao.quantization config class name."""

_FEATURE_MULTIPLE = {"int8_dynamic": 8, "float8_dynamic": 16}
"""Schemes whose kernels need in/out features to be multiples of this; others accept any shape."""


def quantize(module: nn.Module, scheme: str, *, filter_fn: Optional[FilterFn] = None) -> nn.Module:
    """Quantize ``module``'s linear layers in place with ``scheme`` (a key of ``SCHEMES``) and return it."""
    if scheme not in SCHEMES:
        raise ValueError(f"unknown quantization scheme {scheme!r}; valid schemes: {', '.join(SCHEMES)}")
    quantization = _torchao_quantization()
    target = getattr(module, "_orig_mod", module)
    filter_fn = filter_fn or _default_filter(scheme)
    if scheme == "float8_dynamic":
        _check_float8_dynamic_support(target, filter_fn)
    config = getattr(quantization, SCHEMES[scheme])(set_inductor_config=False)
    quantization.quantize_(target, config, filter_fn=filter_fn)
    return module


def _torchao_quantization() -> Any:
    try:
        import torchao.quantization as quantization
    except ImportError as error:
        raise ImportError(
            "cachedit_fx.quantize needs torchao >= 0.18: pip install 'cachedit_fx[full]' (or pip install torchao)"
        ) from error
    return quantization


def _default_filter(scheme: str) -> FilterFn:
    from torchao.quantization.quant_api import _is_linear

    multiple = _FEATURE_MULTIPLE.get(scheme)
    if multiple is None:
        return _is_linear

    def linear_with_kernel_shape(mod: nn.Module, fqn: str = "") -> bool:
        return _is_linear(mod, fqn) and mod.in_features % multiple == 0 and mod.out_features % multiple == 0

    return linear_with_kernel_shape


def _check_float8_dynamic_support(module: nn.Module, filter_fn: FilterFn) -> None:
    """Raise ``RuntimeError`` unless the selected layers live where float8 matmuls run."""
    devices = {m.weight.device for name, m in module.named_modules() if hasattr(m, "weight") and filter_fn(m, name)}
    for device in devices:
        if device.type == "cuda":
            if torch.version.hip is not None:
                continue  # ROCm: torchao itself checks for MI300+
            capability = torch.cuda.get_device_capability(device)
            if capability < (8, 9):
                raise RuntimeError(
                    f"float8_dynamic needs a CUDA GPU with compute capability >= 8.9 (Ada/Hopper/Blackwell); "
                    f"{torch.cuda.get_device_name(device)} has {capability[0]}.{capability[1]}. "
                    "Use int8_dynamic, int8_weight_only or float8_weight_only instead.")
        elif device.type != "xpu":
            raise RuntimeError(
                f"float8_dynamic needs a CUDA GPU with compute capability >= 8.9 (or AMD MI300+, or an Intel XPU); "
                f"the layers to quantize are on {device.type!r}. Move the model to the GPU first, or use "
                "int8_dynamic, int8_weight_only or float8_weight_only (float8_weight_only runs on CPU).")
