"""Typed options of the ``cachedit`` backend and their validation.

Cache keys use cache-dit's names. ``parse_options`` turns the ``options`` dict given to
``torch.compile`` into a ``BackendSettings``; any unknown key or bad value raises a
``ValueError`` naming the key. Checks that need the block count (``Fn + Bn <= N``) run in
``DBCacheConfig.check_against_chain``.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Union

from cachedit_fx.parallelism import ParallelismConfig

CAPTURE_SETTINGS = {"capture_scalar_outputs": True, "capture_dynamic_output_shape_ops": True}
"""Dynamo settings ``cachedit_fx.compile`` traces with: data-dependent ops stay in the graph."""
INNER_BACKENDS = ("inductor", "aot_eager", "eager")
CACHE_KERNELS = ("auto", "triton", "torch", "inductor-fused")
STEPS_COMPUTATION_POLICIES = ("dynamic", "static")


@dataclass
class DBCacheConfig:
    """DBCache controls; defaults equal cache-dit's."""

    Fn_compute_blocks: int = 8
    Bn_compute_blocks: int = 0
    residual_diff_threshold: float = 0.08
    max_warmup_steps: int = 8
    warmup_interval: int = 1
    max_cached_steps: int = -1
    max_continuous_cached_steps: int = -1
    max_accumulated_residual_diff_threshold: Optional[float] = None
    num_inference_steps: Optional[int] = None
    steps_computation_mask: Optional[list[int]] = None
    steps_computation_policy: str = "dynamic"
    enable_separate_cfg: Optional[bool] = None
    cfg_compute_first: bool = False
    cfg_diff_compute_separate: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first invalid field."""
        _require_int("Fn_compute_blocks", self.Fn_compute_blocks, minimum=1)
        _require_int("Bn_compute_blocks", self.Bn_compute_blocks, minimum=0)
        _require_number("residual_diff_threshold", self.residual_diff_threshold)
        _require_int("max_warmup_steps", self.max_warmup_steps, minimum=0)
        _require_int("warmup_interval", self.warmup_interval, minimum=1)
        _require_int("max_cached_steps", self.max_cached_steps, minimum=-1)
        _require_int("max_continuous_cached_steps", self.max_continuous_cached_steps, minimum=-1)
        if self.max_accumulated_residual_diff_threshold is not None:
            _require_number("max_accumulated_residual_diff_threshold", self.max_accumulated_residual_diff_threshold)
        if self.num_inference_steps is not None:
            _require_int("num_inference_steps", self.num_inference_steps, minimum=1)
        if self.steps_computation_policy not in STEPS_COMPUTATION_POLICIES:
            raise ValueError(
                f"steps_computation_policy must be one of {STEPS_COMPUTATION_POLICIES}, "
                f"got {self.steps_computation_policy!r}"
            )
        if self.steps_computation_mask is not None:
            mask = list(self.steps_computation_mask)
            if not mask or any(v not in (0, 1) for v in mask):
                raise ValueError("steps_computation_mask must be a non-empty list of 0/1 values")
            if self.num_inference_steps is not None and len(mask) != self.num_inference_steps:
                raise ValueError(
                    f"steps_computation_mask has {len(mask)} entries but num_inference_steps is "
                    f"{self.num_inference_steps}"
                )
            self.steps_computation_mask = mask
        if self.enable_separate_cfg is not None and not isinstance(self.enable_separate_cfg, bool):
            raise ValueError(f"enable_separate_cfg must be None or a bool, got {self.enable_separate_cfg!r}")
        for name in ("cfg_compute_first", "cfg_diff_compute_separate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")

    def check_against_chain(self, num_blocks: int) -> None:
        """Raise ``ValueError`` when Fn/Bn do not fit a chain of ``num_blocks`` blocks.

        The middle piece must hold at least one block, so ``Fn + Bn < num_blocks``.
        """
        if self.Fn_compute_blocks + self.Bn_compute_blocks >= num_blocks:
            raise ValueError(
                f"Fn_compute_blocks + Bn_compute_blocks = {self.Fn_compute_blocks} + {self.Bn_compute_blocks} "
                f"leaves no cacheable block in a chain of {num_blocks} blocks (need Fn + Bn < {num_blocks})"
            )

    def decided_before(self, block: int, num_blocks: int) -> bool:
        """Whether a cache decision is taken just before chain block ``block``, which then may
        not run: the first middle block."""
        return block == self.Fn_compute_blocks

    def replace(self, **changes: Any) -> "DBCacheConfig":
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown cache option(s): {sorted(unknown)}")
        return dataclasses.replace(self, **changes)


CACHE_KEYS = frozenset(f.name for f in dataclasses.fields(DBCacheConfig))
GRAPH_KEYS = frozenset({"Fn_compute_blocks", "Bn_compute_blocks", "non_prune_block_ids"})
"""Options that shape the compiled graph: ``refresh`` cannot change them (compile again)."""


@dataclass
class DBPruneConfig(DBCacheConfig):
    """DBPrune: every block outside the first Fn, the last Bn and ``non_prune_block_ids`` gets
    its own guard; a block whose hidden input differs from its input at its last computed step
    by less than the threshold is skipped (output = input + that block's stored residual).

    Step controls keep their DBCache meaning with "cached step" read as "a step in which some
    block was pruned"; ``max_continuous_cached_steps`` and the accumulated diff count per block.
    Dynamic threshold: a block's threshold becomes ``mean(first 5 positive block diffs of this
    step) * dynamic_prune_threshold_relax_ratio`` when that exceeds the static one and stays
    below ``max_dynamic_prune_threshold`` (default: twice the static threshold)."""

    non_prune_block_ids: list[int] = field(default_factory=list)
    enable_dynamic_prune_threshold: bool = False
    max_dynamic_prune_threshold: Optional[float] = None
    dynamic_prune_threshold_relax_ratio: float = 1.25

    def validate(self) -> None:
        super().validate()
        ids = self.non_prune_block_ids
        if not isinstance(ids, (list, tuple)) or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
            raise ValueError(f"non_prune_block_ids must be a list of block indices >= 0, got {ids!r}")
        self.non_prune_block_ids = sorted(set(ids))
        if not isinstance(self.enable_dynamic_prune_threshold, bool):
            raise ValueError(f"enable_dynamic_prune_threshold must be a bool, got {self.enable_dynamic_prune_threshold!r}")
        if self.max_dynamic_prune_threshold is not None:
            _require_number("max_dynamic_prune_threshold", self.max_dynamic_prune_threshold)
        _require_number("dynamic_prune_threshold_relax_ratio", self.dynamic_prune_threshold_relax_ratio)
        if not self.cfg_diff_compute_separate:
            raise ValueError("cfg_diff_compute_separate=False is not supported with DBPrune (every block decides alone)")

    def check_against_chain(self, num_blocks: int) -> None:
        super().check_against_chain(num_blocks)
        out_of_range = [i for i in self.non_prune_block_ids if i >= num_blocks]
        if out_of_range:
            raise ValueError(f"non_prune_block_ids {out_of_range} are outside the chain of {num_blocks} blocks")

    def is_protected(self, block: int, num_blocks: int) -> bool:
        return (block < self.Fn_compute_blocks or block >= num_blocks - self.Bn_compute_blocks
                or block in self.non_prune_block_ids)

    def decided_before(self, block: int, num_blocks: int) -> bool:
        """Every block that is not protected is decided on its own."""
        return not self.is_protected(block, num_blocks)


PRUNE_KEYS = frozenset(f.name for f in dataclasses.fields(DBPruneConfig)) - CACHE_KEYS
REFRESH_KEYS = (CACHE_KEYS | PRUNE_KEYS) - GRAPH_KEYS
"""Options ``refresh`` can change: the decision's controls, step counts and masks, CFG handling."""


def check_refresh_changes(changes: dict[str, Any], config: Optional[DBCacheConfig] = None) -> DBCacheConfig:
    """The config ``refresh(**changes)`` gives from ``config`` (default options when the model
    is not compiled yet, to check the values alone); ``ValueError`` naming any key refresh cannot
    change or any bad value."""
    graph = sorted(set(changes) & GRAPH_KEYS)
    if graph:
        raise ValueError(f"refresh cannot change {graph}: they shape the compiled graph (compile again); "
                         f"refresh can change {sorted(REFRESH_KEYS)}")
    unknown = sorted(set(changes) - REFRESH_KEYS)
    if unknown:
        raise ValueError(f"unknown refresh option(s) {unknown}; refresh can change {sorted(REFRESH_KEYS)}")
    if config is None:
        config = DBPruneConfig() if set(changes) & PRUNE_KEYS else DBCacheConfig()
    if set(changes) & PRUNE_KEYS and not isinstance(config, DBPruneConfig):
        raise ValueError(f"{sorted(set(changes) & PRUNE_KEYS)} apply to DBPrune only; this model runs DBCache")
    return config.replace(**changes)
CALIBRATOR_CACHE_TYPES = ("residual", "hidden_states")
MAX_TAYLORSEER_ORDER = 4


@dataclass
class TaylorSeerCalibratorConfig:
    """TaylorSeer: on cached steps, forecast each carried value's middle residual (or the
    middle output itself, ``calibrator_cache_type="hidden_states"``) by a Taylor series over
    the computed steps instead of reusing the last one. Never changes the cache decision."""

    taylorseer_order: int = 1
    enable_calibrator: bool = True
    enable_encoder_calibrator: bool = True
    calibrator_cache_type: str = "residual"

    def __post_init__(self) -> None:
        _require_int("taylorseer_order", self.taylorseer_order, minimum=1)
        if self.taylorseer_order > MAX_TAYLORSEER_ORDER:
            raise ValueError(f"taylorseer_order must be <= {MAX_TAYLORSEER_ORDER}, got {self.taylorseer_order}")
        _validate_calibrator_switches(self)


@dataclass
class FoCaCalibratorConfig:
    """FoCa ("Forecast then Calibrate"): on cached steps, forecast each carried value's middle
    residual (or output) with a BDF2 predictor plus a Heun correction from the last two
    computed anchors (``runtime/calibration.py``). No order to choose; 4 buffers per value."""

    enable_calibrator: bool = True
    enable_encoder_calibrator: bool = True
    calibrator_cache_type: str = "residual"

    def __post_init__(self) -> None:
        _validate_calibrator_switches(self)


CALIBRATOR_KEYS = frozenset(f.name for f in dataclasses.fields(TaylorSeerCalibratorConfig))
CALIBRATOR_CONFIGS = (TaylorSeerCalibratorConfig, FoCaCalibratorConfig)


@dataclass(frozen=True)
class BackendSettings:
    """The options of one compile, frozen (per-compile handles travel with the graph:
    ``passes.CompileHandles``); change one with ``dataclasses.replace``."""

    cache: DBCacheConfig = field(default_factory=DBCacheConfig)
    calibrator: Optional[Union[TaylorSeerCalibratorConfig, FoCaCalibratorConfig]] = None
    inner_backend: str = "inductor"
    mode: Optional[str] = None
    inductor_options: dict[str, Any] = field(default_factory=dict)
    strict: bool = False
    dump_dir: Optional[str] = None
    cache_kernels: str = "auto"
    """Who computes the step's diff, ladder push and forecast: the ``cachedit_fx`` custom ops
    ("triton": Triton on CUDA, torch on CPU; ``kernels.step_kernels``), or torch ops the
    compiler fuses into the program ("torch", "inductor-fused", "auto")."""
    regional_compile: bool = False
    """Run every chain block as a custom op compiling each distinct block once (cold compile
    time stops growing with depth; costs one call per block at run time)."""
    in_graph_decision: Optional[bool] = None
    """Where the step's branch (``runtime/dbcache_step.py``) is taken: None or True (default),
    inside the compiled program, no host read (under CUDA graphs, as a conditional node);
    False, on the host between the program's compiled parts (``passes/compile_cond_parts.py``)."""
    parallelism: Optional[ParallelismConfig] = None
    """Tensor- or context-parallel execution (``parallelism_config``, or ``tp_size`` /
    ``ulysses_size`` as plain keys)."""
    def __post_init__(self) -> None:
        if self.inner_backend not in INNER_BACKENDS:
            raise ValueError(f"inner_backend must be one of {INNER_BACKENDS}, got {self.inner_backend!r}")
        if (self.mode or self.inductor_options) and self.inner_backend != "inductor":
            raise ValueError("mode / inductor_options only apply with inner_backend='inductor'")
        _check_inductor_mode(self.mode)
        object.__setattr__(self, "inductor_options", _checked_inductor_options(self.inductor_options))
        if self.cache_kernels not in CACHE_KERNELS:
            raise ValueError(f"cache_kernels must be one of {CACHE_KERNELS}, got {self.cache_kernels!r}")
        if self.parallelism is not None and not isinstance(self.parallelism, ParallelismConfig):
            raise ValueError(f"parallelism_config must be a ParallelismConfig, got {type(self.parallelism).__name__}")
        for name in ("strict", "regional_compile", "in_graph_decision"):
            value = getattr(self, name)
            if not isinstance(value, bool) and not (name == "in_graph_decision" and value is None):
                raise ValueError(f"{name} must be a bool, got {value!r}")
        if self.dump_dir is not None:
            object.__setattr__(self, "dump_dir", _writable_folder(self.dump_dir))


BACKEND_KEYS = frozenset(
    {"cache_config", "calibrator_config", "inner_backend", "mode", "inductor_options", "strict", "dump_dir",
     "cache_kernels", "regional_compile", "parallelism_config", "in_graph_decision"}
)
PARALLELISM_KEYS = frozenset({"tp_size", "ulysses_size"})


def parse_options(options: Optional[dict[str, Any]]) -> BackendSettings:
    """Build settings from ``torch.compile(..., options=...)``.

    Flat cache keys override fields of a given ``cache_config``, flat calibrator keys those of
    ``calibrator_config`` (and enable a TaylorSeer calibrator when none is given). ``dump_dir``
    defaults to the ``CACHEDIT_FX_DUMP`` environment variable.
    """
    options = dict(options or {})
    known = BACKEND_KEYS | CACHE_KEYS | CALIBRATOR_KEYS | PRUNE_KEYS | PARALLELISM_KEYS
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown cachedit option(s) {unknown}; known keys: {sorted(known)}")
    calibrator = options.pop("calibrator_config", None)
    if calibrator is not None and not isinstance(calibrator, CALIBRATOR_CONFIGS):
        raise ValueError(
            f"calibrator_config must be a TaylorSeerCalibratorConfig or FoCaCalibratorConfig, "
            f"got {type(calibrator).__name__}"
        )
    flat_calibrator = {k: options.pop(k) for k in list(options) if k in CALIBRATOR_KEYS}
    if flat_calibrator:
        calibrator = calibrator or TaylorSeerCalibratorConfig()
        foreign = sorted(set(flat_calibrator) - {f.name for f in dataclasses.fields(calibrator)})
        if foreign:
            raise ValueError(f"{foreign} do not apply to {type(calibrator).__name__}")
    if calibrator is not None:
        calibrator = dataclasses.replace(calibrator, **flat_calibrator)  # a validated copy
    base = options.pop("cache_config", None) or DBCacheConfig()
    if not isinstance(base, DBCacheConfig):
        raise ValueError(f"cache_config must be a DBCacheConfig, got {type(base).__name__}")
    flat = {k: options.pop(k) for k in list(options) if k in CACHE_KEYS | PRUNE_KEYS}
    if any(k in PRUNE_KEYS for k in flat) and not isinstance(base, DBPruneConfig):
        raise ValueError(f"{sorted(set(flat) & PRUNE_KEYS)} need cache_config=DBPruneConfig(...)")
    cache = base.replace(**flat)  # a copy, validated again: fields set after construction are checked here
    parallelism = options.pop("parallelism_config", None)
    flat_parallel = {k: options.pop(k) for k in list(options) if k in PARALLELISM_KEYS}
    if flat_parallel:
        if parallelism is not None and not isinstance(parallelism, ParallelismConfig):
            raise ValueError(f"parallelism_config must be a ParallelismConfig, got {type(parallelism).__name__}")
        parallelism = dataclasses.replace(parallelism or ParallelismConfig(), **flat_parallel)
    options["parallelism"] = parallelism
    options.setdefault("dump_dir", os.environ.get("CACHEDIT_FX_DUMP") or None)
    if calibrator is not None and isinstance(cache, DBPruneConfig):
        raise ValueError("calibrator_config is not supported with DBPrune: pruned blocks reuse their last residual")
    return BackendSettings(cache=cache, calibrator=calibrator, **options)


def _check_inductor_mode(mode: Any) -> None:
    """``mode`` is None or one of Inductor's modes (``ValueError`` naming ``mode``)."""
    if mode is None:
        return
    from torch._inductor import list_mode_options

    modes = sorted(list_mode_options())
    if not isinstance(mode, str) or mode not in modes:
        raise ValueError(f"mode must be None or one of {modes}, got {mode!r}")


def _checked_inductor_options(options: Any) -> dict[str, Any]:
    """``inductor_options`` as a dict of Inductor config names (``ValueError`` naming
    ``inductor_options`` for anything else: a string, unknown names)."""
    if not isinstance(options, Mapping):
        raise ValueError(f"inductor_options must be a dict of Inductor config names to values (e.g. "
                         f"{{'max_autotune': True}}), got {type(options).__name__} {options!r}")
    from torch._inductor import list_options

    unknown = sorted(str(k) for k in options if k not in set(list_options()))
    if unknown:
        raise ValueError(f"inductor_options: unknown Inductor config name(s) {unknown} "
                         "(torch._inductor.list_options() lists them)")
    return dict(options)


def _validate_calibrator_switches(config: Any) -> None:
    for name in ("enable_calibrator", "enable_encoder_calibrator"):
        if not isinstance(getattr(config, name), bool):
            raise ValueError(f"{name} must be a bool, got {getattr(config, name)!r}")
    if config.calibrator_cache_type not in CALIBRATOR_CACHE_TYPES:
        raise ValueError(
            f"calibrator_cache_type must be one of {CALIBRATOR_CACHE_TYPES}, got {config.calibrator_cache_type!r}"
        )


def _require_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")


def _require_number(name: str, value: Any) -> None:
    """A real number: not NaN, not -inf (+inf is allowed: "always below")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if math.isnan(value) or value == -math.inf:
        raise ValueError(f"{name} must be a real number, got {value!r}")


def _writable_folder(path: Any) -> str:
    """``path`` as a folder that exists (created if needed) and can be written, else ``ValueError``
    naming ``dump_dir``."""
    if not isinstance(path, (str, os.PathLike)) or not str(path):
        raise ValueError(f"dump_dir must be a folder path (str or os.PathLike), got {path!r}")
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"dump_dir {str(folder)!r} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"dump_dir {str(folder)!r} cannot be created: {error}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"dump_dir {str(folder)!r} is not writable")
    return str(folder)
