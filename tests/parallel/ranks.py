"""What each rank runs in the parallel tests: the single-process compiled model and the
parallel one on the same inputs, with caching off (threshold 0) and on."""

from __future__ import annotations

from typing import Any

import torch

import cachedit_fx
from cachedit_fx import DBPruneConfig
from cachedit_fx.runtime.registry import cache_for_model
from cachedit_fx.tiny_models import TINY_MODELS
from models import run, trajectory

STEPS = 8
THRESHOLDS = {"flux": 0.33, "flux_uneven": 0.33, "flux_flex": 0.33, "qwen_image": 0.5, "wan": 0.11}
POLICIES: dict[str, dict[str, Any]] = {
    "dbcache": {},
    "taylorseer": {"taylorseer_order": 1},
    "dbprune": {"cache_config": DBPruneConfig(Fn_compute_blocks=1, max_warmup_steps=1)},
}
"""Cache policies by case suffix (``flux/dbprune``); no suffix is DBCache."""


def build(name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    """A tiny model; ``flux_uneven`` has 15 image and 23 text tokens (odd on 2 ranks);
    ``flux_flex`` attends with diffusers' flex attention backend (run it last: diffusers makes
    the backend it sets the process's active one)."""
    if name == "flux_flex":
        model, inputs = TINY_MODELS["flux"]()
        model.set_attention_backend("flex")
        return model, inputs
    if name != "flux_uneven":
        return TINY_MODELS[name]()
    model, inputs = TINY_MODELS["flux"]()
    cut = {"hidden_states": (1, 15), "img_ids": (0, 15), "encoder_hidden_states": (1, 23), "txt_ids": (0, 23)}
    return model, {**inputs, **{key: inputs[key].narrow(dim, 0, n) for key, (dim, n) in cut.items()}}


def _generations(model: torch.nn.Module, inputs: dict[str, Any], options: dict[str, Any], threshold: float):
    """Outputs at threshold 0, then outputs and the summary of a generation that caches."""
    base = {"inner_backend": "eager", "residual_diff_threshold": 0.0, "max_warmup_steps": 1, "strict": True}
    if "cache_config" not in options:
        base["Fn_compute_blocks"] = 1
    compiled = torch.compile(model, backend="cachedit", options={**base, **options})
    steps = list(trajectory(inputs, STEPS))
    exact = run(compiled, steps)
    cachedit_fx.refresh(compiled, residual_diff_threshold=threshold)
    cached = run(compiled, steps)
    summary = cachedit_fx.summary(compiled)
    return exact, cached, summary.cached_steps, summary.pruned_blocks


def compare(rank: int, world: int, kind: str, cases: list[str]) -> dict:
    """Per case (``model`` or ``model/policy``): outputs and cache decisions of the
    single-process and the parallel run, the sharding report, and the storage each parameter
    of the parallel model still holds."""
    results = {}
    for case in cases:
        name, _, policy = case.partition("/")
        options = POLICIES[policy or "dbcache"]
        torch._dynamo.reset()
        reference_model, inputs = build(name)
        parallel_model, _ = build(name)
        want = _generations(reference_model, inputs, options, THRESHOLDS[name])
        got = _generations(parallel_model, inputs, {**options, kind: world}, THRESHOLDS[name])
        results[case] = {"want": want, "got": got, "report": cache_for_model(parallel_model).sharding,
                         "in_graph": cache_for_model(parallel_model).active().step_tensors is not None,
                         "storage": [p.untyped_storage().nbytes() for p in parallel_model.parameters()]}
    return results


def inductor_matches_eager(rank: int, world: int, kind: str) -> dict[str, Any]:
    """Tiny FLUX compiled per block by Inductor with the collectives inside its pieces, against
    the single-process eager-lowered program: relative error and the sharding report."""
    reference_model, inputs = build("flux")
    parallel_model, _ = build("flux")
    options = {"Fn_compute_blocks": 1, "residual_diff_threshold": 0.0, "strict": True, "regional_compile": True}
    with torch.no_grad():
        want = torch.compile(reference_model, backend="cachedit", options={**options, "inner_backend": "eager"})(
            **inputs, return_dict=False)[0]
        got = torch.compile(parallel_model, backend="cachedit", options={**options, kind: world})(
            **inputs, return_dict=False)[0]
    return {"rel_err": ((got - want).norm() / want.norm()).item(), "report": cachedit_fx.sharding_report(parallel_model)}
