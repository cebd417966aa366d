"""Weights stored apart from how they compute, traced whole: diffusers' layerwise casting,
group offloading and sequential CPU offload (accelerate's ``cpu_offload``).

Their module hooks (``module.to(...)`` around each forward) split every layer into a graph of its
own. ``adopt_stored_weights`` removes them and wraps each weight they manage in a
``StoredWeight``: its data stays as stored, and every op it enters sees it fetched to the compute
device (``cachedit_fx::fetch_weight``, ``runtime/weight_fetch.py``) and cast to the compute dtype,
traced into the graph: **the weights of blocks skipped on a cached step are never fetched**.

Invariants: only modules holding such a hook change; their parameters stay ``nn.Parameter``
objects (without gradient). Offloaded, the weights of the block lists (``nn.ModuleList``
children) stay on the offload device; the rest of the model and every buffer move to the compute
device once. ``restore_stored_weights`` puts the hooks back with plain parameters as stored.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch.utils._pytree import tree_map_only

from cachedit_fx.runtime.weight_fetch import fetch_weight

CASTING_HOOK = "layerwise_casting"
OFFLOAD_HOOKS = ("group_offloading", "layer_execution_tracker", "lazy_prefetch_group_offloading")
"""The names diffusers registers its hooks under."""
ADOPTED_ATTR = "_cachedit_stored_weights"
"""Set on a model whose hooks were adopted: how to put them back."""


class StoredWeight(torch.Tensor):
    """A weight stored as ``stored`` (any dtype and device) that behaves as ``stored`` fetched to
    ``device`` (when it has a fetch ``group``) and cast to ``dtype`` in every op; detach, alias and
    clone keep it wrapped. Traceable: Dynamo sees the stored data as the graph input."""

    __torch_function__ = torch._C._disabled_torch_function_impl

    @staticmethod
    def __new__(cls, stored: torch.Tensor, dtype: torch.dtype, device: torch.device,
                group: Optional[int]) -> "StoredWeight":
        return torch.Tensor._make_wrapper_subclass(cls, stored.shape, strides=stored.stride(), dtype=dtype,
                                                   device=device, requires_grad=False)

    def __init__(self, stored: torch.Tensor, dtype: torch.dtype, device: torch.device, group: Optional[int]) -> None:
        self.stored = stored
        self.compute = (dtype, torch.device(device), group)

    def __repr__(self) -> str:
        dtype, device, group = self.compute
        return (f"StoredWeight(stored={self.stored.dtype} on {self.stored.device}, compute={dtype} on {device}"
                f"{'' if group is None else f', fetched (group {group})'}, shape={tuple(self.shape)})")

    def _stable_hash_for_caching(self) -> str:
        """What AOTAutograd's cache key holds for this weight: its layout, stored and as computed."""
        stored, (dtype, device, group) = self.stored, self.compute
        return (f"StoredWeight({stored.dtype},{tuple(stored.shape)},{stored.stride()},{stored.device.type},"
                f"{dtype},{device},{group})")

    def __tensor_flatten__(self) -> tuple[list[str], tuple[torch.dtype, torch.device, Optional[int]]]:
        return ["stored"], self.compute

    @staticmethod
    def __tensor_unflatten__(inner: dict[str, torch.Tensor], compute: tuple[torch.dtype, torch.device, Optional[int]],
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
    dtype, device, group = weight.compute
    value = weight.stored if group is None else fetch_weight(weight.stored, device, group)
    return value.to(dtype)


def adopt_stored_weights(model: torch.nn.Module) -> int:
    """Replace the layerwise-casting, group-offloading and sequential CPU offload hooks in ``model``
    by ``StoredWeight`` parameters; returns how many modules changed (0: it has none)."""
    casting = _remove_casting_hooks(model)
    offload = _remove_group_offloading(model) or _remove_sequential_offload(model)
    groups = _fetch_groups(model) if offload is not None else {}
    changed = set(casting)
    for module in model.modules():
        hook, group = casting.get(module), groups.get(module)  # a group implies an offload
        for name, param in list(module.named_parameters(recurse=False)):
            stored = param.data if offload is None else offload.stored(module, name, param.data)
            if offload is not None and group is None:  # outside the blocks: small, kept on the compute device
                stored = stored.to(offload.device)
            elif group is not None and offload.device.type == "cuda" and stored.device.type == "cpu":
                stored = stored.pin_memory()  # copies to the GPU overlap compute only from pinned memory
            if hook is not None or group is not None:
                stored = StoredWeight(stored, hook.compute_dtype if hook is not None else stored.dtype,
                                      offload.device if group is not None else stored.device, group)
                changed.add(module)
            if hook is not None or offload is not None:
                module._parameters[name] = torch.nn.Parameter(stored, requires_grad=False)
        if offload is not None:
            for name, buffer in list(module.named_buffers(recurse=False)):
                module._buffers[name] = offload.stored(module, name, buffer).to(offload.device)
    if changed:
        setattr(model, ADOPTED_ATTR, (casting, offload))
    return len(changed)


def restore_stored_weights(model: torch.nn.Module) -> None:
    """Undo ``adopt_stored_weights``: plain weights as stored, the hooks back."""
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

        for module, hook in casting.items():
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, CASTING_HOOK)
    if offload is not None:
        offload.restore()


_GROUPS = itertools.count()


def _fetch_groups(model: torch.nn.Module) -> dict[torch.nn.Module, int]:
    """Each module inside a block list, by the fetch group of its block (a new number per block:
    the unit that ``runtime/weight_fetch.py`` prefetches)."""
    groups: dict[torch.nn.Module, int] = {}
    for blocks in model.modules():
        if isinstance(blocks, torch.nn.ModuleList) and blocks not in groups:
            for block in blocks:
                group = next(_GROUPS)
                for module in block.modules():
                    groups.setdefault(module, group)
    return groups


class _Offload(NamedTuple):
    """A removed offloading: the compute ``device``, ``stored(module, name, tensor)`` (where a
    tensor of ``module`` is kept, on the offload device) and ``restore()`` (the hooks back)."""

    device: torch.device
    stored: Callable[[torch.nn.Module, str, torch.Tensor], torch.Tensor]
    restore: Callable[[], None]


def _remove_casting_hooks(model: torch.nn.Module) -> dict[torch.nn.Module, Any]:
    """diffusers' layerwise-casting hooks removed, by module; the weights stay in the storage dtype."""
    casting = {}
    for module in model.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = registry.get_hook(CASTING_HOOK) if registry is not None else None
        if hook is not None:
            hook.deinitalize_hook = lambda held: held  # diffusers refuses to undo the storage cast; it stays
            registry.remove_hook(CASTING_HOOK, recurse=False)
            del hook.deinitalize_hook
            module.to(dtype=hook.storage_dtype)
            casting[module] = hook
    return casting


def _remove_group_offloading(model: torch.nn.Module) -> Optional[_Offload]:
    """diffusers' group offloading removed (None: ``model`` has none); every tensor is then on
    the offload device."""
    if not any(hasattr(m, "_diffusers_hook") for m in model.modules()):
        return None
    from diffusers.hooks.group_offloading import _apply_group_offloading, _get_top_level_group_offload_hook
    from diffusers.hooks.hooks import HookRegistry

    top = _get_top_level_group_offload_hook(model)
    if top is None:
        return None
    config = top.config
    registry = HookRegistry.check_if_exists_or_initialize(model)
    for name in OFFLOAD_HOOKS:
        registry.remove_hook(name, recurse=True)
    model.to(config.offload_device)
    return _Offload(torch.device(config.onload_device), lambda module, name, tensor: tensor,
                    lambda: _apply_group_offloading(model, config))


def _remove_sequential_offload(model: torch.nn.Module) -> Optional[_Offload]:
    """accelerate's ``cpu_offload`` (``enable_sequential_cpu_offload``) removed (None: ``model`` has
    none); offloaded tensors are read from its CPU weights map, never moved back."""
    hooks = {m: m._hf_hook for m in model.modules() if hasattr(m, "_hf_hook")}
    aligns = {m: h for m, hook in hooks.items() for h in getattr(hook, "hooks", [hook])
              if type(h).__name__ == "AlignDevicesHook" and h.offload}
    if not aligns:
        return None
    from accelerate.hooks import add_hook_to_module, remove_hook_from_module

    device = torch.device(next(iter(aligns.values())).execution_device)
    stored = {}
    for module, align in aligns.items():
        for name, tensor in list(module.named_parameters(recurse=align.place_submodules)) + list(
                module.named_buffers(recurse=align.place_submodules)):
            owner, _, leaf = name.rpartition(".")
            stored[(module.get_submodule(owner), leaf)] = align.weights_map[name] if name in align.weights_map else tensor
        align.detach_hook = lambda held: held  # the weights stay where they are stored
    for module in hooks:
        remove_hook_from_module(module)
    for align in aligns.values():
        del align.detach_hook

    def restore() -> None:
        for module, hook in hooks.items():
            add_hook_to_module(module, hook)

    return _Offload(device, lambda module, name, tensor: stored.get((module, name), tensor), restore)
