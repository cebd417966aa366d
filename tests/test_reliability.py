"""Behaviour a demanding user or a serving engine relies on: no silent state mixing between
compiles, callers or requests; failed calls leave nothing behind; bad values are named; state
stays bounded; swapped classes pickle; non-finite diffs are reported apart."""

from __future__ import annotations

import asyncio
import gc
import logging
import math
import pickle
import threading
import warnings

import pytest
import torch

import cachedit_fx
from cachedit_fx.runtime.contexts import MAX_CONTEXTS
from cachedit_fx.runtime.registry import cache_for_model
from cachedit_fx.tiny_models import tiny_flux
from models import run, run_in_threads_interleaved, trajectory
from reference_dbcache import ReferenceDBCache

STEPS = 6
ALWAYS = 1e9
OPTIONS = dict(inner_backend="eager", Fn_compute_blocks=1, max_warmup_steps=1, num_inference_steps=STEPS)


def steps_of(inputs, seed=1, count=STEPS):
    return list(trajectory(inputs, count, seed=seed))


def test_two_compiles_of_one_module_keep_their_own_options():
    model, inputs = tiny_flux()
    always = torch.compile(model, backend="cachedit", options=dict(OPTIONS, residual_diff_threshold=ALWAYS))
    never = torch.compile(model, backend="cachedit", options=dict(OPTIONS, residual_diff_threshold=0.0))
    steps = steps_of(inputs)
    first = run(always, steps)
    assert cachedit_fx.summary(always).cached_steps == list(range(1, STEPS))
    run(never, steps)
    assert cachedit_fx.summary(never).cached_steps == []
    again = run(always, steps)
    assert cachedit_fx.summary(always).cached_steps == list(range(1, STEPS))
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_grad_mode_raises_naming_inference_only_use():
    model, inputs = tiny_flux()
    compiled = cachedit_fx.compile(model, **OPTIONS)
    with torch.enable_grad(), pytest.raises(RuntimeError, match="inference only.*no_grad"):
        compiled(**inputs, return_dict=False)
    model.requires_grad_(False)
    with torch.enable_grad():
        compiled(**inputs, return_dict=False)  # frozen weights: nothing to differentiate, it runs


@pytest.mark.parametrize("changes, needle", [
    (dict(Fn_compute_blocks=3), "refresh cannot change.*Fn_compute_blocks"),
    (dict(Fn_compute_blocks=100), "refresh cannot change.*Fn_compute_blocks"),
    (dict(residual_diff_threshold=float("nan")), "residual_diff_threshold must be a real number"),
    (dict(bogus_key=1), "unknown refresh option.*bogus_key"),
])
def test_refresh_validates_its_keys_and_values_before_and_after_compiling(changes, needle):
    model, inputs = tiny_flux()
    with pytest.raises(ValueError, match=needle):
        cachedit_fx.refresh(model, **changes)
    compiled = cachedit_fx.compile(model, **OPTIONS)
    run(compiled, steps_of(inputs, count=1))
    with pytest.raises(ValueError, match=needle):
        cachedit_fx.refresh(compiled, **changes)


def test_a_bad_refresh_before_compiling_raises_at_once_and_drops_nothing():
    model, inputs = tiny_flux()
    cachedit_fx.refresh(model, residual_diff_threshold=ALWAYS)
    with pytest.raises(ValueError, match="bogus_key"):
        cachedit_fx.refresh(model, bogus_key=1)
    compiled = cachedit_fx.compile(model, **dict(OPTIONS, residual_diff_threshold=0.0))
    run(compiled, steps_of(inputs))
    assert cachedit_fx.summary(compiled).cached_steps == list(range(1, STEPS))  # the queued threshold applied


@pytest.mark.parametrize("options, key", [
    (dict(residual_diff_threshold=float("nan")), "residual_diff_threshold"),
    (dict(residual_diff_threshold=-math.inf), "residual_diff_threshold"),
    (dict(max_accumulated_residual_diff_threshold=float("nan")), "max_accumulated_residual_diff_threshold"),
])
def test_non_real_thresholds_are_rejected(options, key):
    with pytest.raises(ValueError, match=key):
        cachedit_fx.parse_options(options)


def test_bad_dump_dir_is_named(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    for value, needle in ((str(a_file), "is not a folder"), (42, "must be a folder path"),
                          (str(a_file / "below"), "cannot be created")):
        with pytest.raises(ValueError, match=f"dump_dir.*{needle}|{needle}"):
            cachedit_fx.parse_options({"dump_dir": value})
    if not _is_root():
        with pytest.raises(ValueError, match="dump_dir.*not writable"):
            cachedit_fx.parse_options({"dump_dir": str(locked)})


def _is_root() -> bool:
    import os

    return hasattr(os, "geteuid") and os.geteuid() == 0


def test_a_warm_up_call_before_the_loop_changes_nothing():
    model, inputs = tiny_flux()
    steps = steps_of(inputs)
    options = dict(OPTIONS, residual_diff_threshold=0.35)
    plain = run(cachedit_fx.compile(model, **options), steps)
    plain_cached = cachedit_fx.summary(model).cached_steps
    cachedit_fx.disable(model)
    torch._dynamo.reset()
    compiled = cachedit_fx.compile(model, **options)
    run(compiled, steps[:1])  # warm-up with the first step's inputs
    warmed = run(compiled, steps)
    assert cachedit_fx.summary(compiled).num_steps == len(steps), "the warm-up call is not a step"
    assert cachedit_fx.summary(compiled).cached_steps == plain_cached
    assert all(torch.equal(a, b) for a, b in zip(warmed, plain))


def test_contexts_are_bounded_and_reading_creates_none():
    model, inputs = tiny_flux()
    compiled = cachedit_fx.compile(model, **OPTIONS)
    step = steps_of(inputs, count=1)
    for k in range(MAX_CONTEXTS + 16):
        with cachedit_fx.cache_context(compiled, f"req-{k}"):
            run(compiled, step)
    cache = cache_for_model(model)
    assert len(cache.contexts) == MAX_CONTEXTS and f"req-{MAX_CONTEXTS + 15}" in cache.contexts
    assert "req-0" not in cache.contexts
    empty = cachedit_fx.summary(compiled, context="never-used")
    assert empty.num_steps == 0 and "never-used" not in cache.contexts


def test_a_sequential_head_is_not_a_block_list():
    class SequentialOnly(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj_out = torch.nn.Sequential(*(torch.nn.Linear(8, 8) for _ in range(3)))

        def forward(self, x):
            return self.proj_out(x)

    with pytest.raises(cachedit_fx.UnsupportedGraph, match="no repeated transformer blocks found"):
        cachedit_fx.inspect(SequentialOnly(), (torch.randn(2, 8),))


def test_marked_blocks_and_a_compiled_pipeline_pickle_as_their_original_classes():
    from cachedit_fx.tiny_pipelines import tiny_flux_pipeline

    model, inputs = tiny_flux()
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
    cachedit_fx.trace_blocks_once(model)
    restored = pickle.loads(pickle.dumps(model))
    block = restored.transformer_blocks[0]
    assert type(block).__name__ == "FluxTransformerBlock" and not hasattr(type(block), "_cachedit_fx_original_class")
    with torch.no_grad():
        torch.testing.assert_close(restored(**inputs, return_dict=False)[0], expected, rtol=0, atol=0)

    pipe = tiny_flux_pipeline(0)
    pipe_class, transformer = type(pipe), pipe.transformer
    cachedit_fx.compile(pipe, **OPTIONS)
    restored = pickle.loads(pickle.dumps(pipe))
    assert type(restored) is pipe_class and type(restored.transformer) is type(transformer)
    assert not hasattr(restored, "_cachedit_fx_originals")


def test_non_finite_diffs_are_counted_apart_and_never_cache(caplog):
    model, inputs = tiny_flux()
    steps = steps_of(inputs)
    steps[3] = dict(steps[3], hidden_states=torch.full_like(steps[3]["hidden_states"], float("nan")))
    compiled = cachedit_fx.compile(model, **dict(OPTIONS, residual_diff_threshold=ALWAYS))
    with caplog.at_level(logging.INFO, logger="cachedit_fx"):
        run(compiled, steps)
    summary = cachedit_fx.summary(compiled)
    # step 3's NaN residual makes step 4's diff NaN too; step 5 compares finite values again
    assert summary.nonfinite_diff_steps == [3, 4] and summary.cached_steps == [1, 2, 5]
    assert all(math.isfinite(v) for v in (summary.diff_min, summary.diff_p50, summary.diff_max))
    assert "2 non-finite at steps [3, 4]" in str(summary)
    done = [r.getMessage() for r in caplog.records if "generation done" in r.getMessage()]
    assert done and "2 non-finite diffs at steps [3, 4]" in done[-1]


SOLO = dict(OPTIONS, residual_diff_threshold=0.35, cache_kernels="torch")  # Triton's CPU interpreter is not thread-safe


def _solo(model, steps, **options):
    compiled = cachedit_fx.compile(model, **{**SOLO, **options})
    out = run(compiled, steps)
    return out, cachedit_fx.summary(compiled).cached_steps


def _two_requests():
    model, inputs = tiny_flux()
    first = steps_of(inputs, seed=1)
    other = dict(inputs, hidden_states=torch.randn(inputs["hidden_states"].shape,
                                                   generator=torch.Generator().manual_seed(7)))
    return model, first, steps_of(other, seed=2)


def _solo_runs_then_a_fresh_compile(model, *requests, **options):
    """Each request's solo run, then the model compiled afresh (Dynamo reset), ``options``
    added to both."""
    want = [_solo(model, steps, **options) for steps in requests]
    cachedit_fx.disable(model)
    torch._dynamo.reset()
    return want, cachedit_fx.compile(model, **{**SOLO, **options})


def test_threads_and_asyncio_tasks_without_contexts_never_share_cache_state():
    model, first, second = _two_requests()
    want, compiled = _solo_runs_then_a_fresh_compile(model, first, second)
    run(compiled, first[:1])  # compile once on the main thread
    cachedit_fx.refresh(compiled)
    threaded = run_in_threads_interleaved(compiled, first, second)

    async def request(steps):
        outputs = []
        for step in steps:
            outputs.append(run(compiled, [step])[0])
            await asyncio.sleep(0)  # let the other request take a step
        return outputs, cachedit_fx.summary(compiled).cached_steps

    async def serve():
        return await asyncio.gather(request(first), request(second))

    for got in threaded, asyncio.run(serve()):
        for (outputs, cached), (want_out, want_cached) in zip(got, want):
            assert cached == want_cached
            assert all(torch.equal(a, b) for a, b in zip(outputs, want_out))


def _held_bytes(cache) -> int:
    from cachedit_fx.runtime.memory import stream_memory

    return sum(s.held_bytes for state in cache.contexts.values() for s in stream_memory(state))


def test_fifty_contexts_opened_and_closed_hold_nothing_afterwards():
    model, inputs = tiny_flux()
    compiled = cachedit_fx.compile(model, **dict(OPTIONS, residual_diff_threshold=ALWAYS, cache_kernels="torch"))
    steps = steps_of(inputs, count=3)
    run(compiled, steps)
    cache = cache_for_model(model)
    baseline = (len(cache.contexts), _held_bytes(cache))
    for k in range(50):
        handle = cachedit_fx.cache_context(compiled, f"req-{k}")
        with handle:
            run(compiled, steps)
        handle.close()

    def per_thread_request():
        run(compiled, steps)

    threads = [threading.Thread(target=per_thread_request) for _ in range(10)]
    for t in threads:
        t.start()
        t.join()
    del threads
    gc.collect()
    assert (len(cache.contexts), _held_bytes(cache)) == baseline


FAILURES = {
    "timestep None": lambda inputs: dict(inputs, timestep=None),
    "wrong latent width": lambda inputs: dict(inputs, hidden_states=torch.randn(1, 16, 5)),
}


def test_a_failed_call_leaves_this_model_and_a_fresh_one_as_in_a_clean_process():
    model, inputs = tiny_flux()
    steps = steps_of(inputs)
    fresh, _ = tiny_flux(seed=3)
    want = _solo(model, steps)
    want_fresh = _solo(fresh, steps)
    for kind, failing in sorted(FAILURES.items()):
        for m in (model, fresh):
            cachedit_fx.disable(m)
        torch._dynamo.reset()
        compiled = cachedit_fx.compile(model, **SOLO)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(Exception):
                run(compiled, [failing(steps[0])])
        got = run(compiled, steps)
        assert cachedit_fx.summary(compiled).cached_steps == want[1], kind
        assert all(torch.equal(a, b) for a, b in zip(got, want[0])), kind
        compiled_fresh = cachedit_fx.compile(fresh, **SOLO)
        got_fresh = run(compiled_fresh, steps)
        assert cachedit_fx.summary(compiled_fresh).cached_steps == want_fresh[1], kind
        assert all(torch.equal(a, b) for a, b in zip(got_fresh, want_fresh[0])), kind


@pytest.mark.parametrize("in_graph", [True, False], ids=["in-program", "parts"])
def test_an_error_inside_the_cached_region_restarts_the_generation_and_the_next_one_is_clean(monkeypatch, in_graph):
    """The middle raises at the third computed step (in the program: inside the ``torch.cond``'s
    compute branch, after the program read its state; in parts: at the third call of the parts).
    The next call starts a new generation: the rest of the loop runs as a fresh request would.
    Compiled with plain ``torch.compile`` (no ``cachedit_fx.compile`` wrapper to refresh it), so
    the compiled program's own recovery is what is checked."""
    from cachedit_fx.runtime.cond_parts import CondParts
    from cachedit_fx.runtime.dbcache_step import ComputeBranch

    model, inputs = tiny_flux()
    steps = steps_of(inputs)
    options = dict(in_graph_decision=in_graph, max_warmup_steps=2)
    (want, want_rest), _ = _solo_runs_then_a_fresh_compile(model, steps, steps[2:], **options)
    cachedit_fx.disable(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="cachedit", options={**SOLO, **options})
    owner, name = (ComputeBranch, "forward") if in_graph else (CondParts, "__call__")
    original = getattr(owner, name)
    calls = []

    def failing(self, *operands):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("injected failure in the middle")
        return original(self, *operands)

    monkeypatch.setattr(owner, name, failing)
    with pytest.raises(Exception, match="injected failure"):
        run(compiled, steps[:4])
    monkeypatch.undo()
    rest = run(compiled, steps[2:])
    assert cachedit_fx.summary(compiled).cached_steps == want_rest[1]
    assert all(torch.equal(a, b) for a, b in zip(rest, want_rest[0]))
    got = run(compiled, steps)
    assert cachedit_fx.summary(compiled).cached_steps == want[1]
    assert all(torch.equal(a, b) for a, b in zip(got, want[0]))


def test_an_aborted_request_then_a_new_one_at_a_lower_timestep_needs_only_a_refresh_or_its_own_thread():
    """A hand loop aborts a request after 3 steps; the next request starts lower (img2img). With
    ``refresh`` at its start, or run in a thread of its own, it equals the same request run in a
    fresh process: no residual of the aborted request is used."""
    model, inputs = tiny_flux()
    aborted = steps_of(inputs)[:3]
    img2img = [dict(step, timestep=step["timestep"] * 0.5)
               for step in steps_of(dict(inputs, hidden_states=torch.randn(inputs["hidden_states"].shape,
                                                                          generator=torch.Generator().manual_seed(9))))]
    (want,), compiled = _solo_runs_then_a_fresh_compile(model, img2img)
    run(compiled, aborted)
    cachedit_fx.refresh(compiled)
    got = run(compiled, img2img)
    assert cachedit_fx.summary(compiled).cached_steps == want[1]
    assert all(torch.equal(a, b) for a, b in zip(got, want[0]))

    run(compiled, aborted)
    result = {}
    thread = threading.Thread(target=lambda: result.update(
        out=run(compiled, img2img), cached=cachedit_fx.summary(compiled).cached_steps))
    thread.start()
    thread.join()
    assert result["cached"] == want[1]
    assert all(torch.equal(a, b) for a, b in zip(result["out"], want[0]))


@pytest.mark.parametrize("options, needle", [
    (dict(inductor_options="max_autotune"), "inductor_options must be a dict"),
    (dict(inductor_options={"max_autotune_bogus": True}), r"inductor_options: unknown.*max_autotune_bogus"),
    (dict(mode="fastest"), "mode must be None or one of"),
])
def test_inductor_options_and_mode_are_named_at_compile(options, needle):
    model, _ = tiny_flux()
    with pytest.raises(ValueError, match=needle):
        cachedit_fx.compile(model, **options)


@pytest.mark.parametrize("field, value, needle", [
    ("residual_diff_threshold", float("nan"), "residual_diff_threshold must be a real number"),
    ("residual_diff_threshold", "0.1", "residual_diff_threshold must be a number"),
    ("Fn_compute_blocks", 0, "Fn_compute_blocks must be >= 1"),
    ("steps_computation_mask", [1, 2], "steps_computation_mask must be a non-empty list of 0/1"),
])
def test_a_config_changed_after_construction_is_checked_at_compile_and_copied(field, value, needle):
    model, inputs = tiny_flux()
    config = cachedit_fx.DBCacheConfig(Fn_compute_blocks=1, max_warmup_steps=1, residual_diff_threshold=ALWAYS)
    setattr(config, field, value)
    with pytest.raises(ValueError, match=needle):
        cachedit_fx.compile(model, cache_config=config, inner_backend="eager")
    setattr(config, field, getattr(cachedit_fx.DBCacheConfig(Fn_compute_blocks=1, max_warmup_steps=1,
                                                             residual_diff_threshold=ALWAYS), field))
    compiled = cachedit_fx.compile(model, cache_config=config, inner_backend="eager")
    config.residual_diff_threshold = 0.0  # after compiling: the compiled model keeps its copy
    run(compiled, steps_of(inputs)[:3])
    assert cachedit_fx.summary(compiled).cached_steps == [1, 2]


@pytest.mark.parametrize("in_graph", [None, False], ids=["in-program", "parts"])
def test_a_call_that_needs_gradients_is_never_answered_detached(in_graph):
    """Frozen weights but latents that require grad under ``enable_grad``: the host decision
    raises (it would return a detached output); the in-graph program differentiates."""
    model, inputs = tiny_flux()
    model.requires_grad_(False)
    compiled = cachedit_fx.compile(model, **dict(OPTIONS, in_graph_decision=in_graph))
    latents = inputs["hidden_states"].clone().requires_grad_(True)
    with torch.enable_grad():
        if in_graph is False:
            with pytest.raises(RuntimeError, match="inference only.*input that requires grad|inference only"):
                compiled(**dict(inputs, hidden_states=latents), return_dict=False)
        else:
            out = compiled(**dict(inputs, hidden_states=latents), return_dict=False)[0]
            out.sum().backward()
            eager = model(**dict(inputs, hidden_states=latents.detach().requires_grad_(True)), return_dict=False)[0]
            assert out.requires_grad and latents.grad is not None
            torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)


def _framepack(single_layers: int = 4):
    from cachedit_fx.example_inputs import tiny_model

    model, inputs = tiny_model("HunyuanVideoFramepackTransformer3DModel")
    return type(model)(**{**model.config, "num_single_layers": single_layers}).eval(), inputs


@pytest.mark.parametrize("single_layers, regional", [(2, False), (3, True)])
def test_a_carried_value_of_data_dependent_size_caches_in_the_program(single_layers, regional, caplog):
    """FramePack keeps as many text tokens as its mask holds, so a carried value's size is
    known only at run time: the step stores it at its upper bound and reads the call's part.
    It decides in the program and equals the eager oracle; regional compilation keeps the
    blocks of data-dependent sizes in the program (a custom op cannot make such a size)."""
    model, inputs = _framepack(single_layers)
    steps = [dict(inputs, timestep=inputs["timestep"] * (1 - k / 10)) for k in range(4)]
    reference = ReferenceDBCache(model, ["transformer_blocks"], 1, 0, threshold=ALWAYS, warmup=1)
    want = run(reference, steps)
    reference.close()
    torch._dynamo.reset()
    compiled = cachedit_fx.compile(model, **dict(OPTIONS, residual_diff_threshold=ALWAYS, regional_compile=regional))
    with caplog.at_level(logging.INFO, logger="cachedit_fx"):
        got = run(compiled, steps)
    assert any("one program (decision in the graph)" in r.message for r in caplog.records)
    assert regional == any("has a data-dependent size" in r.message for r in caplog.records)
    assert cachedit_fx.summary(compiled).cached_steps == reference.cached_steps == [1, 2, 3]
    assert all(torch.equal(a, b) for a, b in zip(got, want))


@pytest.mark.parametrize("cache", ["dbcache", "dbprune"])
def test_a_data_dependent_size_that_changes_is_computed_not_forecast(cache):
    """The text mask shrinks mid-generation: the carried text residual no longer fits, so that
    step computes (it equals the model's own output) and the next one caches from it."""
    model, inputs = _framepack()
    shorter = inputs["encoder_attention_mask"].clone()
    shorter[:, -3:] = 0
    steps = [dict(inputs, timestep=inputs["timestep"] * (1 - k / 10),
                  encoder_attention_mask=shorter if k >= 3 else inputs["encoder_attention_mask"]) for k in range(5)]
    options = dict(OPTIONS, residual_diff_threshold=ALWAYS)
    if cache == "dbprune":
        options["cache_config"] = cachedit_fx.DBPruneConfig(Fn_compute_blocks=1, max_warmup_steps=1)
    torch._dynamo.reset()
    compiled = cachedit_fx.compile(model, **options)
    got = run(compiled, steps)
    assert cachedit_fx.summary(compiled).cached_steps == [1, 2, 4]
    want = run(model, steps[3:4])[0]
    torch.testing.assert_close(got[3], want, rtol=1e-5, atol=1e-5)
    assert not torch.equal(got[4], run(model, steps[4:5])[0])


def test_plain_torch_compile_falls_back_naming_the_capture_remedy_for_that_model():
    """Mochi's blocks use a data-dependent mask: under a plain ``torch.compile`` Dynamo breaks
    the graph there (a backend cannot set capture settings for one model), so the fallback
    warning names the remedy; ``cachedit_fx.compile`` applies it for this model's calls only."""
    from cachedit_fx.example_inputs import tiny_model

    model, inputs = tiny_model("MochiTransformer3DModel")
    plain = torch.compile(model, backend="cachedit", options=dict(OPTIONS, residual_diff_threshold=ALWAYS))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(plain, [inputs])
    messages = [str(w.message) for w in caught if "compiling without cache" in str(w.message)]
    assert messages and all("cachedit_fx.compile(model, ...)" in m and "capture_scalar_outputs=True" in m
                            for m in messages)
    assert not torch._dynamo.config.capture_scalar_outputs
    torch._dynamo.reset()
    compiled = cachedit_fx.compile(model, **dict(OPTIONS, residual_diff_threshold=ALWAYS))
    run(compiled, [dict(inputs, timestep=inputs["timestep"] * (1 - k / 10)) for k in range(3)])
    assert cachedit_fx.summary(compiled).cached_steps == [1, 2]
    assert not torch._dynamo.config.capture_scalar_outputs
