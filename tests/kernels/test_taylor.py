"""Difference ladder and Taylor forecast: the reference against hand-computed values, the
Triton kernels (interpreted on CPU) against the reference."""

import math

import pytest
import torch

from cachedit_fx.kernels import (
    taylor_forecast,
    taylor_forecast_op,
    taylor_forecast_reference,
    taylor_update_,
    taylor_update_op,
    taylor_update_reference_,
)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def test_reference_linear_sequence_is_extrapolated_exactly():
    """f(s) = 3 + 2 s, computed at uneven steps 0, 2, 5: D1 = 2 exactly, forecast exact."""
    ladder = torch.zeros(2, 1, dtype=torch.float64)
    last = None
    for level, s in enumerate([0, 2, 5]):
        gap = 1.0 if last is None else s - last
        taylor_update_reference_(ladder, torch.tensor([3.0 + 2 * s], dtype=torch.float64), None, gap, min(level + 1, 2))
        last = s
    assert ladder[:, 0].tolist() == [13.0, 2.0]
    out = torch.empty(1, dtype=torch.float64)
    taylor_forecast_reference(ladder, None, 3.0, 1, out)
    assert out.item() == 3.0 + 2 * 8


def test_reference_second_order_by_hand():
    """f(s) = s^2 at steps 1, 3, 4 (gaps 2, 1): D1 = (16-9)/1 = 7, previous D1 = (9-1)/2 = 4,
    D2 = (7-4)/1 = 3; forecast at e = 2: 16 + 7*2 + 3*4/2 = 36."""
    ladder = torch.zeros(3, 1, dtype=torch.float64)
    for levels, (s, gap) in enumerate([(1, 1.0), (3, 2.0), (4, 1.0)], start=1):
        taylor_update_reference_(ladder, torch.tensor([float(s * s)], dtype=torch.float64), None, gap, levels)
    assert ladder[:, 0].tolist() == [16.0, 7.0, 3.0]
    out = torch.empty(1, dtype=torch.float64)
    taylor_forecast_reference(ladder, torch.tensor([100.0], dtype=torch.float64), 2.0, 2, out)
    assert out.item() == 100.0 + 36.0


def _sequence(shape, dtype, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)) for _ in range(n)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (1023,), (1025,), (3, 7, 11), (65536 + 3,)])
@pytest.mark.parametrize("max_levels", [1, 2, 3, 5])
@pytest.mark.parametrize("with_base", [False, True])
def test_triton_ladder_and_forecast_match_reference(triton_interpreter, dtype, shape, max_levels, with_base):
    ladder = torch.zeros((max_levels, *shape), dtype=dtype)
    expected = ladder.clone()
    gaps = [1.0, 2.0, 1.0, 3.0, 2.0, 1.0]
    for i, ((value, base), gap) in enumerate(zip(_sequence(shape, dtype, len(gaps), seed=len(shape)), gaps)):
        levels = min(i + 1, max_levels)
        b = base if with_base else None
        taylor_update_op(ladder, value, b, gap, levels)
        taylor_update_reference_(expected, value, b, gap, levels)
        assert_close_in_ulps(ladder, expected)
        for order in range(levels):
            out = torch.empty(shape, dtype=dtype)
            ref = torch.empty(shape, dtype=dtype)
            taylor_forecast_op(ladder, b, 1.5, order, out)
            taylor_forecast_reference(expected, b, 1.5, order, ref)
            assert_close_in_ulps(out, ref)


def assert_close_in_ulps(got: torch.Tensor, expected: torch.Tensor, ulps: float = 2.0) -> None:
    """Equal up to a couple of rounding steps of the storage dtype at the data's magnitude:
    the kernel multiplies by 1/gap where the reference divides, and in bf16/fp16 one ulp
    flipped in a low level is amplified by the differences above it."""
    eps = torch.finfo(expected.dtype).eps
    scale = expected.float().abs().amax().clamp(min=1.0).item()
    torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=ulps * eps * scale + 1e-6)


def test_non_contiguous_value_base_and_out(triton_interpreter):
    value = torch.randn(40, 24).t()
    base = torch.randn(24, 80)[:, ::2]
    ladder = torch.zeros(2, 24, 40)
    expected = ladder.clone()
    for levels in (1, 2):
        taylor_update_(ladder, value * levels, gap=2.0, levels=levels, base=base)
        taylor_update_reference_(expected, value * levels, base, 2.0, levels)
    torch.testing.assert_close(ladder, expected)
    out = torch.empty(40, 24).t()
    taylor_forecast(ladder, 3.0, 1, base=base, out=out)
    ref = torch.empty(24, 40)
    taylor_forecast_reference(expected, base, 3.0, 1, ref)
    torch.testing.assert_close(out, ref)


def test_levels_beyond_written_are_untouched(triton_interpreter):
    ladder = torch.full((3, 100), 7.0)
    taylor_update_(ladder, torch.ones(100), gap=1.0, levels=1)
    assert torch.equal(ladder[0], torch.ones(100))
    assert torch.equal(ladder[1:], torch.full((2, 100), 7.0))


def test_forecast_default_output_and_empty(triton_interpreter):
    ladder = torch.stack([torch.full((4,), 2.0), torch.full((4,), 0.5)])
    assert torch.equal(taylor_forecast(ladder, 4.0, 1), torch.full((4,), 4.0))
    empty = torch.zeros(2, 0, 3)
    taylor_update_(empty, torch.zeros(0, 3), gap=1.0)
    assert taylor_forecast(empty, 1.0, 1).shape == (0, 3)


def test_nan_propagates_into_forecast(triton_interpreter):
    ladder = torch.zeros(2, 8)
    value = torch.ones(8)
    value[3] = float("nan")
    taylor_update_(ladder, value, levels=1)
    out = taylor_forecast(ladder, 1.0, 0)
    assert math.isnan(out[3].item()) and out[2].item() == 1.0


def test_bad_arguments_raise_clear_errors():
    ladder = torch.zeros(2, 5)
    with pytest.raises(ValueError, match="ladder shape"):
        taylor_update_(ladder, torch.zeros(6))
    with pytest.raises(ValueError, match="levels = 3"):
        taylor_update_(ladder, torch.zeros(5), levels=3)
    with pytest.raises(ValueError, match="gap must be > 0"):
        taylor_update_(ladder, torch.zeros(5), gap=0.0, levels=2)
    with pytest.raises(ValueError, match="contiguous"):
        taylor_update_(torch.zeros(5, 2).t(), torch.zeros(5))
    with pytest.raises(ValueError, match="order \\+ 1 = 3"):
        taylor_forecast(ladder, 1.0, 2)
