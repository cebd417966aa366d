"""Difference ladder and Taylor forecast: the reference against hand-computed values, the
Triton kernels (interpreted on CPU) against the reference."""

import math

import pytest
import torch

from cachedit_fx.kernels import taylor_forecast_op, taylor_forecast_reference, taylor_push_op, taylor_push_reference

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def scalars(gap, levels):
    return torch.tensor([float(gap)]), torch.tensor([levels])


def taylor_weights(elapsed, levels, used):
    """``elapsed**k / k!`` for the first ``used`` levels, 0 for the others."""
    return torch.tensor([elapsed**k / math.factorial(k) if k < used else 0.0 for k in range(levels)])


def test_reference_linear_sequence_is_extrapolated_exactly():
    """f(s) = 3 + 2 s, computed at uneven steps 0, 2, 5: D1 = 2 exactly, forecast exact."""
    ladder = torch.zeros(2, 1, dtype=torch.float64)
    last = None
    for pushes, s in enumerate([0, 2, 5]):
        gap = 1.0 if last is None else s - last
        value = torch.tensor([3.0 + 2 * s], dtype=torch.float64)
        ladder = taylor_push_reference(ladder, value, None, *scalars(gap, min(pushes + 1, 2)))
        last = s
    assert ladder[:, 0].tolist() == [13.0, 2.0]
    assert taylor_forecast_reference(ladder, None, taylor_weights(3.0, 2, 2)).item() == 3.0 + 2 * 8


def test_reference_second_order_by_hand():
    """f(s) = s^2 at steps 1, 3, 4 (gaps 2, 1): D1 = (16-9)/1 = 7, previous D1 = (9-1)/2 = 4,
    D2 = (7-4)/1 = 3; forecast at e = 2: 16 + 7*2 + 3*4/2 = 36 (plus the base 100)."""
    ladder = torch.zeros(3, 1, dtype=torch.float64)
    for levels, (s, gap) in enumerate([(1, 1.0), (3, 2.0), (4, 1.0)], start=1):
        ladder = taylor_push_reference(ladder, torch.tensor([float(s * s)], dtype=torch.float64), None,
                                       *scalars(gap, levels))
    assert ladder[:, 0].tolist() == [16.0, 7.0, 3.0]
    base = torch.tensor([100.0], dtype=torch.float64)
    assert taylor_forecast_reference(ladder, base, taylor_weights(2.0, 3, 3)).item() == 100.0 + 36.0


def _sequence(shape, dtype, n, seed):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(shape, generator=g).to(dtype), torch.randn(shape, generator=g).to(dtype)) for _ in range(n)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (1025,), (3, 7, 11), (65536 + 3,)])
@pytest.mark.parametrize("max_levels", [1, 2, 5])
@pytest.mark.parametrize("with_base", [False, True])
def test_triton_push_and_forecast_match_reference(triton_interpreter, dtype, shape, max_levels, with_base):
    ladder = torch.zeros((max_levels, *shape), dtype=dtype)
    expected = ladder.clone()
    gaps = [1.0, 2.0, 1.0, 3.0, 2.0, 1.0]
    for i, ((value, base), gap) in enumerate(zip(_sequence(shape, dtype, len(gaps), seed=len(shape)), gaps)):
        levels = min(i + 1, max_levels)
        b = base if with_base else None
        ladder = taylor_push_op(ladder, value, b, *scalars(gap, levels))
        expected = taylor_push_reference(expected, value, b, *scalars(gap, levels))
        assert_close_in_ulps(ladder, expected)
        for used in range(1, levels + 1):
            weights = taylor_weights(1.5, max_levels, used)
            assert_close_in_ulps(taylor_forecast_op(ladder, b, weights), taylor_forecast_reference(expected, b, weights))


def assert_close_in_ulps(got: torch.Tensor, expected: torch.Tensor, ulps: float = 2.0) -> None:
    """Equal up to a couple of rounding steps of the storage dtype at the data's magnitude (in
    bf16/fp16 one ulp flipped in a low level is amplified by the differences above it)."""
    assert got.dtype == expected.dtype and got.shape == expected.shape
    eps = torch.finfo(expected.dtype).eps
    scale = expected.float().abs().amax().clamp(min=1.0).item()
    torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=ulps * eps * scale + 1e-6)


@pytest.mark.parametrize("push,forecast", [(taylor_push_op, taylor_forecast_op),
                                           (taylor_push_reference, taylor_forecast_reference)],
                         ids=["triton", "reference"])
def test_non_contiguous_operands(triton_interpreter, push, forecast):
    value = torch.randn(40, 24).t()
    base = torch.randn(24, 80)[:, ::2]
    ladder = torch.randn(2, 40, 24).transpose(1, 2)
    expected = ladder.contiguous()
    for levels in (1, 2):
        ladder = push(ladder, value * levels, base, *scalars(2.0, levels))
        expected = taylor_push_reference(expected, (value * levels).contiguous(), base.contiguous(),
                                         *scalars(2.0, levels))
    torch.testing.assert_close(ladder, expected)
    weights = taylor_weights(3.0, 2, 2)
    out = forecast(ladder.transpose(1, 2).contiguous().transpose(1, 2), base, weights)
    torch.testing.assert_close(out, taylor_forecast_reference(expected, base.contiguous(), weights))


@pytest.mark.parametrize("push,forecast", [(taylor_push_op, taylor_forecast_op),
                                           (taylor_push_reference, taylor_forecast_reference)],
                         ids=["triton", "reference"])
def test_levels_beyond_pushed_are_kept_and_zero_weights_skip_stale_levels(triton_interpreter, push, forecast):
    """A push of ``levels`` writes only those; a level of weight 0 never reaches the forecast,
    not even as inf * 0 (a stale level of an earlier generation may hold anything)."""
    ladder = torch.stack([torch.zeros(100), torch.full((100,), math.inf), torch.full((100,), math.nan)])
    pushed = push(ladder, torch.ones(100), None, *scalars(1.0, 1))
    assert torch.equal(pushed[0], torch.ones(100))
    assert torch.isinf(pushed[1]).all() and pushed[2].isnan().all()
    assert torch.equal(forecast(pushed, torch.full((100,), 2.0), taylor_weights(5.0, 3, 1)), torch.full((100,), 3.0))


@pytest.mark.parametrize("push,forecast", [(taylor_push_op, taylor_forecast_op),
                                           (taylor_push_reference, taylor_forecast_reference)],
                         ids=["triton", "reference"])
def test_nan_in_a_used_level_propagates_and_empty_tensors_pass(triton_interpreter, push, forecast):
    value = torch.ones(8)
    value[3] = math.nan
    ladder = push(torch.zeros(2, 8), value, None, *scalars(1.0, 1))
    out = forecast(ladder, None, taylor_weights(1.0, 2, 1))
    assert math.isnan(out[3].item()) and out[2].item() == 1.0
    empty = push(torch.zeros(2, 0, 3), torch.zeros(0, 3), None, *scalars(1.0, 2))
    assert empty.shape == (2, 0, 3) and forecast(empty, None, taylor_weights(1.0, 2, 2)).shape == (0, 3)


def test_bad_arguments_raise_clear_errors():
    ladder = torch.zeros(2, 5)
    gap, levels = scalars(1.0, 1)
    with pytest.raises(ValueError, match="taylor_push: ladder shape"):
        taylor_push_op(ladder, torch.zeros(6), None, gap, levels)
    with pytest.raises(ValueError, match="taylor_push: shapes differ"):
        taylor_push_op(ladder, torch.zeros(5), torch.zeros(4), gap, levels)
    with pytest.raises(ValueError, match="floating point"):
        taylor_push_op(ladder.long(), torch.zeros(5), None, gap, levels)
    with pytest.raises(ValueError, match="taylor_forecast: ladder shape"):
        taylor_forecast_op(ladder, torch.zeros(3), torch.ones(2))
    with pytest.raises(ValueError, match="weights must hold 2 element"):
        taylor_forecast_op(ladder, None, torch.ones(1))
    with pytest.raises(ValueError, match="gap must hold 1 element"):
        taylor_push_op(ladder, torch.zeros(5), None, torch.ones(2), levels)
    with pytest.raises(ValueError, match="levels must hold 1 element"):
        taylor_push_op(ladder, torch.zeros(5), None, gap, torch.ones(2, dtype=torch.int64))
