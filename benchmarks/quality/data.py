"""scikit-learn's handwritten digits (1797 8x8 images shipped inside the package, no
download), upscaled to 16x16, as tensors in [-1, 1] with a fixed train / test split."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

IMAGE_SIZE = 16
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@dataclass(frozen=True)
class Digits:
    """Images ``(N, 1, 16, 16)`` in [-1, 1] and labels ``(N,)`` int64."""

    images: torch.Tensor
    labels: torch.Tensor


def load_digits_split() -> tuple[Digits, Digits]:
    """(train, test): the same split every call (seeded permutation, 20% test)."""
    from sklearn.datasets import load_digits

    raw = load_digits()
    pixels = torch.tensor(raw.images, dtype=torch.float32).unsqueeze(1) / 16.0
    images = F.interpolate(pixels, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1) * 2 - 1
    labels = torch.tensor(raw.target, dtype=torch.int64)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(SPLIT_SEED))
    num_test = int(round(TEST_FRACTION * len(labels)))
    test, train = order[:num_test], order[num_test:]
    return Digits(images[train], labels[train]), Digits(images[test], labels[test])


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] model space to [0, 1] pixels (clamped)."""
    return ((images.float() + 1) / 2).clamp(0, 1)
