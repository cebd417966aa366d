"""One call to accelerate a diffusers pipeline, or a bare transformer, with the backend.

``compile(pipe, cache_config=..., calibrator_config=..., **kwargs)`` compiles every DiT
component of the pipeline (``transformer``, ``transformer_2``, ...) with
``backend="cachedit"`` and makes every pipeline call start a new generation on each of them
(in the caller's active ``cache_context``). Invariants:
  * the pipeline object stays the same object; only its class is swapped for a subclass
    whose ``__call__`` refreshes first, and ``disable`` swaps it back;
  * with one transformer, the refresh sets ``num_inference_steps`` to the call's step count
    (``len(timesteps)`` / ``len(sigmas)`` when given, else ``num_inference_steps``); with
    several (Wan 2.2's experts split the steps by a timestep boundary) each keeps its own
    configured value and the refresh alone marks the generation start;
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
from cachedit_fx.block_regions import restore_block_classes, trace_blocks_once
from cachedit_fx.stored_weights import adopt_stored_weights, restore_stored_weights
from cachedit_fx.class_swap import original_class, same_named_subclass
from cachedit_fx.config import BACKEND_KEYS, CACHE_KEYS, CAPTURE_SETTINGS, CALIBRATOR_KEYS, PRUNE_KEYS, DBCacheConfig, parse_options
from cachedit_fx.runtime.registry import cache_for_model, forget_model

__all__ = ["cached_modules", "compile", "disable", "transformer_components"]

PerComponent = Union[Any, Mapping[str, Any]]
Target = TypeVar("Target")
TORCH_COMPILE_KEYS = frozenset({"fullgraph", "dynamic"})
"""Dynamo settings ``compile`` traces under (``traced_with_capture_settings``)."""
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
    if isinstance(target, torch.nn.Module):
        return [target]
    return list(transformer_components(target).values())


def compile(target: Target, cache_config: PerComponent = None, calibrator_config: PerComponent = None,
            **kwargs: Any) -> Target:
    """Compile ``target`` (a pipeline or a transformer) with the cachedit backend.

    ``cache_config`` / ``calibrator_config``: one config for every transformer, or a mapping
    from component name (``"transformer"``, ``"transformer_2"``) to its own. ``kwargs``:
    ``fullgraph`` and ``dynamic`` go to ``torch.compile``; ``trace_blocks_once=True`` applies
    ``cachedit_fx.trace_blocks_once`` to each transformer first; diffusers' layerwise casting
    and group offloading hooks are adopted (``adopt_stored_weights``) so each transformer still traces whole; every other key is a backend
    option (``residual_diff_threshold``, ``inner_backend``, ``mode``, ...). Returns the
    pipeline itself (now caching), or the compiled transformer."""
    compile_kwargs = {k: kwargs.pop(k) for k in list(kwargs) if k in TORCH_COMPILE_KEYS}
    mark_blocks = kwargs.pop("trace_blocks_once", False)
    if not isinstance(mark_blocks, bool):
        raise ValueError(f"trace_blocks_once must be True or False, got {mark_blocks!r}")
    known = BACKEND_KEYS | CACHE_KEYS | CALIBRATOR_KEYS | PRUNE_KEYS
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ValueError(f"unknown cachedit_fx.compile argument(s) {unknown}; torch.compile keys: "
                         f"{sorted(TORCH_COMPILE_KEYS)}, trace_blocks_once, backend options: {sorted(known)}")
    if isinstance(target, torch.nn.Module):
        return _compile_module(target, _pick(cache_config, "transformer"), _pick(calibrator_config, "transformer"),
                               kwargs, compile_kwargs, mark_blocks)
    if getattr(target, _COMPILED_ATTR, None):
        raise ValueError(f"{type(target).__name__} is already compiled by cachedit_fx; call cachedit_fx.disable first")
    components = transformer_components(target)
    for config in (cache_config, calibrator_config):
        if isinstance(config, Mapping):
            foreign = sorted(set(config) - set(components))
            if foreign:
                raise ValueError(f"configs given for {foreign}, which are not transformer components of "
                                 f"{type(target).__name__} ({sorted(components)})")
    for name, module in components.items():
        compiled = _compile_module(module, _pick(cache_config, name), _pick(calibrator_config, name), kwargs,
                                   compile_kwargs, mark_blocks)
        setattr(target, name, compiled)
    setattr(target, _COMPILED_ATTR, components)
    target.__class__ = _refreshing_class(type(target))
    return target


def disable(target: Any) -> Any:
    """Undo ``compile``: a pipeline gets its original transformer modules and class back (and is
    returned); a compiled transformer returns its original module. The cache state is freed and
    ``trace_blocks_once`` and the adoption of stored weights undone."""
    if isinstance(target, torch.nn.Module):
        original = getattr(target, "_orig_mod", target)
        forget_model(original)
        restore_stored_weights(original)
        return restore_block_classes(original)
    originals = getattr(target, _COMPILED_ATTR, None)
    if not originals:
        raise ValueError(f"{type(target).__name__} was not compiled by cachedit_fx.compile")
    for name, module in originals.items():
        forget_model(module)
        restore_stored_weights(module)
        setattr(target, name, restore_block_classes(module))
    delattr(target, _COMPILED_ATTR)
    target.__class__ = original_class(target)
    return target


def _pick(config: PerComponent, name: str) -> Any:
    return config.get(name) if isinstance(config, Mapping) else config


def _compile_module(module: torch.nn.Module, cache_config: Optional[DBCacheConfig], calibrator_config: Any,
                    options: dict[str, Any], compile_kwargs: dict[str, Any], mark_blocks: bool) -> torch.nn.Module:
    if hasattr(module, "_orig_mod"):
        raise ValueError(f"{type(module._orig_mod).__name__} is already compiled; pass the original module")
    check_no_foreign_parallelism(module)
    module_options = dict(options)
    if cache_config is not None:
        module_options["cache_config"] = cache_config
    if calibrator_config is not None:
        module_options["calibrator_config"] = calibrator_config
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
    boolean masks, ``.item()``, ``.tolist()``) stay in the graph instead of breaking it, so a chain
    whose blocks use them (Mochi's text mask, FramePack's ``.item()``) is captured whole. Where
    Dynamo cannot trace a captured scalar and raises instead of breaking the graph (Qwen-Image
    2.1), the call is run again without scalar capture (logged). After any call that raises,
    ``module`` recovers (``recover_from_failed_call``) before the error propagates."""
    settings = dict(CAPTURE_SETTINGS)

    @functools.wraps(call)
    def traced(*args: Any, **kwargs: Any) -> Any:
        try:
            with torch._dynamo.config.patch(**settings):
                return call(*args, **kwargs)
        except GuardOnDataDependentSymNode as error:
            recover_from_failed_call(module)
            if not settings.get("capture_scalar_outputs"):
                raise
            log.warning("cachedit: Dynamo cannot trace a captured scalar (%s); tracing again without "
                        "capture_scalar_outputs", str(error).splitlines()[0])
            settings["capture_scalar_outputs"] = False
            return traced(*args, **kwargs)
        except BaseException:
            recover_from_failed_call(module)
            raise

    return traced


def recover_from_failed_call(module: Optional[torch.nn.Module]) -> None:
    """Leave no trace of a call of ``module`` that raised: a trace that met the error marks the
    class's ``forward`` frame (and a decorator's wrapper around it, which diffusers shares
    between model classes) to run eagerly, for this model and every later model of its class,
    until ``torch._dynamo.reset()``; that mark is cleared, keeping what Dynamo compiled for
    other models. The active context starts a new generation (graphs of the failed call may
    have run)."""
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


def _uncompiled_state(pipe: Any, state: dict[str, Any]) -> dict[str, Any]:
    originals = state.pop(_COMPILED_ATTR, {})
    state.update(originals)
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
