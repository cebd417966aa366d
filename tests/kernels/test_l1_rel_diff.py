"""The Triton ``l1_rel_diff`` (interpreted on CPU) against an fp64 torch computation."""

import math

import pytest
import torch

from cachedit_fx.kernels import l1_rel_diff, l1_rel_diff_op, l1_rel_diff_reference, runs_triton
from cachedit_fx.kernels.l1_rel_diff_triton import LARGE_TENSOR
from cachedit_fx.config import DBCacheConfig
from cachedit_fx.runtime.dbcache_step import relative_diff
from decision import should_cache

SHAPES = [(1,), (7,), (2047,), (2048,), (2049,), (3, 5, 7), (1, 33, 65), (65536 * 3 + 5,)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def exact_sums(prev, cur, base=None):
    p, c = prev.double(), cur.double()
    if base is not None:
        c = c - base.double()
    return torch.stack([(p - c).abs().sum(), p.abs().sum()])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_base", [False, True])
def test_triton_matches_exact_sums(triton_interpreter, dtype, shape, with_base):
    g = torch.Generator().manual_seed(hash((shape, str(dtype))) % 1000)
    prev, cur, base = (torch.randn(shape, generator=g).to(dtype) for _ in range(3))
    sums = l1_rel_diff_op(prev, cur, base if with_base else None)
    assert sums.dtype == torch.float32 and sums.shape == (2,)
    torch.testing.assert_close(sums.double(), exact_sums(prev, cur, base if with_base else None), rtol=2e-5, atol=1e-4)


def test_large_tensor_multi_block_programs(triton_interpreter):
    n = LARGE_TENSOR + 12345
    prev = torch.rand(n) + 0.5
    cur = prev + 0.25
    d, p = l1_rel_diff(prev, cur)
    assert math.isclose(d.item(), 0.25 * n, rel_tol=1e-5)
    torch.testing.assert_close(p.double(), prev.double().sum(), rtol=1e-5, atol=0)


def test_deterministic_bitwise(triton_interpreter):
    prev, cur = torch.randn(2, 70001), torch.randn(2, 70001)
    first = l1_rel_diff_op(prev, cur, None)
    for _ in range(3):
        assert torch.equal(l1_rel_diff_op(prev, cur, None), first)


def test_empty_and_single(triton_interpreter):
    assert torch.equal(l1_rel_diff_op(torch.empty(0, 4), torch.empty(0, 4), None), torch.zeros(2))
    d, p = l1_rel_diff(torch.tensor([-2.0]), torch.tensor([1.0]))
    assert (d.item(), p.item()) == (3.0, 2.0)


def test_non_contiguous_inputs_are_handled(triton_interpreter):
    prev = torch.randn(64, 48).t()
    cur = torch.randn(48, 64)
    base = torch.randn(64, 96)[:, ::2].t()
    assert not prev.is_contiguous() and not base.is_contiguous()
    torch.testing.assert_close(l1_rel_diff_op(prev, cur, base).double(), exact_sums(prev, cur, base),
                               rtol=2e-5, atol=1e-4)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("bad", ["nan_prev", "inf_cur", "inf_both"])
def test_nan_inf_make_the_step_compute(triton_interpreter, bad):
    prev, cur = torch.randn(5000), torch.randn(5000)
    if bad == "nan_prev":
        prev[17] = float("nan")
    elif bad == "inf_cur":
        cur[4999] = float("inf")
    else:
        prev[3], cur[3] = float("inf"), float("inf")
    sums = torch.stack([v.reshape(()) for v in l1_rel_diff(prev, cur)])
    assert not math.isfinite(sums[0].item())
    diff = relative_diff(sums, None)
    assert not diff.item() < 1e9
    config = DBCacheConfig(max_warmup_steps=0, residual_diff_threshold=1e9)
    assert not should_cache(config, step=5, diff=diff.item())


def test_bad_operands_raise_clear_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        l1_rel_diff(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="floating-point"):
        l1_rel_diff(torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64))


def test_all_reduce_hook_sees_both_sums_before_split():
    seen = []

    def fake_all_reduce(sums: torch.Tensor) -> None:
        seen.append(sums.clone())
        sums.mul_(2)

    d, p = l1_rel_diff(torch.tensor([1.0, -1.0]), torch.tensor([0.0, 0.0]), all_reduce=fake_all_reduce)
    assert torch.equal(seen[0], torch.tensor([2.0, 2.0]))
    assert (d.item(), p.item()) == (4.0, 4.0)


def test_cpu_without_interpreter_uses_torch_reference(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    prev, cur = torch.randn(100), torch.randn(100)
    assert not runs_triton(prev)
    assert torch.equal(l1_rel_diff_op(prev, cur, None), l1_rel_diff_reference(prev, cur))
