"""diffusers' layerwise casting (``enable_layerwise_casting``: weights stored in a low-precision
dtype, cast to the compute dtype around each layer's forward) in a form Dynamo traces whole.

diffusers casts with module hooks (``module.to(compute)`` before each forward, back after),
which Dynamo cannot trace: every layer becomes a graph of its own and no graph holds a block
chain. ``adopt_layerwise_casting`` removes those hooks and wraps each weight they cast in a
``CastOnUse`` tensor: its data stays in the storage dtype, it presents the compute dtype, and
every op it enters sees ``data.to(compute)``. The arithmetic is the hook's (the same
round-trip through the storage dtype, the same ops), but the cast is traced into the graph,
where the compiler fuses it into the consumer, and a skipped block's weights are never cast.

Invariants: only modules holding a ``LayerwiseCastingHook`` change; their parameters stay
``nn.Parameter`` objects (without gradient) of the storage dtype's data; ``restore_layerwise_casting``
puts the hooks back on the same modules, with plain parameters in the storage dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils._pytree import tree_map_only

HOOK_NAME = "layerwise_casting"
"""The name diffusers registers its ``LayerwiseCastingHook`` under."""
ADOPTED_ATTR = "_cachedit_layerwise_casting"
"""Set on a module whose hook was adopted: the hook's (storage dtype, compute dtype, non_blocking)."""


class CastOnUse(torch.Tensor):
    """A weight stored as ``stored`` (any dtype) that behaves as ``stored.to(compute_dtype)`` in
    every op (views and detach keep it wrapped). A traceable wrapper subclass: Dynamo and
    AOTAutograd see its stored data as the graph input and the cast as a graph op."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, stored: torch.Tensor, compute_dtype: torch.dtype) -> "CastOnUse":
        return torch.Tensor._make_wrapper_subclass(cls, stored.shape, strides=stored.stride(), dtype=compute_dtype,
                                                   device=stored.device, requires_grad=False)

    def __init__(self, stored: torch.Tensor, compute_dtype: torch.dtype) -> None:
        self.stored = stored
        self.compute_dtype = compute_dtype

    def __repr__(self) -> str:
        return f"CastOnUse(stored={self.stored.dtype}, compute={self.compute_dtype}, shape={tuple(self.shape)})"

    def __tensor_flatten__(self) -> tuple[list[str], torch.dtype]:
        return ["stored"], self.compute_dtype

    @staticmethod
    def __tensor_unflatten__(inner: dict[str, torch.Tensor], compute_dtype: torch.dtype, outer_size: Any,
                             outer_stride: Any) -> "CastOnUse":
        return CastOnUse(inner["stored"], compute_dtype)

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _KEEPS_WRAPPED:
            first = args[0]
            return CastOnUse(func(first.stored, *args[1:], **kwargs), first.compute_dtype)
        return func(*tree_map_only(CastOnUse, _compute, args), **tree_map_only(CastOnUse, _compute, kwargs))


def _compute(value: CastOnUse) -> torch.Tensor:
    return value.stored.to(value.compute_dtype)


_KEEPS_WRAPPED = {torch.ops.aten.detach.default, torch.ops.aten.alias.default, torch.ops.aten.clone.default}


def adopt_layerwise_casting(model: torch.nn.Module) -> int:
    """Replace every ``LayerwiseCastingHook`` in ``model`` by ``CastOnUse`` weights; returns
    how many modules changed (0: the model has none)."""
    changed = 0
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(HOOK_NAME) if registry is not None else None
        if hook is None:
            continue
        hook.deinitalize_hook = lambda held: held  # diffusers refuses to undo the storage cast; it stays
        registry.remove_hook(HOOK_NAME, recurse=False)
        module.to(dtype=hook.storage_dtype)  # where the hook leaves weights between forwards
        for name, param in list(module.named_parameters(recurse=False)):
            module._parameters[name] = torch.nn.Parameter(CastOnUse(param.data, hook.compute_dtype),
                                                          requires_grad=False)
        setattr(module, ADOPTED_ATTR, (hook.storage_dtype, hook.compute_dtype, hook.non_blocking))
        changed += 1
    return changed


def restore_layerwise_casting(model: torch.nn.Module) -> None:
    """Undo ``adopt_layerwise_casting``: plain weights in the storage dtype, diffusers' hooks back."""
    from diffusers.hooks.hooks import HookRegistry
    from diffusers.hooks.layerwise_casting import LayerwiseCastingHook

    for module in model.modules():
        adopted = module.__dict__.pop(ADOPTED_ATTR, None)
        if adopted is None:
            continue
        storage, compute, non_blocking = adopted
        for name, param in list(module.named_parameters(recurse=False)):
            if isinstance(param, CastOnUse):
                module._parameters[name] = torch.nn.Parameter(param.stored, requires_grad=False)
        HookRegistry.check_if_exists_or_initialize(module).register_hook(
            LayerwiseCastingHook(storage, compute, non_blocking), HOOK_NAME)
