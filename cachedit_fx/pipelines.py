"""One call to accelerate a diffusers pipeline, or a bare transformer, with the backend.

``compile(pipe, ...)`` compiles every DiT component (``transformer``, ``transformer_2``, ...)
with ``backend="cachedit"``; every pipeline call then starts a new generation on each (in the
caller's active ``cache_context``). Invariants:
  * the pipeline stays the same object; its class is swapped for a subclass whose ``__call__``
    refreshes first, and ``disable`` swaps it back;
  * with one transformer the refresh sets ``num_inference_steps`` to the call's step count
    (``call_steps``); with several (Wan 2.2's experts) each keeps its configured value;
  * nothing is compiled or run before the first pipeline call.
"""

from __future__ import annotations

import functools
import inspect as pyinspect
import logging
from collections.abc import Mapping
from typing import Any, Callable, Optional, TypeVar, Union

import torch
from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

from cachedit_fx.parallelism import check_no_foreign_parallelism
from cachedit_fx.block_regions import original_class, restore_block_classes, same_named_subclass, trace_blocks_once
from cachedit_fx.stored_weights import adopt_stored_weights, restore_stored_weights
from cachedit_fx.config import BACKEND_KEYS, CACHE_KEYS, CAPTURE_SETTINGS, CALIBRATOR_KEYS, PRUNE_KEYS, parse_options
from cachedit_fx.runtime.registry import cache_for_model, forget_model

__all__ = ["cached_modules", "compile", "disable", "transformer_components"]

PerComponent = Union[Any, Mapping[str, Any]]
Target = TypeVar("Target")
TORCH_COMPILE_KEYS = frozenset({"fullgraph", "dynamic"})
_COMPILED_ATTR = "_cachedit_fx_originals"
log = logging.getLogger("cachedit_fx")


def transformer_components(pipe: Any) -> dict[str, torch.nn.Module]:
    """The DiT components of a diffusers pipeline: ``nn.Module`` components named
    ``transformer`` or ``transformer_<k>``, in name order."""
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        raise TypeError(f"{type(pipe).__name__} is neither an nn.Module nor a diffusers pipeline")
    found = {name: module for name, module in sorted(components.items())
             if isinstance(module, torch.nn.Module) and (name == "transformer" or name.startswith("transformer_"))}
    if not found:
        raise ValueError(f"{type(pipe).__name__} has no transformer component to compile "
                         f"(components: {sorted(components)})")
    return found


def cached_modules(target: Any) -> list[torch.nn.Module]:
    """The modules whose caches the public API reads for ``target``: a module itself, or the
    transformer components of a pipeline."""
    return [target] if isinstance(target, torch.nn.Module) else list(transformer_components(target).values())


def compile(target: Target, cache_config: PerComponent = None, calibrator_config: PerComponent = None,
            **kwargs: Any) -> Target:
    """Compile ``target`` (a pipeline or a transformer) with the cachedit backend; returns the
    pipeline itself (now caching) or the compiled transformer. ``cache_config`` /
    ``calibrator_config``: one for every transformer, or a mapping by component name. ``kwargs``:
    ``fullgraph`` and ``dynamic`` go to ``torch.compile``; ``trace_blocks_once=True`` marks each
    transformer's blocks first; every other key is a backend option. Offloading and layerwise
    casting hooks are adopted (``adopt_stored_weights``) so each transformer traces whole."""
    compile_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in TORCH_COMPILE_KEYS}
    mark_blocks = kwargs.pop("trace_blocks_once", False)
    if not isinstance(mark_blocks, bool):
        raise ValueError(f"trace_blocks_once must be True or False, got {mark_blocks!r}")
    known = BACKEND_KEYS | CACHE_KEYS | CALIBRATOR_KEYS | PRUNE_KEYS
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown cachedit_fx.compile argument(s) {unknown}; torch.compile keys: "
                         f"{sorted(TORCH_COMPILE_KEYS)}, trace_blocks_once, backend options: {sorted(known)}")
    configs = {"cache_config": cache_config, "calibrator_config": calibrator_config}
    if isinstance(target, torch.nn.Module):
        return _compile_module(target, _options_for("transformer", kwargs, configs), compile_kwargs, mark_blocks)
    if getattr(target, _COMPILED_ATTR, None):
        raise ValueError(f"{type(target).__name__} is already compiled by cachedit_fx; call cachedit_fx.disable first")
    components = transformer_components(target)
    for config in configs.values():
        foreign = sorted(set(config) - set(components)) if isinstance(config, Mapping) else []
        if foreign:
            raise ValueError(f"configs given for {foreign}, which are not transformer components of "
                             f"{type(target).__name__} ({sorted(components)})")
    for name, module in components.items():
        setattr(target, name, _compile_module(module, _options_for(name, kwargs, configs), compile_kwargs, mark_blocks))
    setattr(target, _COMPILED_ATTR, components)
    target.__class__ = _refreshing_class(type(target))
    return target


def disable(target: Any) -> Any:
    """Undo ``compile``: a pipeline gets its original transformers and class back (and is
    returned); a compiled transformer returns its original module."""
    if isinstance(target, torch.nn.Module):
        return _uncompiled_module(getattr(target, "_orig_mod", target))
    originals = getattr(target, _COMPILED_ATTR, None)
    if not originals:
        raise ValueError(f"{type(target).__name__} was not compiled by cachedit_fx.compile")
    for name, module in originals.items():
        setattr(target, name, _uncompiled_module(module))
    delattr(target, _COMPILED_ATTR)
    target.__class__ = original_class(target)
    return target


def _uncompiled_module(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with its cache state freed, its stored weights and block classes restored."""
    forget_model(module)
    restore_stored_weights(module)
    return restore_block_classes(module)


def _options_for(name: str, options: dict[str, Any], configs: dict[str, PerComponent]) -> dict[str, Any]:
    """``options`` plus the configs given for component ``name`` (one for all, or a mapping by name)."""
    picked = {key: config.get(name) if isinstance(config, Mapping) else config for key, config in configs.items()}
    return {**options, **{key: config for key, config in picked.items() if config is not None}}


def _compile_module(module: torch.nn.Module, module_options: dict[str, Any], compile_kwargs: dict[str, Any],
                    mark_blocks: bool) -> torch.nn.Module:
    if hasattr(module, "_orig_mod"):
        raise ValueError(f"{type(module._orig_mod).__name__} is already compiled; pass the original module")
    check_no_foreign_parallelism(module)
    settings = parse_options(module_options)  # every option and config field checked now, not at the first call
    module_options.update(cache_config=settings.cache, calibrator_config=settings.calibrator)  # frozen copies
    if mark_blocks:
        trace_blocks_once(module)
    adopted = adopt_stored_weights(module)
    if adopted:
        log.info("cachedit: diffusers' layerwise casting / group offloading of %d modules adopted as stored weights", adopted)
    cache_for_model(module, create=True)
    compiled = torch.compile(module, backend="cachedit", options=module_options, **compile_kwargs)
    compiled.forward = traced_with_capture_settings(compiled.forward, module)
    return compiled


def traced_with_capture_settings(call: Callable[..., Any], module: Optional[torch.nn.Module] = None
                                 ) -> Callable[..., Any]:
    """``call`` with Dynamo tracing under ``CAPTURE_SETTINGS``: data-dependent ops (``nonzero``,
    masks, ``.item()``) stay in the graph instead of breaking it, so a chain using them is captured
    whole. Where Dynamo cannot trace a captured scalar and raises (Qwen-Image 2.1), the call runs
    again without scalar capture (logged). After any call that raises, ``module`` recovers
    (``recover_from_failed_call``) before the error propagates."""
    settings = dict(CAPTURE_SETTINGS)

    @functools.wraps(call)
    def traced(*args: Any, **kwargs: Any) -> Any:
        try:
            with torch._dynamo.config.patch(**settings):
                return call(*args, **kwargs)
        except BaseException as error:
            recover_from_failed_call(module)
            if not (isinstance(error, GuardOnDataDependentSymNode) and settings.get("capture_scalar_outputs")):
                raise
            log.warning("cachedit: Dynamo cannot trace a captured scalar (%s); tracing again without "
                        "capture_scalar_outputs", str(error).splitlines()[0])
            settings["capture_scalar_outputs"] = False
            return traced(*args, **kwargs)

    return traced


def recover_from_failed_call(module: Optional[torch.nn.Module]) -> None:
    """Leave no trace of a call of ``module`` that raised: Dynamo's mark that runs the class's
    ``forward`` frame (and a decorator's wrapper, shared between diffusers classes) eagerly until
    ``torch._dynamo.reset()`` is cleared, keeping what it compiled for other models; the active
    context starts a new generation (graphs of the failed call may have run)."""
    if module is None:
        return
    from torch._C._dynamo.eval_frame import set_code_exec_strategy
    from torch._dynamo.convert_frame import compile_lock
    from torch._dynamo.types import FrameAction, FrameExecStrategy

    forward = type(module).forward
    with compile_lock:
        for code in {forward.__code__, pyinspect.unwrap(forward).__code__}:
            set_code_exec_strategy(code, FrameExecStrategy(FrameAction.DEFAULT, FrameAction.DEFAULT))
    cache = cache_for_model(module, create=True)
    if cache.bound is not None:
        cache.refresh(cache.active_name())


def _refreshing_class(cls: type) -> type:
    """A subclass of pipeline class ``cls`` (same name) whose calls start a new generation;
    pickled, the pipeline is its original class with its original transformers."""

    def namespace() -> dict[str, Any]:
        signature = pyinspect.signature(cls.__call__)

        def __call__(self: Any, *args: Any, **kwargs: Any) -> Any:
            _start_generation(self, signature, args, kwargs)
            return cls.__call__(self, *args, **kwargs)

        return {"__call__": __call__}

    return same_named_subclass(cls, "cachedit_fx.compile", namespace, pickled_state=_uncompiled_state)


def _uncompiled_state(state: dict[str, Any]) -> dict[str, Any]:
    state.update(state.pop(_COMPILED_ATTR, {}))
    return state


def _start_generation(pipe: Any, signature: pyinspect.Signature, args: tuple, kwargs: dict) -> None:
    originals: dict[str, torch.nn.Module] = getattr(pipe, _COMPILED_ATTR)
    steps = call_steps(signature, pipe, args, kwargs) if len(originals) == 1 else None
    for module in originals.values():
        cache = cache_for_model(module, create=True)
        cache.refresh(cache.active_name(), num_inference_steps=steps)


def call_steps(signature: pyinspect.Signature, pipe: Any, args: tuple, kwargs: dict) -> Optional[int]:
    """The denoising step count of one pipeline call: the length of explicit ``timesteps`` or
    ``sigmas``, else ``num_inference_steps`` (given or the signature's default)."""
    bound = signature.bind_partial(pipe, *args, **kwargs)
    bound.apply_defaults()
    for schedule in ("timesteps", "sigmas"):
        values = bound.arguments.get(schedule)
        if values is not None:
            return len(values)
    steps = bound.arguments.get("num_inference_steps")
    return int(steps) if isinstance(steps, int) else None
