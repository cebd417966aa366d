"""The in-graph step under ``mode="reduce-overhead"`` on CUDA: the program runs as its parts
around the ``torch.cond``, recorded by CUDA-graph trees with the branch as a conditional node.
After recording, a whole generation replays with no host sync (``set_sync_debug_mode("error")``
raises on any), and its decisions, which differ from step to step, and outputs equal the one
program's without CUDA graphs: a branch recorded once and replayed as is would repeat the
recorded step's decision. The CPU suite runs the same parts unrecorded
(``tests/test_inductor.py``, ``tests/passes/test_split_at_cond.py``)."""

from __future__ import annotations

import pytest
import torch

import cachedit_fx
from models import TINY_MODELS, trajectory

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA GPU: CUDA-graph conditional nodes are captured on the device")

STEPS = 10


def _generation(compiled, steps):
    with torch.no_grad():
        return [compiled(**step, return_dict=False)[0] for step in steps]


def _on_cuda(steps):
    return [{k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in step.items()} for step in steps]


def test_a_replayed_generation_decides_on_the_device_with_no_host_sync():
    model, inputs = TINY_MODELS["flux"]()
    model = model.cuda()
    steps = _on_cuda(list(trajectory(inputs, STEPS)))
    options = dict(Fn_compute_blocks=1, max_warmup_steps=2, residual_diff_threshold=0.3, num_inference_steps=STEPS,
                   in_graph_decision=True, enable_separate_cfg=False)
    one_program = torch.compile(model, backend="cachedit", options=options)
    want = [o.clone() for o in _generation(one_program, steps)]
    want_cached = cachedit_fx.summary(one_program).cached_steps
    assert 0 < len(want_cached) < STEPS - 2, "the check needs steps of both kinds"
    torch._dynamo.reset()
    graphs = torch.compile(model, backend="cachedit", options=dict(options, mode="reduce-overhead"))
    for _ in range(2):  # warm-up run, then recording
        _generation(graphs, steps)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        got = _generation(graphs, steps)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert cachedit_fx.summary(graphs).cached_steps == want_cached
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
