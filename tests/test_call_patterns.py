"""Call patterns of real serving code on the default decision: shape, dtype and grad-mode
switches mid-generation (static and dynamic graphs), threads started cold, worker pools, asyncio
tasks and ``to_thread``, warm-up calls, aborted and very long generations. Each result is
compared with the eager reference (``reference_dbcache.py``) restarted where the README says a
generation restarts, or with the same request run alone."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import cachedit_fx
from cachedit_fx.runtime.registry import cache_for_model
from cachedit_fx.tiny_models import tiny_flux, tiny_wan
from cachedit_fx.tiny_pipelines import default_call_kwargs, tiny_flux_pipeline
from models import ToyChain, run, trajectory
from reference_dbcache import ReferenceDBCache

ALWAYS = 1e9
FLUX_LISTS = ["transformer_blocks", "single_transformer_blocks"]
OPTIONS = dict(inner_backend="eager", Fn_compute_blocks=1, max_warmup_steps=1, residual_diff_threshold=ALWAYS)


def _sized(inputs: dict, batch: int = 1, tokens: int = 16) -> dict:
    """Tiny FLUX inputs for ``batch`` samples of ``tokens`` image tokens (text and ids kept)."""
    generator = torch.Generator().manual_seed(100 * batch + tokens)
    sized = dict(inputs)
    sized["hidden_states"] = torch.randn(batch, tokens, inputs["hidden_states"].shape[-1], generator=generator)
    sized["img_ids"] = torch.randn(tokens, 3, generator=generator)
    sized["encoder_hidden_states"] = inputs["encoder_hidden_states"].expand(batch, -1, -1).contiguous()
    sized["pooled_projections"] = inputs["pooled_projections"].expand(batch, -1).contiguous()
    sized["timestep"] = inputs["timestep"].expand(batch).contiguous()
    return sized


def _reference(model, segments: list[list[dict]], **options) -> list[torch.Tensor]:
    """The eager reference over ``segments``, a new generation at the start of each."""
    reference = ReferenceDBCache(model, FLUX_LISTS, 1, 0, options.get("threshold", ALWAYS), warmup=1)
    outputs = []
    for segment in segments:
        reference.reset()
        outputs += run(reference, segment)
    reference.close()
    return outputs


def _assert_equal_outputs(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for step, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=f"step {step}")


@pytest.mark.parametrize("switch, dynamic", [("batch", None), ("batch", False), ("batch", True), ("resolution", None)],
                         ids=["batch-automatic-dynamic", "batch-static", "batch-dynamic", "resolution"])
def test_a_shape_switch_mid_generation_restarts_it_and_never_applies_the_old_residual(switch, dynamic):
    """Steps at shape A, one step at shape B, then A again: every switch starts a new
    generation, so no step after it is cached from a residual of before it."""
    model, inputs = tiny_flux()
    other = dict(batch=2) if switch == "batch" else dict(tokens=36)
    a, b = list(trajectory(_sized(inputs), 7)), list(trajectory(_sized(inputs, **other), 7))
    sequence = [a[0], a[1], a[2], b[3], a[4], a[5], a[6]]
    want = _reference(model, [sequence[:3], sequence[3:4], sequence[4:]])
    compiled = torch.compile(model, backend="cachedit", options=OPTIONS, dynamic=dynamic)
    got = run(compiled, sequence)
    _assert_equal_outputs(got, want)
    assert cachedit_fx.summary(compiled).cached_steps == [1, 2], "the last generation runs steps 4-6"


def test_dynamic_shapes_with_the_capture_settings_decide_in_the_program(caplog):
    """``cachedit_fx.compile(..., dynamic=True)``: Dynamo reads each norm's eps with ``.item()``
    (a float it guards), which inside a ``torch.cond`` branch would be data-dependent; the step
    takes it as the constant it is, compiles through AOTAutograd from Dynamo's own inputs, and a
    second resolution reuses the graph and equals the oracle."""
    model, inputs = tiny_flux()
    compiled = cachedit_fx.compile(model, dynamic=True, **dict(OPTIONS, inner_backend="aot_eager"))
    segments = [list(trajectory(_sized(inputs, tokens=tokens), 3)) for tokens in (16, 36)]
    with caplog.at_level(logging.INFO, logger="cachedit_fx"):
        got = run(compiled, segments[0] + segments[1])
    assert sum("one program (decision in the graph)" in r.message for r in caplog.records) == 1
    assert cachedit_fx.summary(compiled).cached_steps == [1, 2]
    _assert_equal_outputs(got, _reference(model, segments))


class ScaledBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(32, 32)

    def forward(self, hidden_states: torch.Tensor, scale: float) -> torch.Tensor:
        return hidden_states + torch.tanh(self.lin(hidden_states)) * scale


class ScaledChain(torch.nn.Module):
    """Blocks that read a float computed from the token count, as attention scales are, on
    tokens grouped by four (a size ``s // 4``, whose strides Dynamo writes ``32*Max(1, s//4)``)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(ScaledBlock() for _ in range(4))

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, return_dict: bool = True):
        scale = hidden_states.shape[1] ** -0.5
        h = (hidden_states + timestep.reshape(-1, 1, 1) * 1e-3).reshape(1, -1, 32)
        for block in self.blocks:
            h = block(h, scale)
        return (h.reshape(hidden_states.shape),)


def test_a_symbolic_float_the_middle_blocks_read_crosses_into_the_branch(caplog):
    """Under ``dynamic=True`` the scale ``tokens ** -0.5`` stays a symbolic float, which a
    ``torch.cond`` branch cannot take: it crosses as a 0-d tensor read back inside the branch;
    the carried value's strides are not plain products of its sizes: the branches return it
    flat. Two resolutions on one graph equal the oracle, in the program and in its parts."""
    torch.manual_seed(0)
    model = ScaledChain()
    segments = [list(trajectory(dict(hidden_states=torch.randn(1, tokens, 8), timestep=torch.tensor([900.0])), 4))
                for tokens in (16, 36)]
    reference = ReferenceDBCache(model, ["blocks"], 1, 0, 0.3, warmup=1)
    want = []
    for segment in segments:
        reference.reset()
        want += run(reference, segment)
    reference.close()
    for in_graph in (None, False):
        torch._dynamo.reset()
        compiled = cachedit_fx.compile(model, dynamic=True, **dict(
            OPTIONS, inner_backend="aot_eager", residual_diff_threshold=0.3, in_graph_decision=in_graph))
        with caplog.at_level(logging.INFO, logger="cachedit_fx"):
            got = run(compiled, segments[0] + segments[1])
        assert "without cache" not in caplog.text
        assert cachedit_fx.summary(compiled).cached_steps, "the check needs cached steps"
        _assert_equal_outputs(got, want)
        cachedit_fx.disable(model)


@pytest.mark.parametrize("in_graph", [None, False], ids=["in-program", "parts"])
def test_a_text_length_switch_restarts_the_generation_on_both_decisions(in_graph):
    """Wan's text states are no carried value (cross-attention reads them): the state shapes
    stay, yet a call with another text length starts a new generation, as on the host."""
    model, inputs = tiny_wan()
    steps = list(trajectory(inputs, 6))
    longer = torch.randn(1, 20, inputs["encoder_hidden_states"].shape[-1], generator=torch.Generator().manual_seed(4))
    steps[3:] = [dict(step, encoder_hidden_states=longer) for step in steps[3:]]
    reference = ReferenceDBCache(model, ["blocks"], 1, 0, ALWAYS, warmup=1)
    want = run(reference, steps[:3])
    reference.reset()
    want += run(reference, steps[3:])
    reference.close()
    compiled = torch.compile(model, backend="cachedit", options=dict(
        OPTIONS, enable_separate_cfg=False, in_graph_decision=in_graph))
    _assert_equal_outputs(run(compiled, steps), want)
    assert cachedit_fx.summary(compiled).cached_steps == [1, 2]


def test_a_dtype_switch_mid_generation_restarts_it():
    model, inputs = tiny_flux()
    steps = list(trajectory(inputs, 6))
    as_double = [{k: v.double() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in s.items()}
                 for s in steps]
    reference = ReferenceDBCache(model, FLUX_LISTS, 1, 0, ALWAYS, warmup=1)
    want = run(reference, steps[:3])
    model.double()
    reference.reset()
    want += run(reference, as_double[3:])
    reference.close()
    model.float()
    compiled = torch.compile(model, backend="cachedit", options=OPTIONS)
    got = run(compiled, steps[:3])
    model.double()
    got += run(compiled, as_double[3:])
    _assert_equal_outputs(got, want)
    assert cachedit_fx.summary(compiled).cached_steps == [1, 2]


@pytest.mark.parametrize("first", ["no_grad", "inference_mode"])
def test_grad_modes_alternating_within_a_generation_continue_it(first):
    """Dynamo compiles a graph per grad mode; the generation continues across them."""
    model, inputs = tiny_flux()
    steps = list(trajectory(inputs, 6))
    want = _reference(model, [steps], threshold=0.6)
    compiled = torch.compile(model, backend="cachedit", options=dict(OPTIONS, residual_diff_threshold=0.6))
    modes = [torch.no_grad, torch.inference_mode]
    if first == "inference_mode":
        modes.reverse()
    got = []
    for k, step in enumerate(steps):
        with modes[k % 2]():
            got.append(compiled(**step, return_dict=False)[0].clone())
    _assert_equal_outputs(got, want)
    reference_cached = ReferenceDBCache(model, FLUX_LISTS, 1, 0, 0.6, warmup=1)
    run(reference_cached, steps)
    assert cachedit_fx.summary(compiled).cached_steps == reference_cached.cached_steps != []


def test_threads_started_cold_at_once_each_keep_their_generation():
    """Two threads make the first call of a fresh compile at the same moment (Dynamo may compile
    a graph for each); each thread's generation equals its solo run."""
    model, inputs = tiny_flux()
    requests = [list(trajectory(inputs, 5, seed=seed)) for seed in (1, 2)]
    want = [_reference(model, [steps]) for steps in requests]
    compiled = torch.compile(model, backend="cachedit", options=OPTIONS)
    barrier, results = threading.Barrier(2), {}

    def request(key: int) -> None:
        outputs = []
        for step in requests[key]:
            barrier.wait()
            outputs.append(run(compiled, [step])[0])
        results[key] = (outputs, cachedit_fx.summary(compiled).cached_steps)

    threads = [threading.Thread(target=request, args=(k,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for key in range(2):
        outputs, cached = results[key]
        _assert_equal_outputs(outputs, want[key])
        assert cached == [1, 2, 3, 4]


def test_to_thread_steps_of_one_task_cache_inside_a_context_and_warn_without_one(caplog):
    """``asyncio.to_thread`` runs each call in a copy of the task's context: with a
    ``cache_context`` entered in the task the steps form one generation (equal to the solo
    run); without one nothing can cache, and the model says so once."""
    model, inputs = tiny_flux()
    requests = [list(trajectory(inputs, 5, seed=seed)) for seed in (1, 2)]
    want = [_reference(model, [steps]) for steps in requests]
    compiled = torch.compile(model, backend="cachedit", options=OPTIONS)
    run(compiled, requests[0][:1])

    async def request(key: int, in_context: bool):
        outputs = []
        context = cachedit_fx.cache_context(compiled, f"request-{key}") if in_context else None
        for step in requests[key]:
            if context is not None:
                with context:
                    outputs.append((await asyncio.to_thread(run, compiled, [step]))[0])
            else:
                outputs.append((await asyncio.to_thread(run, compiled, [step]))[0])
        summary = cachedit_fx.summary(compiled, context=f"request-{key}") if in_context else None
        return outputs, summary

    async def serve(in_context: bool):
        return await asyncio.gather(request(0, in_context), request(1, in_context))

    for key, (outputs, summary) in enumerate(asyncio.run(serve(True))):
        _assert_equal_outputs(outputs, want[key])
        assert summary.cached_steps == [1, 2, 3, 4]
    with caplog.at_level(logging.WARNING, logger="cachedit_fx"):
        results = asyncio.run(serve(False))
    uncached = [_reference(model, [[step] for step in steps]) for steps in requests]
    for key, (outputs, _) in enumerate(results):
        _assert_equal_outputs(outputs, uncached[key])
    warnings = [r.message for r in caplog.records if "context of their own" in r.message]
    assert len(warnings) == 1 and "cache_context" in warnings[0]


def _pipeline_call(pipe, sigmas=None, abort_after=None):
    """A tiny FLUX pipeline request (4 steps; ``sigmas`` starting lower = img2img-like); raises
    after ``abort_after`` steps when given."""
    def on_step(_pipe, index, _t, kwargs):
        if abort_after is not None and index + 1 >= abort_after:
            raise RuntimeError("request aborted")
        return {}

    kwargs = dict(default_call_kwargs("flux"), num_inference_steps=4)
    if sigmas is not None:
        kwargs["sigmas"] = sigmas
    return pipe(**kwargs, output_type="latent", generator=torch.Generator().manual_seed(3),
                callback_on_step_end=on_step).images


def test_a_compiled_pipeline_on_a_worker_pool_never_reuses_an_aborted_requests_residual():
    pipe = cachedit_fx.compile(tiny_flux_pipeline(0), **dict(OPTIONS, residual_diff_threshold=ALWAYS))
    lower = [0.6, 0.45, 0.3, 0.15]
    want = _pipeline_call(pipe, sigmas=lower)
    want_cached = cachedit_fx.summary(pipe).cached_steps
    assert want_cached == [1, 2, 3]
    with ThreadPoolExecutor(max_workers=1) as pool:
        with pytest.raises(RuntimeError, match="aborted"):
            pool.submit(_pipeline_call, pipe, None, 3).result()
        got = pool.submit(_pipeline_call, pipe, lower).result()
        cached = pool.submit(lambda: cachedit_fx.summary(pipe).cached_steps).result()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert cached == want_cached


def test_a_transformer_on_a_worker_pool_needs_a_context_per_request():
    """Pool threads outlive requests: a request wrapped in its own ``cache_context`` (the
    README's remedy) equals its solo run after an aborted request on the same worker."""
    model, inputs = tiny_flux()
    aborted = list(trajectory(inputs, 5, seed=1))[:3]
    img2img = [dict(step, timestep=step["timestep"] * 0.5) for step in trajectory(inputs, 5, seed=2)]
    want = _reference(model, [img2img])
    compiled = torch.compile(model, backend="cachedit", options=OPTIONS)

    def request(name: str, steps: list[dict]) -> list[torch.Tensor]:
        with cachedit_fx.cache_context(compiled, name) as context:
            outputs = run(compiled, steps)
            context.close()
        return outputs

    with ThreadPoolExecutor(max_workers=1) as pool:
        pool.submit(request, "first", aborted).result()
        got = pool.submit(request, "second", img2img).result()
    _assert_equal_outputs(got, want)


def test_a_warm_up_call_with_other_latents_at_the_first_timestep_is_no_cfg_partner():
    model, inputs = tiny_flux()
    steps = list(trajectory(inputs, 6))
    warm_up = dict(steps[0], hidden_states=torch.randn(steps[0]["hidden_states"].shape,
                                                       generator=torch.Generator().manual_seed(7)))
    options = dict(OPTIONS, residual_diff_threshold=0.6)
    want = _reference(model, [steps], threshold=0.6)
    compiled = torch.compile(model, backend="cachedit", options=options)
    run(compiled, [warm_up])
    got = run(compiled, steps)
    _assert_equal_outputs(got, want)
    summary = cachedit_fx.summary(compiled)
    assert summary.num_steps == len(steps) and summary.num_cached_steps > 0
    assert cachedit_fx.summary(compiled, stream="uncond").num_steps == 0


def test_a_generation_longer_than_the_step_log_counts_every_step():
    """1200 steps of a toy chain, at most 3 cached in a row: the in-graph decision lists the
    first 1000 steps and counts every one."""
    model = ToyChain(4).eval()
    compiled = torch.compile(model, backend="cachedit", options=dict(
        inner_backend="eager", Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=ALWAYS,
        max_continuous_cached_steps=3))
    x = torch.randn(1, 4, 8)
    with torch.no_grad():
        for step in range(1200):
            compiled(x * (1 - step / 2400), torch.tensor([1000.0 - step * 0.5]))
    summary = cachedit_fx.summary(compiled)
    cached = [step for step in range(2, 1200) if (step - 1) % 4]  # 2 warm-up steps, then 3 cached per computed
    assert summary.num_steps == 1200
    assert summary.num_cached_steps == len(cached) and summary.cached_blocks == len(cached) * 3
    assert cache_for_model(compiled).active().step_tensors is not None
    assert summary.cached_steps == [step for step in cached if step < 1000]
    assert summary.unlisted_cached_steps == len([step for step in cached if step >= 1000])


def test_an_unknown_stream_name_is_named():
    model, inputs = tiny_flux()
    compiled = torch.compile(model, backend="cachedit", options=OPTIONS)
    run(compiled, list(trajectory(inputs, 2)))
    assert cache_for_model(compiled).active().step_tensors is not None
    with pytest.raises(ValueError, match="unknown stream 'uncond '.*'default', 'uncond'"):
        cachedit_fx.summary(compiled, stream="uncond ")
