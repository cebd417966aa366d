"""The systems the suite compares, each built on a fresh copy of the same model.

A ``System`` turns a model into a step function and reports, after a generation, which
steps it cached and how many chain blocks it skipped. Names: ``eager``, ``inductor``,
``cachedit/<config>``, ``cache-dit/<config>`` (+ ``/compiled``), ``diffusers-fbc``
(+ ``/compiled``). Peers that are not installed are left out with a note.
"""

from __future__ import annotations

import contextlib
import importlib.util
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch

import cachedit_fx


@dataclass(frozen=True)
class CacheSetting:
    """One cache configuration, given to every system that supports it."""

    name: str
    Fn: int
    Bn: int
    threshold: float
    warmup: int
    taylor_order: int = 0
    mask_policy: Optional[str] = None
    """A ``steps_mask`` preset used with ``steps_computation_policy="static"``."""
    foca: bool = False
    """FoCa calibrator instead of plain residual reuse (cachedit only)."""
    prune: bool = False
    """DBPrune (per-block guards) instead of DBCache (cachedit only)."""
    regional: bool = False
    """``regional_compile=True``: each distinct block compiled once (cachedit only)."""
    in_graph: Optional[bool] = None
    """``in_graph_decision``: None or True (the suite's rows, the default users get: the branch
    taken inside the compiled program); False, the program cut at its branches, each taken on
    the host between compiled parts (cachedit only)."""


@dataclass
class System:
    name: str
    family: str
    compiled: bool
    make: Callable[[torch.nn.Module], Callable[..., torch.Tensor]]
    start_generation: Callable[[], None] = lambda: None
    cached_steps: Callable[[], Optional[list[int]]] = lambda: []
    skipped_blocks: Callable[[int], Optional[int]] = lambda num_blocks: 0
    """Chain blocks skipped in the latest generation, given the chain length (None: unknown)."""
    setting: Optional[CacheSetting] = None
    config_guard: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    notes: list[str] = field(default_factory=list)
    release: Callable[[], None] = lambda: None
    """Drop every reference the system holds to its model (after its row is measured)."""


def _call(module: Callable[..., Any]) -> Callable[..., torch.Tensor]:
    def step(**inputs: Any) -> torch.Tensor:
        return module(**inputs, return_dict=False)[0]

    return step


def _middle_skipped(setting: CacheSetting, cached_steps: Callable[[], Optional[list[int]]]) -> Callable[[int], Optional[int]]:
    """``skipped_blocks`` of a DBCache-style system: every cached step skips the middle blocks."""
    def skipped(num_blocks: int) -> Optional[int]:
        steps = cached_steps()
        return None if steps is None else len(steps) * (num_blocks - setting.Fn - setting.Bn)

    return skipped


def cachedit_options(setting: CacheSetting, steps: int, inner_backend: str) -> dict[str, Any]:
    keys: dict[str, Any] = dict(Fn_compute_blocks=setting.Fn, Bn_compute_blocks=setting.Bn,
                                residual_diff_threshold=setting.threshold, max_warmup_steps=setting.warmup,
                                num_inference_steps=steps)
    if setting.mask_policy:
        keys.update(steps_computation_mask=cachedit_fx.steps_mask(mask_policy=setting.mask_policy, total_steps=steps),
                    steps_computation_policy="static")
    options: dict[str, Any] = dict(inner_backend=inner_backend, regional_compile=setting.regional,
                                   in_graph_decision=setting.in_graph)
    if setting.in_graph:
        options["enable_separate_cfg"] = False
    if setting.prune:
        options["cache_config"] = cachedit_fx.DBPruneConfig(**keys)
    else:
        options.update(keys)
    if setting.taylor_order:
        options["taylorseer_order"] = setting.taylor_order
    if setting.foca:
        options["calibrator_config"] = cachedit_fx.FoCaCalibratorConfig()
    return options


def baselines(inner_backend: str) -> list[System]:
    return [
        System("eager", "eager", False, _call),
        System("inductor", "inductor", True, lambda m: _call(torch.compile(m, backend=inner_backend))),
    ]


def cachedit_system(setting: CacheSetting, steps: int, inner_backend: str) -> System:
    holder: dict[str, Any] = {}

    def make(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
        holder["model"] = torch.compile(model, backend="cachedit",
                                        options=cachedit_options(setting, steps, inner_backend))
        return _call(holder["model"])

    return System(f"cachedit/{setting.name}", "cachedit", True, make,
                  cached_steps=lambda: cachedit_fx.summary(holder["model"]).cached_steps,
                  skipped_blocks=lambda n: cachedit_fx.summary(holder["model"]).cached_blocks, setting=setting,
                  release=holder.clear)


@contextlib.contextmanager
def _restored_compile_configs() -> Iterator[None]:
    """cache-dit's recommended compile settings are process-wide: confine them to its run."""
    inductor, dynamo = torch._inductor.config.save_config(), torch._dynamo.config.save_config()
    try:
        yield
    finally:
        torch._inductor.config.load_config(inductor)
        torch._dynamo.config.load_config(dynamo)


def cache_dit_system(setting: CacheSetting, steps: int, compiled: bool, inner_backend: str) -> System:
    if setting.foca or setting.prune or setting.regional or setting.in_graph:
        raise ValueError(f"{setting.name}: the cache-dit system runs DBCache (residual reuse or TaylorSeer) only")
    import cache_dit

    holder: dict[str, Any] = {}

    def make(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
        config = dict(Fn_compute_blocks=setting.Fn, Bn_compute_blocks=setting.Bn,
                      residual_diff_threshold=setting.threshold, max_warmup_steps=setting.warmup,
                      num_inference_steps=steps, enable_separate_cfg=False)  # one call per step here
        if setting.mask_policy:
            config.update(steps_computation_mask=cache_dit.steps_mask(mask_policy=setting.mask_policy,
                                                                      total_steps=steps),
                          steps_computation_policy="static")
        calibrator = cache_dit.TaylorSeerCalibratorConfig(taylorseer_order=setting.taylor_order) \
            if setting.taylor_order else None
        cache_dit.enable_cache(model, cache_config=cache_dit.DBCacheConfig(**config), calibrator_config=calibrator)
        holder["model"] = model
        if compiled:
            cache_dit.set_compile_configs()  # the documented recipe: its configs, then torch.compile
            return _call(torch.compile(model, backend=inner_backend))
        return _call(model)

    def cached() -> Optional[list[int]]:
        stats = cache_dit.summary(holder["model"])
        return sorted(stats[0].cached_steps) if stats else None

    suffix = "/compiled" if compiled else ""
    return System(f"cache-dit/{setting.name}{suffix}", "cache-dit", compiled, make,
                  start_generation=lambda: cache_dit.refresh_context(holder["model"], num_inference_steps=steps),
                  cached_steps=cached, skipped_blocks=_middle_skipped(setting, cached),
                  setting=setting, config_guard=_restored_compile_configs, release=holder.clear)


def diffusers_fbc_system(threshold: float, block_lists: tuple[str, ...], compiled: bool,
                         inner_backend: str, name: str = "diffusers-fbc") -> System:
    """diffusers' own First-Block Cache hook; a step is cached when the hook's shared state
    says the remaining blocks were not computed."""
    from diffusers import FirstBlockCacheConfig
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.first_block_cache import _FBC_LEADER_BLOCK_HOOK

    state: dict[str, Any] = {"step": 0, "cached": []}

    def make(model: torch.nn.Module) -> Callable[..., torch.Tensor]:
        model.enable_cache(FirstBlockCacheConfig(threshold=threshold))
        state["model"] = model
        head = [b for name in block_lists for b in getattr(model, name)][0]
        leader = HookRegistry.check_if_exists_or_initialize(head).get_hook(_FBC_LEADER_BLOCK_HOOK)
        step = _call(torch.compile(model, backend=inner_backend) if compiled else model)

        def counted(**inputs: Any) -> torch.Tensor:
            with model.cache_context("cond"):  # diffusers' hooks need a named context per call
                out = step(**inputs)
                if not leader.state_manager.get_state().should_compute:
                    state["cached"].append(state["step"])
            state["step"] += 1
            return out

        return counted

    def start() -> None:
        state["cached"] = []
        state["step"] = 0
        state["model"]._reset_stateful_cache()

    setting = CacheSetting("fbc", 1, 0, threshold, 0)
    cached = lambda: list(state["cached"])  # noqa: E731
    suffix = "/compiled" if compiled else ""
    return System(f"{name}{suffix}", "diffusers-fbc", compiled, make, start_generation=start, cached_steps=cached,
                  skipped_blocks=_middle_skipped(setting, cached), setting=setting,
                  release=lambda: state.pop("model", None))


def available_peers() -> dict[str, bool]:
    return {"cache-dit": importlib.util.find_spec("cache_dit") is not None}
