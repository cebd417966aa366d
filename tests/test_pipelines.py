"""``cachedit_fx.compile`` on whole diffusers pipelines (tiny, offline, from config).

Per-step latents come from ``callback_on_step_end``. A cached pipeline must equal the
uncached one up to its first cached step and differ there; with caching it must equal the
independent eager oracle (``reference_dbcache.py``) run on the same pipeline; each call
starts a new generation with that call's step count.
"""

from __future__ import annotations

import logging

import pytest
import torch

import cachedit_fx
from cachedit_fx.tiny_pipelines import default_call_kwargs, tiny_flux_pipeline, tiny_wan_pipeline
from reference_dbcache import ReferenceDBCache

FLUX = dict(Fn_compute_blocks=1, residual_diff_threshold=0.3, max_warmup_steps=1, inner_backend="eager")
WAN = dict(Fn_compute_blocks=1, residual_diff_threshold=0.08, max_warmup_steps=1, inner_backend="eager")


@pytest.fixture(autouse=True)
def one_thread(fresh_dynamo):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def generate(pipe, name: str, steps: int = 8, output_type: str = "latent", seed: int = 0):
    """(pipeline output, latents after every step)."""
    recorded = []

    def on_step(_pipe, _i, _t, kwargs):
        recorded.append(kwargs["latents"].clone())
        return {}

    out = pipe(**dict(default_call_kwargs(name), num_inference_steps=steps), output_type=output_type,
               generator=torch.Generator().manual_seed(seed), callback_on_step_end=on_step,
               callback_on_step_end_tensor_inputs=["latents"])
    return out, recorded


def assert_differs_only_from(first_cached: int, cached, plain) -> None:
    for step, (got, want) in enumerate(zip(cached, plain)):
        if step < first_cached:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=f"step {step} was computed")
        elif step == first_cached:
            assert not torch.allclose(got, want, rtol=1e-5, atol=1e-6), f"cached step {step} changed nothing"


def with_oracle(pipe, transformer, **config):
    """The eager oracle hooked onto ``pipe``'s ``transformer`` (every transformer call is a step)."""
    return ReferenceDBCache(transformer, ["transformer_blocks", "single_transformer_blocks"], **config)


def test_flux_pipeline_caches_like_the_oracle_and_differs_only_on_cached_steps(caplog):
    plain_out, plain = generate(tiny_flux_pipeline(0), "flux")

    oracle_pipe = tiny_flux_pipeline(0)
    oracle = with_oracle(oracle_pipe, oracle_pipe.transformer, Fn=1, Bn=0, threshold=0.3, warmup=1)
    oracle_out, _ = generate(oracle_pipe, "flux")

    pipe = cachedit_fx.compile(tiny_flux_pipeline(0), **FLUX)
    with caplog.at_level(logging.INFO, logger="cachedit_fx"):
        out, cached = generate(pipe, "flux")
    summary = cachedit_fx.summary(pipe.transformer)
    assert summary.num_steps == 8 and 0 < summary.num_cached_steps < 8
    assert summary.cached_steps == oracle.cached_steps
    torch.testing.assert_close(out.images, oracle_out.images, rtol=1e-5, atol=1e-6)
    assert_differs_only_from(summary.cached_steps[0], cached, plain)
    done = [r.getMessage() for r in caplog.records if "generation done" in r.getMessage()]
    assert len(done) == 1 and f"{summary.num_cached_steps}/8 steps cached" in done[0]
    assert plain_out.images.shape == out.images.shape


def test_threshold_zero_pipeline_equals_the_plain_pipeline():
    _, plain = generate(tiny_flux_pipeline(0), "flux", steps=5)
    pipe = cachedit_fx.compile(tiny_flux_pipeline(0), **dict(FLUX, residual_diff_threshold=0.0))
    _, cached = generate(pipe, "flux", steps=5)
    assert cachedit_fx.summary(pipe.transformer).num_cached_steps == 0
    for got, want in zip(cached, plain):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_step_count_changes_between_calls_equal_fresh_compiles():
    pipe = cachedit_fx.compile(tiny_flux_pipeline(0), **FLUX)
    runs = {steps: generate(pipe, "flux", steps=steps)[0].images for steps in (8, 5, 8)}
    assert cachedit_fx.summary(pipe.transformer).num_steps == 8
    for steps in (8, 5):
        torch._dynamo.reset()
        fresh = cachedit_fx.compile(tiny_flux_pipeline(0), **FLUX)
        want = generate(fresh, "flux", steps=steps)[0].images
        torch.testing.assert_close(runs[steps], want, rtol=0, atol=0)
        assert cachedit_fx.summary(fresh.transformer).num_steps == steps


def test_pil_output_and_disable():
    plain_pipe = tiny_flux_pipeline(0)
    plain_images = generate(plain_pipe, "flux", output_type="pil")[0].images
    pipe = tiny_flux_pipeline(0)
    original_class, original_transformer = type(pipe), pipe.transformer
    cachedit_fx.compile(pipe, **FLUX)
    assert type(pipe).__name__ == original_class.__name__ and isinstance(pipe, original_class)
    images = generate(pipe, "flux", output_type="pil")[0].images
    assert len(images) == 1 and images[0].size == plain_images[0].size
    assert cachedit_fx.summary(pipe.transformer).num_cached_steps > 0
    with pytest.raises(ValueError, match="already compiled"):
        cachedit_fx.compile(pipe, **FLUX)
    cachedit_fx.disable(pipe)
    assert type(pipe) is original_class and pipe.transformer is original_transformer
    again = generate(pipe, "flux", output_type="pil")[0].images
    assert list(again[0].getdata()) == list(plain_images[0].getdata())


def test_wan_pipeline_with_cfg_gets_two_streams():
    _, plain = generate(tiny_wan_pipeline(0), "wan")
    pipe = cachedit_fx.compile(tiny_wan_pipeline(0), **WAN)
    out, cached = generate(pipe, "wan", output_type="pil")
    cond, uncond = cachedit_fx.summary(pipe.transformer), cachedit_fx.summary(pipe.transformer, stream="uncond")
    assert cond.num_steps == uncond.num_steps == 8
    first = min(cond.cached_steps + uncond.cached_steps)
    assert_differs_only_from(first, cached, plain)
    assert len(out.frames[0]) == default_call_kwargs("wan")["num_frames"]
    _, again = generate(pipe, "wan")
    assert cachedit_fx.summary(pipe.transformer).cached_steps == cond.cached_steps
    torch.testing.assert_close(again[-1], cached[-1], rtol=0, atol=0)


def test_wan22_experts_get_their_own_configs():
    _, plain = generate(tiny_wan_pipeline(0, two_experts=True), "wan")
    pipe = cachedit_fx.compile(tiny_wan_pipeline(0, two_experts=True), cache_config={
        "transformer": cachedit_fx.DBCacheConfig(Fn_compute_blocks=1, residual_diff_threshold=0.0),
        "transformer_2": cachedit_fx.DBCacheConfig(Fn_compute_blocks=1, residual_diff_threshold=0.2,
                                                   max_warmup_steps=1)}, inner_backend="eager")
    _, cached = generate(pipe, "wan")
    high, low = cachedit_fx.summary(pipe.transformer), cachedit_fx.summary(pipe.transformer_2)
    assert high.num_steps + low.num_steps == 8 and high.num_steps > 0 and low.num_steps > 0
    assert high.num_cached_steps == 0 and low.num_cached_steps > 0
    assert_differs_only_from(high.num_steps + low.cached_steps[0], cached, plain)
    with pytest.raises(ValueError, match="transformer_3"):
        cachedit_fx.compile(tiny_wan_pipeline(0, two_experts=True), cache_config={"transformer_3": None})


def test_compile_rejects_unknown_arguments_and_non_pipelines():
    with pytest.raises(ValueError, match="not_an_option"):
        cachedit_fx.compile(tiny_flux_pipeline(0), not_an_option=1)
    with pytest.raises(TypeError, match="neither an nn.Module nor a diffusers pipeline"):
        cachedit_fx.compile(object())


def test_pipeline_cache_contexts_cover_every_transformer():
    pipe = cachedit_fx.compile(tiny_wan_pipeline(0, two_experts=True), **WAN)
    a, b = cachedit_fx.cache_context(pipe, "a"), cachedit_fx.cache_context(pipe, "b")
    with a:
        want = generate(pipe, "wan", steps=8)[1][-1]
    with b:
        generate(pipe, "wan", steps=6, seed=1)
    for name, steps in (("a", 8), ("b", 6)):
        counted = sum(cachedit_fx.summary(expert, context=name).num_steps
                      for expert in (pipe.transformer, pipe.transformer_2))
        assert counted == steps, name
    with pytest.raises(ValueError, match="2 transformers"):
        cachedit_fx.summary(pipe)
    with pytest.raises(ValueError, match="spans 2 models"):
        a.summary()
    with a:
        torch.testing.assert_close(generate(pipe, "wan", steps=8)[1][-1], want, rtol=0, atol=0)
    b.close()
