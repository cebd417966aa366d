"""The cachedit backend composed with what users put around it: torchao weight quantization
(``cachedit_fx.quantize``), dynamic shapes (a resolution change mid-session), ``no_grad`` /
``inference_mode``, and half-precision models.

Every check compares against plain ``torch.compile`` with the same inner backend (threshold 0:
nothing is cached, so the pieces must compute what the whole graph computes) and against the
eager oracle ``reference_dbcache.ReferenceDBCache`` applied to the same (quantized, cast) model.
Caching is driven by a static step mask, so the cached steps are known in advance.

Note on bf16 and ``cache_kernels="triton"``: under ``TRITON_INTERPRET=1`` (set by conftest)
Triton's interpreter casts fp32 -> bf16 by truncation (``triton/runtime/interpreter.py``,
``cast_impl`` calls ``_convert_float`` with no rounding mode), where torch and Triton on a GPU
round to nearest even. Residuals stored by the Triton ladder kernels through the interpreter
are therefore up to one bf16 ulp off the oracle's; ``cache_kernels="torch"`` is exact.
"""

from __future__ import annotations

import sys

import pytest
import torch

import cachedit_fx
from cachedit_fx.backend import cachedit_backend
from cachedit_fx.kernels import runs_triton
from cachedit_fx.quantization import quantize
from cachedit_fx.runtime.registry import cache_for_model
from models import BLOCK_LISTS, TINY_MODELS, run, trajectory
from reference_dbcache import ReferenceDBCache


STEPS = 6
MASK = [1, 1, 0, 1, 0, 0]  # static: exactly steps 2, 4, 5 reuse the cache
MASK_CACHED = [2, 4, 5]
ALWAYS = 100.0  # every step with a previous residual passes the diff test
FLUX_CONFIG = dict(patch_size=1, in_channels=4, attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                   pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])


def cast(inputs: dict, dtype: torch.dtype) -> dict:
    return {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in inputs.items()}


def flux(dtype: torch.dtype = torch.float32, small: bool = False):
    """Tiny FLUX (4 double + 4 single blocks), or with ``small`` 1 + 2 (a chain of 3 blocks:
    F1 leaves a 2-block middle; about half the compile time)."""
    model, inputs = TINY_MODELS["flux"]()
    if small:
        import diffusers

        torch.manual_seed(0)
        model = diffusers.FluxTransformer2DModel(num_layers=1, num_single_layers=2, **FLUX_CONFIG).eval()
    return model.to(dtype), cast(inputs, dtype)


def steps_of(inputs: dict, dtype: torch.dtype, n: int = STEPS, **kwargs) -> list[dict]:
    return [cast(s, dtype) for s in trajectory(inputs, n, **kwargs)]


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()


def oracle(model, steps, **controls):
    ref = ReferenceDBCache(model, BLOCK_LISTS["flux"], 1, 0, **{"threshold": 0.0, **controls})
    try:
        return run(ref, steps), ref
    finally:
        ref.close()


def cachedit(model, inner: str = "eager", **options):
    base = {"inner_backend": inner, "Fn_compute_blocks": 1, "residual_diff_threshold": 0.0, "max_warmup_steps": 0}
    return torch.compile(model, backend="cachedit", options={**base, **options})


def cached_tolerance(dtype: torch.dtype, cache_kernels: str = "auto") -> float:
    """Max relative error allowed between cached outputs and the oracle's: exact arithmetic
    except bf16 residuals stored through the Triton interpreter (module docstring)."""
    interpreted = cache_kernels in ("auto", "triton") and runs_triton(torch.empty(1))
    if dtype == torch.bfloat16 and interpreted:
        return 2e-2  # one bf16 ulp (2**-8 relative) in the stored residual, through the tail
    return 1e-5 if dtype == torch.float32 else 0.0


def threshold_zero_then_static_mask(model, inputs, dtype, inner, cache_kernels="auto"):
    """One cachedit compile, two generations: threshold 0 against plain ``torch.compile``, then
    (after ``refresh`` to a static mask) the cached steps against the eager oracle."""
    steps = steps_of(inputs, dtype)
    plain = run(torch.compile(model, backend=inner), steps)
    torch._dynamo.reset()
    compiled = cachedit(model, inner, cache_kernels=cache_kernels)
    got = run(compiled, steps)
    assert cachedit_fx.summary(compiled).cached_steps == []
    assert cache_for_model(compiled).active().step_tensors is not None, "the default decides in the graph"
    for k, (g, p) in enumerate(zip(got, plain)):
        assert g.dtype == dtype
        assert max_rel_err(g, p) <= (1e-5 if dtype == torch.float32 else 0.0), f"threshold 0, step {k}"

    cachedit_fx.refresh(compiled, steps_computation_mask=MASK, steps_computation_policy="static")
    got = run(compiled, steps)
    want, ref = oracle(model, steps, mask=MASK, mask_policy="static")
    summary = cachedit_fx.summary(compiled)
    assert ref.cached_steps == MASK_CACHED
    assert summary.cached_steps == MASK_CACHED and summary.num_steps == STEPS
    tol = cached_tolerance(dtype, cache_kernels)
    for k, (g, w) in enumerate(zip(got, want)):
        assert max_rel_err(g, w) <= tol, f"static mask, step {k}"
    assert summary.residual_diffs.keys() == ref.diffs.keys()
    for step, diff in ref.diffs.items():  # the oracle's means round to the model dtype
        assert summary.residual_diffs[step] == pytest.approx(diff, rel=1e-4 if dtype == torch.float32 else 1e-2)
    return summary


# --- cachedit_fx.quantize ---------------------------------------------------------------


def test_quantize_unknown_scheme_lists_the_valid_ones():
    model, _ = flux()
    with pytest.raises(ValueError, match="int8_weight_only, int8_dynamic, float8_weight_only, float8_dynamic"):
        quantize(model, "int4")


def test_quantize_without_torchao_says_to_install_the_full_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchao.quantization", None)  # makes the import fail
    model, _ = flux()
    with pytest.raises(ImportError, match=r"cachedit_fx\[full\]"):
        quantize(model, "int8_weight_only")


@pytest.mark.parametrize("scheme,unquantized", [
    ("int8_weight_only", set()),
    ("int8_dynamic", {"x_embedder", "proj_out"}),  # in/out features 4: not multiples of 8
    ("float8_weight_only", set()),  # dequantize + matmul: runs on CPU in torchao 0.18
])
def test_quantize_replaces_linear_weights_in_place(scheme, unquantized):
    model, inputs = flux()
    with torch.no_grad():
        before = model(**inputs, return_dict=False)[0]
    inductor = torch._inductor.config
    tuning, cache = inductor.coordinate_descent_tuning, inductor.fx_graph_cache
    assert quantize(model, scheme) is model
    linears = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    plain = {name for name, m in linears.items() if type(m.weight) is torch.nn.Parameter}
    assert plain == unquantized and len(linears) > 80
    assert (inductor.coordinate_descent_tuning, inductor.fx_graph_cache) == (tuning, cache)  # no global tweaks
    with torch.no_grad():
        after = model(**inputs, return_dict=False)[0]
    assert 0 < max_rel_err(after, before) < 0.1


def test_quantize_a_compiled_wrapper_quantizes_its_module():
    model, _ = flux()
    wrapper = torch.compile(model, backend="eager")
    assert quantize(wrapper, "int8_weight_only") is wrapper
    assert type(model.x_embedder.weight) is not torch.nn.Parameter


def test_quantizing_after_a_compiled_generation_recompiles_and_starts_afresh():
    from torch._dynamo.utils import counters

    model, inputs = flux(small=True)
    compiled = cachedit(model, steps_computation_mask=MASK, steps_computation_policy="static")
    steps = steps_of(inputs, torch.float32)
    counters.clear()
    before = run(compiled, steps)
    quantize(compiled, "int8_weight_only")
    got = run(compiled, steps)
    assert counters["stats"]["unique_graphs"] == 2
    assert cachedit_fx.summary(compiled).cached_steps == MASK_CACHED
    want, _ = oracle(model, steps, mask=MASK, mask_policy="static")
    for g, w, b in zip(got, want, before):
        assert max_rel_err(g, w) <= 1e-5 and not torch.equal(g, b)


def test_quantize_float8_dynamic_on_cpu_raises_a_clear_error():
    model, _ = flux(torch.bfloat16)
    with pytest.raises(RuntimeError, match="compute capability >= 8.9"):
        quantize(model, "float8_dynamic")
    assert type(model.x_embedder.weight) is torch.nn.Parameter  # nothing changed


def _sm89() -> bool:
    return torch.cuda.is_available() and torch.version.hip is None and torch.cuda.get_device_capability() >= (8, 9)


@pytest.mark.skipif(not _sm89(), reason="float8_dynamic needs a CUDA GPU (sm >= 89)")
def test_float8_dynamic_quantized_flux_composes_on_gpu():
    """Not run on the CPU machines this was written on: tolerances are bf16-sized (cuBLAS may
    pick different algorithms for the pieces than for the whole graph)."""
    model, inputs = flux(torch.bfloat16)
    model = model.cuda()
    quantize(model, "float8_dynamic")
    assert type(model.transformer_blocks[0].attn.to_q.weight) is not torch.nn.Parameter
    steps = [{k: v.cuda() if torch.is_tensor(v) else v for k, v in s.items()} for s in steps_of(inputs, torch.bfloat16)]
    plain = run(torch.compile(model, backend="eager"), steps)
    torch._dynamo.reset()
    compiled = cachedit(model, "eager")
    for g, p in zip(run(compiled, steps), plain):
        assert max_rel_err(g, p) <= 1e-2
    cachedit_fx.refresh(compiled, steps_computation_mask=MASK, steps_computation_policy="static")
    got = run(compiled, steps)
    want, ref = oracle(model, steps, mask=MASK, mask_policy="static")
    assert cachedit_fx.summary(compiled).cached_steps == ref.cached_steps == MASK_CACHED
    for g, w in zip(got, want):
        assert max_rel_err(g, w) <= 2e-2


# --- quantized models under cachedit -------------------------------------------------------


@pytest.mark.parametrize("scheme,inner,dtype", [
    ("int8_weight_only", "eager", torch.float32),
    ("int8_weight_only", "aot_eager", torch.bfloat16),
    ("int8_dynamic", "eager", torch.bfloat16),
    ("int8_dynamic", "aot_eager", torch.float32),
    ("float8_weight_only", "eager", torch.bfloat16),
])
def test_quantized_flux_equals_plain_compile_and_the_oracle(scheme, inner, dtype):
    model, inputs = flux(dtype, small=True)
    quantize(model, scheme)
    threshold_zero_then_static_mask(model, inputs, dtype, inner)


def test_quantized_flux_threshold_decisions_equal_the_oracle():
    """A diff-driven run (no mask): the diffs are taken on quantized activations, so decisions
    and diffs must still equal the oracle's on the same quantized model."""
    model, inputs = flux(small=True)
    quantize(model, "int8_dynamic")
    steps = steps_of(inputs, torch.float32, 8)
    free, ref = oracle(model, steps, threshold=ALWAYS)
    threshold = sorted(ref.diffs.values())[len(ref.diffs) // 2]  # the median diff: mixes both outcomes
    want, ref = oracle(model, steps, threshold=threshold)
    compiled = cachedit(model, residual_diff_threshold=threshold)
    got = run(compiled, steps)
    summary = cachedit_fx.summary(compiled)
    assert 0 < len(ref.cached_steps) < len(steps) - 1
    assert summary.cached_steps == ref.cached_steps
    for step, diff in ref.diffs.items():
        assert summary.residual_diffs[step] == pytest.approx(diff, rel=1e-4)
    for g, w in zip(got, want):
        assert max_rel_err(g, w) <= 1e-5


# --- dynamic shapes --------------------------------------------------------------------------


@pytest.mark.parametrize("inner", ["eager", "aot_eager"])
def test_resolution_changes_recompile_once_and_restart_the_generation(inner):
    """16 -> 36 -> 64 -> 16 image tokens, the timestep falling throughout, so only the shape
    change marks each new generation. The second resolution recompiles once (automatic dynamic
    shapes: the host decides for that graph, the first decides in the graph), later ones reuse
    that graph; each generation restarts (step 0 computes, counting restarts), equals the oracle
    run fresh at that resolution, and is what ``summary`` reports."""
    from torch._dynamo.utils import counters

    compiles = []

    def counting_cachedit(gm, example_inputs, **kwargs):
        compiles.append(gm)
        return cachedit_backend(gm, example_inputs, **kwargs)

    model, inputs = flux(small=inner == "aot_eager")
    options = {"inner_backend": inner, "Fn_compute_blocks": 1, "residual_diff_threshold": ALWAYS, "max_warmup_steps": 1}
    compiled = torch.compile(model, backend=counting_cachedit, options=options)
    counters.clear()
    gen = torch.Generator().manual_seed(5)
    calls = 0
    for tokens, expected_compiles, count in [(16, 1, 3), (36, 2, 4), (64, 2, 3), (16, 2, 4)]:
        res = dict(inputs, hidden_states=torch.randn(1, tokens, 4, generator=gen),
                   img_ids=torch.randn(tokens, 3, generator=gen))
        steps = [dict(step, timestep=inputs["timestep"] * (1 - (calls + k) / 16))  # t keeps falling
                 for k, step in enumerate(trajectory(res, count))]
        calls += count
        want, ref = oracle(model, steps, threshold=ALWAYS, warmup=1)
        got = run(compiled, steps)
        summary = cachedit_fx.summary(compiled)
        assert len(compiles) == expected_compiles, f"{tokens} tokens"
        assert summary.num_steps == count and summary.cached_steps == ref.cached_steps == list(range(1, count))
        for k, (g, w) in enumerate(zip(got, want)):
            assert g.shape == (1, tokens, 4)
            assert max_rel_err(g, w) <= 1e-5, f"{tokens} tokens, step {k}"
    assert counters["stats"]["unique_graphs"] == 2
    assert any(isinstance(n.meta.get("example_value"), torch.SymInt) for n in compiles[1].graph.nodes
               if n.op == "placeholder"), "the second graph is not dynamic"


# --- grad modes ------------------------------------------------------------------------------


def _grad_mode_runs(order: list[str]):
    model, inputs = flux()
    compiled = cachedit(model, steps_computation_mask=MASK, steps_computation_policy="static")
    steps = steps_of(inputs, torch.float32)
    modes = {"no_grad": torch.no_grad, "inference_mode": torch.inference_mode}
    outputs = []
    for mode in order:
        with modes[mode]():
            outputs.append([compiled(**s, return_dict=False)[0].clone() for s in steps])
        assert outputs[-1][-1].is_inference() == (mode == "inference_mode")
        assert cachedit_fx.summary(compiled).cached_steps == MASK_CACHED, mode
    want, _ = oracle(model, steps, mask=MASK, mask_policy="static")
    for got in outputs:
        for g, w in zip(got, want):
            assert max_rel_err(g, w) <= 1e-5


def test_no_grad_generation_then_inference_mode_generation():
    _grad_mode_runs(["no_grad", "inference_mode", "no_grad"])


def test_inference_mode_generation_then_no_grad_generation():
    """Buffers first allocated under inference_mode must stay writable by a later generation
    run under no_grad (fails today: they are inference tensors, see the report)."""
    _grad_mode_runs(["inference_mode", "no_grad", "inference_mode"])


# --- half precision --------------------------------------------------------------------------


@pytest.mark.parametrize("cache_kernels", ["torch", "auto"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_flux_equals_plain_compile_and_the_oracle(dtype, cache_kernels):
    model, inputs = flux(dtype, small=True)
    summary = threshold_zero_then_static_mask(model, inputs, dtype, "eager", cache_kernels)
    assert summary.num_cached_steps == len(MASK_CACHED)

