"""``cachedit_fx.export``: the DBCache step decided inside one exported program equals the
compiled backend (bit for bit, eager pieces) and the independent eager reference; its
statistics come from its buffers; a reset input starts a generation; an AOTInductor package
of it runs a cached generation in a process that imports only torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import cachedit_fx
from cachedit_fx.tiny_models import TINY_MODELS, _build
from models import BLOCK_LISTS, run, trajectory
from in_graph_configs import CONFIGS
from reference_dbcache import ReferenceDBCache

RESET = cachedit_fx.RESET_INPUT


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _call(program, step, reset=0):
    kwargs = {k: v for k, v in step.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        return program(**kwargs, **{RESET: torch.tensor([reset, 0])})[0].clone()


REFERENCE_KEYS = dict(Fn_compute_blocks="Fn", Bn_compute_blocks="Bn", max_warmup_steps="warmup",
                      residual_diff_threshold="threshold", max_cached_steps="max_cached",
                      max_continuous_cached_steps="max_continuous",
                      max_accumulated_residual_diff_threshold="max_accumulated", steps_computation_mask="mask",
                      steps_computation_policy="mask_policy", taylorseer_order="taylor_order")


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_exported_program_decides_like_the_backend_and_the_reference(name):
    """Two generations back to back (the second starts where the timestep rises), every
    control of the config exercised, then an aborted request and one started by the reset
    input at a lower timestep; outputs bitwise equal to the backend's (``refresh`` there)."""
    model, inputs = TINY_MODELS[name]()
    options = dict(CONFIGS[name], num_inference_steps=None)
    generations = [list(trajectory(inputs, 10)), list(trajectory(inputs, 10, seed=2))]
    aborted = generations[0][:5]
    lower = [dict(s, timestep=(s["timestep"] * 0.5).to(s["timestep"].dtype)) for s in trajectory(inputs, 10, seed=3)]
    program = cachedit_fx.export(model, dict(inputs, return_dict=False), options).module()
    got, got_cached = [], []
    for steps in generations:
        got += [_call(program, s) for s in steps]
        got_cached.append(cachedit_fx.summary(program).cached_steps)
    summary = cachedit_fx.summary(program)
    for s in aborted:
        _call(program, s)
    got += [_call(program, s, reset=int(k == 0)) for k, s in enumerate(lower)]
    got_cached.append(cachedit_fx.summary(program).cached_steps)

    torch._dynamo.reset()
    compiled = cachedit_fx.compile(model, **dict(options, inner_backend="eager", cache_kernels="torch",
                                                 enable_separate_cfg=False))
    want, want_cached = [], []
    for steps in generations:
        want += run(compiled, steps)
        want_cached.append(cachedit_fx.summary(compiled).cached_steps)
    want_summary = cachedit_fx.summary(compiled)
    run(compiled, aborted)
    cachedit_fx.refresh(compiled)
    want += run(compiled, lower)
    want_cached.append(cachedit_fx.summary(compiled).cached_steps)
    assert got_cached == want_cached and all(got_cached), "the exported program never cached"
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert summary.residual_diffs == want_summary.residual_diffs
    assert (summary.computed_blocks, summary.cached_blocks) == (want_summary.computed_blocks, want_summary.cached_blocks)

    reference = ReferenceDBCache(model, BLOCK_LISTS[name], **{"Bn": 0, **{
        REFERENCE_KEYS[k]: v for k, v in options.items() if k in REFERENCE_KEYS}})
    for steps, cached in zip(generations + [lower], got_cached):
        reference.reset()
        run(reference, steps)
        assert reference.cached_steps == cached
    reference.close()


@pytest.mark.parametrize("options, needle", [
    (dict(tp_size=2), "parallel"),
    (dict(Fn_compute_blocks=8, Bn_compute_blocks=4), "Fn_compute_blocks"),
])
def test_options_the_program_does_not_implement_are_named(options, needle):
    model, inputs = TINY_MODELS["flux"]()
    with pytest.raises(ValueError, match=needle):
        cachedit_fx.export(model, dict(inputs, return_dict=False), options)


PACKAGE_RUN = textwrap.dedent("""
    import sys, torch
    runner = torch._inductor.aoti_load_package(sys.argv[1])
    data = torch.load(sys.argv[2])
    state = {k: v for k, v in data["state"].items() if k in set(runner.get_constant_fqns())}
    runner.load_constants(state, check_full_update=False, user_managed=True)
    outputs = [runner(**step)[0] for step in data["steps"]]
    assert not any(m.startswith(("cachedit", "torchao")) for m in sys.modules), "the package run imported more than torch"
    torch.save({"final": outputs[-1], "state": state}, sys.argv[3])
""")


def small_flux():
    """FLUX with 1 double and 2 single blocks (a quick AOTInductor compile)."""
    return _build("FluxTransformer2DModel", dict(
        patch_size=1, in_channels=4, num_layers=1, num_single_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8]), lambda r, gen: dict(
        hidden_states=r(1, 16, 4), encoder_hidden_states=r(1, 24, 32), pooled_projections=r(1, 32),
        img_ids=r(16, 3), txt_ids=r(24, 3), timestep=torch.tensor([1.0])), 0)


def run_package(tmp_path, program, steps) -> dict:
    """Run ``program``'s AOTInductor package over ``steps`` in a process importing only torch:
    the last output and the cache state it ran on."""
    path = cachedit_fx.package(program, str(tmp_path / "program.pt2"))
    zero = torch.zeros(2, dtype=torch.int64)
    calls = [{**{k: v for k, v in s.items() if isinstance(v, torch.Tensor)}, RESET: zero} for s in steps]
    torch.save({"steps": calls, "state": cachedit_fx.cache_state(program)}, tmp_path / "run.pt")
    subprocess.run([sys.executable, "-c", PACKAGE_RUN, path, str(tmp_path / "run.pt"), str(tmp_path / "out.pt")],
                   check=True, timeout=600)
    result = torch.load(tmp_path / "out.pt")
    return {"final": result["final"], "state": {**cachedit_fx.cache_state(program), **result["state"]}}


def test_dbprune_program_decides_like_the_backend_and_the_reference_and_its_package_runs_alone(tmp_path):
    """Dynamic threshold on: every prunable block decides in the exported program as in the
    backend (bitwise) and the eager reference, a reset starts a generation, and the package
    repeats the generation in a process that imports only torch."""
    from reference_dbprune import ReferenceDBPrune

    model, inputs = small_flux()
    options = dict(cache_config=cachedit_fx.DBPruneConfig(
        Fn_compute_blocks=1, residual_diff_threshold=0.3, max_warmup_steps=2, enable_dynamic_prune_threshold=True))
    steps = list(trajectory(inputs, 10))
    program = cachedit_fx.export(model, dict(inputs, return_dict=False), options)
    module = program.module()
    got = [_call(module, s) for s in steps]
    got_summary = cachedit_fx.summary(module)
    again = [_call(module, s, reset=int(k == 0)) for k, s in enumerate(steps)]
    torch._dynamo.reset()
    compiled = cachedit_fx.compile(model, **dict(options, inner_backend="eager"))
    want = run(compiled, steps)
    reference = ReferenceDBPrune(model, ["transformer_blocks", "single_transformer_blocks"], 1, 0, 0.3, warmup=2,
                                 dynamic=True)
    run(reference, steps)
    reference.close()
    assert got_summary.pruned_blocks == cachedit_fx.summary(compiled).pruned_blocks == reference.pruned
    assert reference.pruned and cachedit_fx.summary(module).pruned_blocks == reference.pruned
    assert all(torch.equal(g, w) for g, w in zip(got, want)) and all(torch.equal(g, w) for g, w in zip(again, want))
    packaged = run_package(tmp_path, program, steps)
    assert cachedit_fx.summary(packaged["state"]).pruned_blocks == reference.pruned
    assert max_rel_err(packaged["final"], want[-1]) <= 1e-5


def test_package_of_a_quantized_model_runs_a_cached_generation_in_a_process_that_imports_only_torch(tmp_path):
    """int8 weight-only torchao weights: the program holds their plain int8 data and scales."""
    from cachedit_fx.quantization import quantize

    model, inputs = small_flux()
    quantize(model, "int8_weight_only")
    options = dict(Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=0.3, num_inference_steps=28,
                   taylorseer_order=1)
    steps = list(trajectory(inputs, 28))
    program = cachedit_fx.export(model, dict(inputs, return_dict=False), options)
    result = run_package(tmp_path, program, steps)
    torch._dynamo.reset()
    compiled = cachedit_fx.compile(model, **dict(options, inner_backend="eager", cache_kernels="torch",
                                                 enable_separate_cfg=False))
    want = run(compiled, steps)
    want_cached = cachedit_fx.summary(compiled).cached_steps
    summary = cachedit_fx.summary(result["state"])
    assert summary.cached_steps == want_cached and len(want_cached) >= 10
    assert summary.num_steps == 28
    assert max_rel_err(result["final"], want[-1]) <= 1e-5
