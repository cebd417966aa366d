"""Step computation masks (SCM): which steps must compute (1) and which may reuse the cache (0).

``steps_mask`` reproduces cache-dit's predefined policies. They are defined as alternating run
lengths ("compute bins" of 1s, "cache bins" of 0s) for 28 steps; other step counts derive from
them: above 28 every bin grows in proportion (by ``max(int(b * T / 56), 1)`` per round, compute
then cache, with one extra compute step per round) and the result is trimmed; 16-27 steps trim
the 28-step bins from the end (last cache bin, then last compute bin, alternately); 8-15 and
4/6 steps (distilled models) have their own tables. The last step always computes.
"""

from __future__ import annotations

from typing import Optional

POLICIES = ("slow", "medium", "fast", "ultra")

_BINS_28 = {
    "slow": ([8, 3, 3, 2, 1, 1], [1, 2, 2, 2, 3]),
    "medium": ([6, 2, 2, 2, 2, 1], [1, 3, 3, 3, 3]),
    "fast": ([6, 1, 1, 1, 1, 1], [1, 3, 4, 5, 4]),
    "ultra": ([4, 1, 1, 1, 1], [2, 5, 6, 7]),
}
_BINS_9_TO_15 = {
    "slow": ([4, 2, 2, 2, 1], [1, 1, 1, 1]),
    "medium": ([4, 2, 1, 1, 1], [1, 1, 2, 2]),
    "fast": ([3, 1, 1, 1, 1], [1, 2, 2, 3]),
    "ultra": ([2, 1, 1, 1, 1], [1, 2, 3, 3]),
}
_BINS_9 = {
    "slow": ([5, 2, 1], [1]),
    "medium": ([5, 1, 1], [1, 1]),
    "fast": ([4, 1, 1], [1, 2]),
    "ultra": ([3, 1, 1], [2, 2]),
}
_BINS_8 = {
    "slow": ([5, 1, 1], [1]),
    "medium": ([4, 1, 1], [1, 1]),
    "fast": ([3, 1, 1], [1, 2]),
    "ultra": ([2, 1, 1], [2, 2]),
}
_BINS_FEW = {4: ([2, 1], [1]), 6: ([3, 1], [2])}


def steps_mask(
    mask_policy: str = "medium",
    total_steps: Optional[int] = None,
    compute_bins: Optional[list[int]] = None,
    cache_bins: Optional[list[int]] = None,
) -> list[int]:
    """A 0/1 list per step (1 = compute). Explicit ``compute_bins`` and ``cache_bins`` (runs of
    1s and 0s, alternating, compute first) win over ``mask_policy``; with ``total_steps`` the
    runs must cover at least that many steps and are cut there."""
    if (compute_bins is None) != (cache_bins is None):
        raise ValueError("give both compute_bins and cache_bins, or neither")
    if compute_bins is not None:
        return _alternate(list(compute_bins), list(cache_bins), total_steps)
    if mask_policy not in POLICIES:
        raise ValueError(f"mask_policy must be one of {POLICIES}, got {mask_policy!r}")
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
        raise ValueError(f"total_steps must be a positive int for a predefined mask, got {total_steps!r}")
    compute, cache = _policy_bins(mask_policy, total_steps)
    mask = _alternate(compute, cache, total_steps)
    mask[-1] = 1
    return mask


def _policy_bins(policy: str, total: int) -> tuple[list[int], list[int]]:
    if total >= 16:
        bins = _BINS_28[policy]
    elif total >= 8:
        bins = (_BINS_8 if total == 8 else _BINS_9 if total == 9 else _BINS_9_TO_15)[policy]
    elif total in _BINS_FEW:
        bins = _BINS_FEW[total]
    else:
        raise ValueError(f"predefined masks support total_steps 4, 6 or >= 8, got {total}")
    compute, cache = list(bins[0]), list(bins[1])
    if total > 28:
        _grow(compute, cache, total)
    _trim(compute, cache, total)
    return compute, cache


def _grow(compute: list[int], cache: list[int], total: int) -> None:
    """Grow the 28-step bins in rounds until they cover ``total`` steps."""
    base_compute, base_cache = list(compute), list(cache)
    scale = total / 28 * 0.5
    while True:
        for i in range(min(len(compute), len(cache))):
            for bins, base in ((compute, base_compute), (cache, base_cache)):
                bins[i] += max(int(base[i] * scale), 1)
                if sum(compute) + sum(cache) >= total:
                    return
        compute[-1] += 1
        if sum(compute) + sum(cache) >= total:
            return


def _trim(compute: list[int], cache: list[int], total: int) -> None:
    """Shorten the bins from the end, last cache bin then last compute bin, to ``total`` steps."""
    while sum(compute) + sum(cache) > total:
        for bins in (cache, compute):
            if bins and sum(compute) + sum(cache) > total:
                bins[-1] -= 1
                if bins[-1] == 0:
                    bins.pop()


def _alternate(compute: list[int], cache: list[int], total: Optional[int]) -> list[int]:
    if any(not isinstance(b, int) or b < 0 for b in (*compute, *cache)):
        raise ValueError("compute_bins and cache_bins must hold non-negative ints")
    covered = sum(compute) + sum(cache)
    if total is None:
        total = covered
    if covered < total or total < 1:
        raise ValueError(f"compute_bins + cache_bins cover {covered} steps, need total_steps = {total} >= 1")
    mask: list[int] = []
    for i in range(max(len(compute), len(cache))):
        mask += [1] * (compute[i] if i < len(compute) else 0)
        mask += [0] * (cache[i] if i < len(cache) else 0)
    return mask[:total]
