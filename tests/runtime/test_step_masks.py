"""``steps_mask`` reproduces the reference masks exactly (DESIGN section 3)."""

import pytest

import cachedit_fx
from cachedit_fx.runtime.step_masks import POLICIES

EXPECTED = {
    28: {
        "slow": "1111111101110011100110010001",
        "medium": "1111110110001100011000110001",
        "fast": "1111110100010000100000100001",
        "ultra": "1111001000001000000100000001",
    },
    50: {
        "slow": "11111111111111111111110011111000111110001110001101",
        "medium": "11111111111111110011100000111000001110000011100001",
        "fast": "11111111111001100000110000000110000000001100000001",
        "ultra": "11111110001100000000011000000000001100000000000001",
    },
}


@pytest.mark.parametrize("total", sorted(EXPECTED))
@pytest.mark.parametrize("policy", POLICIES)
def test_reference_masks_exactly(total, policy):
    mask = cachedit_fx.steps_mask(mask_policy=policy, total_steps=total)
    assert "".join(map(str, mask)) == EXPECTED[total][policy]


@pytest.mark.parametrize("total", [4, 6, 8, 9, 12, 15, 16, 20, 27, 30, 40, 64, 100])
def test_every_supported_length_is_exact_ends_computing_and_orders_policies(total):
    masks = {p: cachedit_fx.steps_mask(mask_policy=p, total_steps=total) for p in POLICIES}
    for mask in masks.values():
        assert len(mask) == total and set(mask) <= {0, 1}
        assert mask[0] == 1 and mask[-1] == 1
    computed = [sum(masks[p]) for p in POLICIES]
    assert computed == sorted(computed, reverse=True), "slower policies compute at least as many steps"


def test_custom_bins_alternate_and_cut():
    assert cachedit_fx.steps_mask(compute_bins=[3, 1], cache_bins=[2, 2]) == [1, 1, 1, 0, 0, 1, 0, 0]
    assert cachedit_fx.steps_mask(compute_bins=[2, 2], cache_bins=[1], total_steps=4) == [1, 1, 0, 1]


@pytest.mark.parametrize("kwargs,message", [
    ({"mask_policy": "turbo", "total_steps": 28}, "mask_policy must be one of"),
    ({"mask_policy": "fast", "total_steps": None}, "total_steps must be a positive int"),
    ({"mask_policy": "fast", "total_steps": 5}, "support total_steps 4, 6 or >= 8"),
    ({"compute_bins": [2], "cache_bins": None}, "give both"),
    ({"compute_bins": [2], "cache_bins": [1], "total_steps": 5}, "cover 3 steps"),
    ({"compute_bins": [2, -1], "cache_bins": [1]}, "non-negative"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cachedit_fx.steps_mask(**kwargs)
