"""Weights stored apart from how they compute, traced whole: diffusers' layerwise casting
(``enable_layerwise_casting``: low-precision storage) and group offloading
(``enable_group_offload`` / ``apply_group_offloading``: storage on the offload device).

diffusers implements both with module hooks (``module.to(...)`` before each forward, back
after), which Dynamo cannot trace: every layer or group becomes a graph of its own and no graph
holds a block chain. ``adopt_stored_weights`` removes those hooks and wraps each weight they
manage in a ``StoredWeight``: its data stays where and as it is stored, it presents the compute
dtype and device, and every op it enters sees the weight fetched to the compute device
(``cachedit_fx::fetch_weight``, which counts the bytes it moves) and cast to the compute
dtype. The arithmetic is the hooks' (the same round trip through the storage dtype), but the
fetch and the cast are traced into the graph: inside the cached branch, so **the weights of
blocks skipped on a cached step are never fetched**.

Invariants: only modules holding such a hook change; their parameters stay ``nn.Parameter``
objects (without gradient) wrapping the stored data. Offloaded, the weights of the block lists
(``nn.ModuleList`` children) stay on the offload device and are fetched at each use; the rest
of the model (embedders, final norm: small) and every buffer move to the compute device once.
``restore_stored_weights`` puts the hooks back with plain parameters as stored.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import torch
from torch.utils._pytree import tree_map_only

CASTING_HOOK = "layerwise_casting"
OFFLOAD_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")
"""The names diffusers registers its hooks under."""
ADOPTED_ATTR = "_cachedit_stored_weights"
"""Set on a model whose hooks were adopted: how to put them back."""


class StoredWeight(torch.Tensor):
    """A weight stored as ``stored`` (any dtype, any device) that behaves as ``stored`` fetched
    to ``device`` (when ``fetch``) and cast to ``dtype`` in every op; views and detach keep it
    wrapped. A traceable wrapper subclass: Dynamo and AOTAutograd see the stored data as the
    graph input and the fetch and cast as graph ops."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, stored: torch.Tensor, dtype: torch.dtype, device: torch.device, fetch: bool) -> "StoredWeight":
        return torch.Tensor._make_wrapper_subclass(cls, stored.shape, strides=stored.stride(), dtype=dtype,
                                                   device=device, requires_grad=False)

    def __init__(self, stored: torch.Tensor, dtype: torch.dtype, device: torch.device, fetch: bool) -> None:
        self.stored = stored
        self.compute = (dtype, torch.device(device), fetch)

    def __repr__(self) -> str:
        dtype, device, fetch = self.compute
        return (f"StoredWeight(stored={self.stored.dtype} on {self.stored.device}, compute={dtype} on {device}"
                f"{', fetched' if fetch else ''}, shape={tuple(self.shape)})")

    def __tensor_flatten__(self) -> tuple[list[str], tuple[torch.dtype, torch.device, bool]]:
        return ["stored"], self.compute

    @staticmethod
    def __tensor_unflatten__(inner: dict[str, torch.Tensor], compute: tuple[torch.dtype, torch.device, bool],
                             outer_size: Any, outer_stride: Any) -> "StoredWeight":
        return StoredWeight(inner["stored"], *compute)

    @classmethod
    def __torch_dispatch__(cls, func: Any, types: Any, args: tuple = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func in _KEEPS_WRAPPED:
            first = args[0]
            return StoredWeight(func(first.stored, *args[1:], **kwargs), *first.compute)
        return func(*tree_map_only(StoredWeight, _in_use, args), **tree_map_only(StoredWeight, _in_use, kwargs))


_KEEPS_WRAPPED = {torch.ops.aten.detach.default, torch.ops.aten.alias.default, torch.ops.aten.clone.default}


def _in_use(weight: StoredWeight) -> torch.Tensor:
    dtype, device, fetch = weight.compute
    value = torch.ops.cachedit_fx.fetch_weight(weight.stored, device) if fetch else weight.stored
    return value.to(dtype)


class _Fetched(threading.local):
    bytes = 0


_FETCHED = _Fetched()


@torch.library.custom_op("cachedit_fx::fetch_weight", mutates_args=())
def fetch_weight(stored: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``stored`` copied to ``device`` (a copy even on its own device, so every fetch is
    counted alike), its bytes added to ``fetched_bytes``."""
    _FETCHED.bytes += stored.numel() * stored.element_size()
    return stored.to(device, copy=True, non_blocking=stored.device.type == "cpu" and device.type == "cuda")


@fetch_weight.register_fake
def _(stored: torch.Tensor, device: torch.device) -> torch.Tensor:
    return torch.empty_like(stored, device=device)


def fetched_bytes(reset: bool = False) -> int:
    """Weight bytes fetched to the compute device by this thread since the last reset."""
    total = _FETCHED.bytes
    if reset:
        _FETCHED.bytes = 0
    return total


def adopt_stored_weights(model: torch.nn.Module) -> int:
    """Replace diffusers' layerwise-casting and group-offloading hooks in ``model`` by
    ``StoredWeight`` parameters; returns how many modules changed (0: it has none)."""
    offload = _group_offload_config(model)
    casting = {}
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(CASTING_HOOK) if registry is not None else None
        if hook is not None:
            hook.deinitalize_hook = lambda held: held  # diffusers refuses to undo the storage cast; it stays
            registry.remove_hook(CASTING_HOOK, recurse=False)
            module.to(dtype=hook.storage_dtype)
            casting[module] = hook
    if offload is not None:
        from diffusers.hooks.hooks import HookRegistry

        registry = HookRegistry.check_if_exists_or_initialize(model)
        for name in OFFLOAD_HOOKS:
            registry.remove_hook(name, recurse=True)
        model.to(offload.offload_device)
    changed = set(casting)
    in_blocks = {m for blocks in model.modules() if isinstance(blocks, torch.nn.ModuleList) for m in blocks.modules()}
    for module in model.modules():
        hook = casting.get(module)
        fetch = offload is not None and module in in_blocks
        if offload is not None and not fetch:
            module.to(offload.onload_device)  # outside the blocks: small, kept on the compute device
        if hook is None and not fetch:
            continue
        for name, param in list(module.named_parameters(recurse=False)):
            module._parameters[name] = torch.nn.Parameter(StoredWeight(
                param.data, hook.compute_dtype if hook is not None else param.dtype,
                offload.onload_device if fetch else param.device, fetch), requires_grad=False)
            changed.add(module)
        if fetch:
            for name, buffer in list(module.named_buffers(recurse=False)):
                module._buffers[name] = buffer.to(offload.onload_device)
    if changed:
        setattr(model, ADOPTED_ATTR, ({m: (h.storage_dtype, h.compute_dtype, h.non_blocking) for m, h in casting.items()},
                                      offload))
    return len(changed)


def restore_stored_weights(model: torch.nn.Module) -> None:
    """Undo ``adopt_stored_weights``: plain weights as stored, diffusers' hooks back."""
    adopted = model.__dict__.pop(ADOPTED_ATTR, None)
    if adopted is None:
        return
    casting, offload = adopted
    for module in model.modules():
        for name, param in list(module.named_parameters(recurse=False)):
            if isinstance(param, StoredWeight):
                module._parameters[name] = torch.nn.Parameter(param.stored, requires_grad=False)
    if casting:
        from diffusers.hooks.hooks import HookRegistry
        from diffusers.hooks.layerwise_casting import LayerwiseCastingHook

        for module, (storage, compute, non_blocking) in casting.items():
            HookRegistry.check_if_exists_or_initialize(module).register_hook(
                LayerwiseCastingHook(storage, compute, non_blocking), CASTING_HOOK)
    if offload is not None:
        from diffusers.hooks.group_offloading import _apply_group_offloading

        _apply_group_offloading(model, offload)


def _group_offload_config(model: torch.nn.Module) -> Optional[Any]:
    """The ``GroupOffloadingConfig`` diffusers applied to ``model`` (None: not offloaded)."""
    if not any(hasattr(m, "_diffusers_hook") for m in model.modules()):
        return None
    from diffusers.hooks.group_offloading import _get_top_level_group_offload_hook

    hook = _get_top_level_group_offload_hook(model)
    return hook.config if hook is not None else None
