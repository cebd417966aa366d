"""DBPrune: per-block guards against the eager per-block reference; protected blocks are
never pruned; threshold 0 equals the plain compiled model."""

from __future__ import annotations

import pytest
import torch

import cachedit_fx
from cachedit_fx import DBPruneConfig
from models import BLOCK_LISTS, TINY_MODELS, chain_length, run, trajectory
from reference_dbprune import ReferenceDBPrune
from cachedit_fx.runtime.registry import cache_for_model
from test_dbcache_models import max_rel_err

STEPS = 10
THRESHOLDS = {"flux": 0.3, "wan": 0.3, "qwen_image": 0.5}

CASES = [
    ("flux", {}),
    ("flux", {"Bn": 2, "non_prune": (3, 5)}),
    ("flux", {"dynamic": True}),
    ("wan", {"max_continuous": 1}),
    ("qwen_image", {"max_pruned_steps": 3}),
]


def prune_config(ref_args: dict, threshold: float) -> DBPruneConfig:
    return DBPruneConfig(
        Fn_compute_blocks=1, Bn_compute_blocks=ref_args.get("Bn", 0), residual_diff_threshold=threshold,
        max_warmup_steps=2, non_prune_block_ids=list(ref_args.get("non_prune", ())),
        max_cached_steps=ref_args.get("max_pruned_steps", -1),
        max_continuous_cached_steps=ref_args.get("max_continuous", -1),
        enable_dynamic_prune_threshold=ref_args.get("dynamic", False),
    )


VARIANTS = {"program": {}, "parts": {"in_graph_decision": False}, "regional": {"regional_compile": True},
            "kernels": {"cache_kernels": "triton"}}
CASES_BY_VARIANT = ([(n, a, "program") for n, a in CASES] + [(n, a, "parts") for n, a in CASES[1:3]]
                    + [(n, a, "regional") for n, a in CASES[2:4]] + [(n, a, "kernels") for n, a in CASES[1:2]])


@pytest.mark.parametrize("name,ref_args,variant", CASES_BY_VARIANT, ids=[
    f"{n}-{'-'.join(map(str, a)) or 'plain'}-{v}" for n, a, v in CASES_BY_VARIANT])
def test_dbprune_equals_reference(name, ref_args, variant):
    """Decided in the program (the default, also with regional compilation or the custom-op
    arithmetic, Triton interpreted on CPU) and between its parts."""
    model, inputs = TINY_MODELS[name]()
    steps = list(trajectory(inputs, STEPS))
    threshold = THRESHOLDS[name]
    compiled = torch.compile(model, backend="cachedit", options={
        "inner_backend": "eager", "cache_config": prune_config(ref_args, threshold), **VARIANTS[variant]})
    got = run(compiled, steps)
    summary = cachedit_fx.summary(compiled)
    assert cache_for_model(compiled).active().step_tensors is not None

    reference = ReferenceDBPrune(model, BLOCK_LISTS[name], 1, ref_args.get("Bn", 0), threshold, warmup=2,
                                 non_prune=ref_args.get("non_prune", ()),
                                 max_pruned_steps=ref_args.get("max_pruned_steps", -1),
                                 max_continuous=ref_args.get("max_continuous", -1),
                                 dynamic=ref_args.get("dynamic", False))
    want = run(reference, steps)
    reference.close()
    assert summary.pruned_blocks == reference.pruned
    assert summary.cached_steps == sorted(reference.pruned)
    assert 0 < sum(len(v) for v in reference.pruned.values())
    n = chain_length(name, model)
    protected = {0, *range(n - ref_args.get("Bn", 0), n), *ref_args.get("non_prune", ())}
    assert not protected & {b for blocks in summary.pruned_blocks.values() for b in blocks}
    assert summary.cached_blocks == sum(len(v) for v in reference.pruned.values())
    assert summary.computed_blocks == STEPS * n - summary.cached_blocks
    for k, (g, w) in enumerate(zip(got, want)):
        assert max_rel_err(g, w) <= 1e-5, f"step {k}"


def test_threshold_zero_equals_plain_compiled_model():
    model, inputs = TINY_MODELS["flux"]()
    steps = list(trajectory(inputs, 4))
    plain = run(torch.compile(model, backend="eager"), steps)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="cachedit", options={
        "inner_backend": "eager", "cache_config": DBPruneConfig(Fn_compute_blocks=1, residual_diff_threshold=0.0)})
    for a, b in zip(run(compiled, steps), plain):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    assert cachedit_fx.summary(compiled).cached_blocks == 0


@pytest.mark.parametrize("options,message", [
    ({"cache_config": DBPruneConfig(Fn_compute_blocks=1, non_prune_block_ids=[99])}, "outside the chain"),
    ({"non_prune_block_ids": [1]}, "need cache_config=DBPruneConfig"),
    ({"cache_config": DBPruneConfig(Fn_compute_blocks=1), "taylorseer_order": 1}, "not supported with DBPrune"),
])
def test_bad_dbprune_options(options, message):
    model, inputs = TINY_MODELS["flux"]()
    compiled = torch.compile(model, backend="cachedit", options={"inner_backend": "eager", **options})
    with pytest.raises(Exception, match=message):
        run(compiled, [inputs])


def test_every_block_protected_is_an_error():
    model, inputs = TINY_MODELS["wan"]()
    n = chain_length("wan", model)
    config = DBPruneConfig(Fn_compute_blocks=1, non_prune_block_ids=list(range(1, n)))
    compiled = torch.compile(model, backend="cachedit", options={"inner_backend": "eager", "cache_config": config})
    with pytest.raises(Exception, match="nothing to prune"):
        run(compiled, [inputs])
