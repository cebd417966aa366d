"""Regional compilation of the one program (``passes/compile_regions.py``): the middle runs as
its blocks compiled apart, behind a custom op inside the ``torch.cond`` branch; decisions and
outputs equal the eager oracle, each distinct block graph is compiled once."""

from __future__ import annotations

import pytest
import torch

import cachedit_fx
from cachedit_fx.runtime.registry import cache_for_model
from cachedit_fx.tiny_models import TINY_MODELS
from models import BLOCK_LISTS, run, trajectory
from reference_dbcache import ReferenceDBCache


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("name, Bn", [("flux", 0), ("wan", 1)])
def test_regional_program_equals_the_oracle_and_compiles_each_block_kind_once(name, Bn, compile_reports):
    model, inputs = TINY_MODELS[name]()
    steps = list(trajectory(inputs, 8))
    options = dict(Fn_compute_blocks=1, Bn_compute_blocks=Bn, residual_diff_threshold=0.3, max_warmup_steps=2,
                   taylorseer_order=1, inner_backend="aot_eager", regional_compile=True)
    compiled = torch.compile(model, backend="cachedit", options=options)
    got = run(compiled, steps)
    summary = cachedit_fx.summary(compiled)
    assert cache_for_model(compiled).active().step_tensors is not None
    report = compile_reports[-1]
    assert report.compiles < report.pieces, "equal blocks share one compile"
    reference = ReferenceDBCache(model, BLOCK_LISTS[name], 1, Bn, 0.3, warmup=2, taylor_order=1)
    want = run(reference, steps)
    reference.close()
    assert summary.cached_steps == reference.cached_steps and 0 < len(summary.cached_steps) < 6
    for k, (g, w) in enumerate(zip(got, want)):
        assert max_rel_err(g, w) <= 1e-5, f"step {k}"


def test_a_region_returning_slices_of_one_tensor_gets_fresh_outputs():
    """FLUX's single blocks return text and image as slices of one joined tensor: the custom op
    hands them out as separate tensors (a custom op may not return aliases)."""
    from cachedit_fx.runtime.region_op import _aliases, _fresh

    joined, given = torch.randn(2, 6), torch.randn(3)
    outputs = [joined[0], joined[1], given, joined.t()]
    assert _aliases(outputs, [given]) == [False, True, True, True]  # the strided one is copied anyway
    text, image, same, strided = _fresh(outputs, _aliases(outputs, [given]))
    assert not torch._C._is_alias_of(text, image) and not torch._C._is_alias_of(same, given)
    assert torch.equal(torch.stack([text, image]), joined) and torch.equal(same, given)
    assert strided.is_contiguous() and torch.equal(strided, joined.t())


def test_quantized_weights_reach_the_compiled_region_as_their_inner_tensors():
    """torchao int8 weights cross the custom op as their int8 data and scales and are rebuilt
    in the region: the regional program equals the oracle on the same quantized model."""
    from cachedit_fx.quantization import quantize

    model, inputs = TINY_MODELS["flux"]()
    quantize(model, "int8_weight_only")
    steps = list(trajectory(inputs, 6))
    compiled = torch.compile(model, backend="cachedit", options=dict(
        Fn_compute_blocks=1, residual_diff_threshold=0.3, max_warmup_steps=2, inner_backend="aot_eager",
        regional_compile=True))
    got = run(compiled, steps)
    reference = ReferenceDBCache(model, BLOCK_LISTS["flux"], 1, 0, 0.3, warmup=2)
    want = run(reference, steps)
    reference.close()
    assert cachedit_fx.summary(compiled).cached_steps == reference.cached_steps != []
    assert all(max_rel_err(g, w) <= 1e-5 for g, w in zip(got, want))


def test_a_region_key_is_the_same_in_every_process():
    """Functions enter the key by name, not address: a later process finds the op name, and so
    Inductor's on-disk cache entry, of an equal region."""
    import subprocess
    import sys

    from cachedit_fx.runtime.region_op import region_key

    signature = "(('call_function', torch.nn.functional.silu, ('node', 0)), ('placeholder', (2, 3)))"
    code = f"import torch; from cachedit_fx.runtime.region_op import region_key; print(region_key(eval({signature!r})))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert other == region_key(eval(signature))
    assert region_key(eval(signature)) != region_key(eval(signature.replace("silu", "gelu")))
