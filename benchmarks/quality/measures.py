"""Quality of a set of generated digits: against the uncached samples (PSNR, SSIM) and
against the real test digits through the classifier (Frechet distance, label agreement)."""

from __future__ import annotations

import math

import numpy as np
import torch

from benchmarks.quality.classifier import DigitClassifier
from cachedit_fx import metrics


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` of two feature sets ``(N, D)``.

    The trace of the matrix square root is taken as the sum of the square roots of the
    eigenvalues of ``S_a^(1/2) S_b S_a^(1/2)`` (symmetric, so ``eigh`` is exact and real)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sets must be (N, D) with one D, got {a.shape} and {b.shape}")
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = root_a @ cov_b @ root_a
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def batch_psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR (dB) over all pixels of two ``(N, 1, H, W)`` sets in [0, 1]; ``inf`` when equal."""
    mse = float((images.double() - reference.double()).pow(2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def mean_ssim(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean SSIM of the image pairs (``cachedit_fx.metrics.ssim``, data range 1)."""
    return float(np.mean([metrics.ssim(x[0], y[0], data_range=1.0) for x, y in zip(images, reference)]))


def classifier_features(classifier: DigitClassifier, images: torch.Tensor) -> np.ndarray:
    """Features of images in [0, 1]."""
    with torch.no_grad():
        return classifier.features(images.float() * 2 - 1).double().numpy()


def label_agreement(classifier: DigitClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of images in [0, 1] the classifier assigns to the class they were generated for."""
    with torch.no_grad():
        return float((classifier(images.float() * 2 - 1).argmax(1) == labels).float().mean())
