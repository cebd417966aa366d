"""Per-step cache arithmetic kernels (torch reference implementations)."""

from cachedit_fx.kernels.l1_rel_diff import l1_rel_diff

__all__ = ["l1_rel_diff"]
