"""The compiled Triton kernels on a GPU, against fp64 references: the l1 diff sums, the ladder
push and the forecast, on the tensors' own device (also ``cuda:1`` while ``cuda:0`` is
current, where there are two GPUs). Skipped where there is no CUDA GPU: the interpreted runs
in ``test_l1_rel_diff.py`` / ``test_taylor.py`` cover the same kernels on CPU."""

import math

import pytest
import torch

from cachedit_fx.kernels import (l1_rel_diff_op, taylor_forecast_op, taylor_forecast_reference, taylor_push_op,
                                 taylor_push_reference)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to run compiled Triton")

SHAPES = [(1,), (2049,), (3, 5, 7), ((1 << 22) + 5,)]
DTYPES = [torch.float32, torch.bfloat16]


def _devices() -> list[str]:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return ["cuda:0"] + (["cuda:1"] if count > 1 else [])


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_l1_rel_diff_on_the_tensors_device(device, dtype, shape):
    g = torch.Generator().manual_seed(len(shape))
    prev, cur, base = (torch.randn(shape, generator=g).to(device, dtype) for _ in range(3))
    with torch.cuda.device(0):
        sums = l1_rel_diff_op(prev, cur, base)
    exact = torch.stack([(prev.double() - (cur.double() - base.double())).abs().sum(), prev.double().abs().sum()])
    assert sums.device == prev.device
    torch.testing.assert_close(sums.double(), exact, rtol=2e-5, atol=1e-3)


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("levels", [1, 3, 5])
def test_ladder_and_forecast_on_the_tensors_device(device, dtype, levels):
    g = torch.Generator().manual_seed(levels)
    shape = (4097,)
    ladder = torch.zeros((levels, *shape), dtype=dtype, device=device)
    expected = ladder.clone()
    with torch.cuda.device(0):
        for step, gap in enumerate([1.0, 2.0, 1.0, 3.0]):
            value, base = (torch.randn(shape, generator=g).to(device, dtype) for _ in range(2))
            scalars = torch.tensor([gap], device=device), torch.tensor([min(step + 1, levels)], device=device)
            ladder = taylor_push_op(ladder, value, base, *scalars)
            expected = taylor_push_reference(expected, value, base, *scalars)
        weights = torch.tensor([2.0**k / math.factorial(k) for k in range(levels)], device=device)
        out = taylor_forecast_op(ladder, base, weights)
        want = taylor_forecast_reference(expected, base, weights)
    assert out.device == ladder.device == torch.device(device)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(ladder, expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(out, want, rtol=tolerance, atol=tolerance)
