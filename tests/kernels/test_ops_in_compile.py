"""The custom ops inside graphs compiled by each inner backend: no graph break, same values."""

import pytest
import torch

from cachedit_fx.kernels import l1_rel_diff, taylor_forecast_op, taylor_push_op


def step_arithmetic(prev, hidden_cut, hidden_entry, ladder, middle_out):
    diff, base = l1_rel_diff(prev, hidden_cut * 1.0, base=hidden_entry)
    gap, levels = torch.full((1,), 2.0), torch.full((1,), 2, dtype=torch.int64)
    pushed = taylor_push_op(ladder, middle_out + 1.0, hidden_cut, gap, levels)
    forecast = taylor_forecast_op(pushed, hidden_cut, torch.tensor([1.0, 1.5]))
    ladder.copy_(pushed)
    return diff / base, forecast * 2.0


@pytest.mark.parametrize("interpreted", [True, False], ids=["triton-interpreter", "torch-fallback"])
@pytest.mark.parametrize("backend", ["eager", "aot_eager", "inductor"])
def test_ops_compile_fullgraph(triton_interpreter, monkeypatch, backend, interpreted):
    if not interpreted:
        monkeypatch.setenv("TRITON_INTERPRET", "0")
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(2, 33, 16, generator=g) for _ in range(3)]
    middle_out = torch.randn(2, 33, 16, generator=g)
    start = torch.randn(2, 2, 33, 16, generator=g)
    ladder_eager, ladder_compiled = start.clone(), start.clone()
    expected = step_arithmetic(*args, ladder_eager, middle_out)
    compiled = torch.compile(step_arithmetic, backend=backend, fullgraph=True)
    got = compiled(*args, ladder_compiled, middle_out)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ladder_compiled, ladder_eager)
