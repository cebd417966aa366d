"""trace_blocks_once: which blocks are marked, eager behaviour, undo, and caching through it."""

from __future__ import annotations

import copy

import pytest
import torch

import cachedit_fx
from cachedit_fx.block_regions import REGION_ATTR, find_repeated_blocks, restore_block_classes
from models import TINY_MODELS, trajectory


def test_repeated_blocks_are_the_top_level_block_lists():
    model, _ = TINY_MODELS["hunyuan_video"]()
    paths = [path for path, _ in find_repeated_blocks(model)]
    assert paths == [f"transformer_blocks.{i}" for i in range(len(model.transformer_blocks))] + [
        f"single_transformer_blocks.{i}" for i in range(len(model.single_transformer_blocks))]


def test_marking_keeps_eager_outputs_copies_and_undoes():
    model, inputs = TINY_MODELS["flux"]()
    with torch.no_grad():
        expected = model(**inputs, return_dict=False)[0]
    assert cachedit_fx.trace_blocks_once(model) is model
    cachedit_fx.trace_blocks_once(model)
    block = model.transformer_blocks[0]
    assert getattr(type(block), REGION_ATTR) and type(block).__name__ == "FluxTransformerBlock"
    assert not getattr(type(block).__mro__[1], REGION_ATTR, False)  # marked once, not twice
    twin = copy.deepcopy(model)
    assert type(twin.transformer_blocks[0]) is type(block)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs, return_dict=False)[0], expected, rtol=0, atol=0)
        torch.testing.assert_close(twin(**inputs, return_dict=False)[0], expected, rtol=0, atol=0)
    restore_block_classes(model)
    assert not any(getattr(type(m), REGION_ATTR, False) for m in model.modules())
    assert {type(m).__name__ for m in model.transformer_blocks} == {"FluxTransformerBlock"}


def test_a_model_without_block_lists_is_refused():
    with pytest.raises(ValueError, match="no repeated blocks"):
        cachedit_fx.trace_blocks_once(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def _generation(model, inputs, options, steps=8):
    compiled = torch.compile(model, backend="cachedit", options=options)
    with torch.no_grad():
        outputs = [compiled(**step, return_dict=False)[0] for step in trajectory(inputs, steps)]
    return outputs, cachedit_fx.summary(model).cached_steps


def test_caching_through_marked_blocks_equals_caching_unmarked():
    model, inputs = TINY_MODELS["flux"]()
    options = dict(Fn_compute_blocks=1, residual_diff_threshold=0.3, max_warmup_steps=1, num_inference_steps=8,
                   inner_backend="aot_eager", regional_compile=True)
    expected, expected_steps = _generation(copy.deepcopy(model), inputs, options)
    torch._dynamo.reset()
    marked = cachedit_fx.trace_blocks_once(copy.deepcopy(model))
    outputs, steps = _generation(marked, inputs, options)
    assert steps == expected_steps and 0 < len(steps) < 8
    for out, ref in zip(outputs, expected):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_trace_blocks_once_flag_must_be_a_bool():
    model, _ = TINY_MODELS["flux"]()
    with pytest.raises(ValueError, match="trace_blocks_once must be True or False"):
        cachedit_fx.compile(model, trace_blocks_once="yes")
    assert not any(getattr(type(m), REGION_ATTR, False) for m in model.modules())


def test_pipeline_compile_marks_and_disable_restores():
    from cachedit_fx.tiny_pipelines import tiny_flux_pipeline

    pipe = tiny_flux_pipeline()
    cachedit_fx.compile(pipe, inner_backend="aot_eager", trace_blocks_once=True)
    assert getattr(type(pipe.transformer._orig_mod.transformer_blocks[0]), REGION_ATTR)
    cachedit_fx.disable(pipe)
    assert not any(getattr(type(m), REGION_ATTR, False) for m in pipe.transformer.modules())
