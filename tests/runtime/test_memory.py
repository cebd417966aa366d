"""runtime/memory: the stored values a stream holds, counted against what its middle carries."""

from __future__ import annotations

import math

import pytest
import torch

import cachedit_fx
from cachedit_fx.runtime.memory import stream_memory
from cachedit_fx.runtime.registry import cache_for_model
from models import TINY_MODELS, trajectory


@pytest.mark.parametrize("calibrator, held_over_carried", [
    ({}, 2), ({"taylorseer_order": 3}, 5), ({"calibrator_config": cachedit_fx.FoCaCalibratorConfig()}, 5),
])
def test_held_buffers_are_the_residual_and_the_histories(calibrator, held_over_carried):
    """Wan's middle hands on only the hidden stream, which is also the Fn residual's shape:
    DBCache holds residual + one level, TaylorSeer order k holds k + 1 levels, FoCa four values."""
    model, inputs = TINY_MODELS["wan"]()
    compiled = torch.compile(model, backend="cachedit", options={
        "Fn_compute_blocks": 1, "residual_diff_threshold": 0.0, "inner_backend": "eager", "enable_separate_cfg": False,
        **calibrator})
    with torch.no_grad():
        for step in trajectory(inputs, 3):
            compiled(**step, return_dict=False)
    state = cache_for_model(model).active()
    (memory,) = stream_memory(state)
    (carried,) = state.step_tensors.layout.values
    assert memory.stream == "default"
    assert memory.carried_bytes == math.prod(carried.shape) * carried.dtype.itemsize > 0
    assert state.step_tensors.layout.hidden.shape == carried.shape
    assert memory.held_bytes == held_over_carried * memory.carried_bytes
    assert memory.ratio == held_over_carried
