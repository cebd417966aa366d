"""A small CNN digit classifier trained on the same split as the DiT. Its 32-d penultimate
layer is the feature space of the Frechet distance; its argmax gives label agreement."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.quality.data import NUM_CLASSES, Digits

FEATURE_DIM = 32


class DigitClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, FEATURE_DIM)
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 16, 16)`` in [-1, 1] -> ``(B, 32)``."""
        x = F.max_pool2d(F.relu(self.conv1(images)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc(x.flatten(1)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def _shifted(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Each image moved by up to one pixel in each direction (zero-padded with -1)."""
    padded = F.pad(images, (1, 1, 1, 1), value=-1.0)
    offsets = torch.randint(0, 3, (images.shape[0], 2), generator=gen)
    return torch.stack([padded[i, :, dy:dy + images.shape[2], dx:dx + images.shape[3]]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


def train_classifier(train: Digits, epochs: int = 30, batch_size: int = 64, seed: int = 0) -> DigitClassifier:
    """Adam, one-pixel shift augmentation; deterministic for a seed."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = DigitClassifier()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(train.labels), generator=gen)
        for start in range(0, len(order), batch_size):
            index = order[start:start + batch_size]
            loss = F.cross_entropy(model(_shifted(train.images[index], gen)), train.labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model.eval().requires_grad_(False)


def accuracy(model: DigitClassifier, data: Digits) -> float:
    with torch.no_grad():
        return float((model(data.images).argmax(1) == data.labels).float().mean())


def load_classifier(path) -> DigitClassifier:
    from safetensors.torch import load_file

    model = DigitClassifier()
    model.load_state_dict(load_file(str(path)))
    return model.eval().requires_grad_(False)
