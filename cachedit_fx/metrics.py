"""Image fidelity metrics (MSE, PSNR, SSIM) computed locally, with no downloaded weights.

Images are numpy arrays or torch tensors shaped HxW or HxWxC (channels last). Default
``data_range``: 255 when both images are ``uint8``, 1 when both are floating point (assumed in
[0, 1]); any other dtype needs an explicit one, and a uint8 image paired with a floating-point
one is rejected (ValueError). Arithmetic runs in float64; ``compare_images`` /
``compare_folders`` load files with Pillow as 8-bit RGB (``data_range=255``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np
import torch

ImageLike = Union[np.ndarray, torch.Tensor]
PathLike = Union[str, Path]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})

SSIM_WINDOW_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def _as_array(image: ImageLike) -> np.ndarray:
    """A numpy view/copy of ``image``; bfloat16 tensors (no numpy dtype) become float32."""
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    return np.asarray(image)


def _prepared_pair(a: ImageLike, b: ImageLike, data_range: Optional[float]) -> tuple[np.ndarray, np.ndarray, float]:
    """Both images as float64 HxWxC arrays of one shape, and the data range to use."""
    first, second = _as_array(a), _as_array(b)
    if first.shape != second.shape:
        raise ValueError(f"image shapes differ: {tuple(first.shape)} vs {tuple(second.shape)}")
    if first.ndim not in (2, 3):
        raise ValueError(f"images must be HxW or HxWxC, got shape {tuple(first.shape)}")
    floating = [np.issubdtype(image.dtype, np.floating) for image in (first, second)]
    if np.uint8 in (first.dtype, second.dtype) and any(floating):
        raise ValueError(f"a uint8 image paired with a floating-point one ({first.dtype} vs {second.dtype}): "
                         "convert both to one scale first")
    if data_range is None:
        if not (first.dtype == second.dtype == np.uint8 or all(floating)):
            raise ValueError(f"cannot infer data_range for dtypes {first.dtype} and {second.dtype}; pass data_range")
        data_range = 255.0 if first.dtype == np.uint8 else 1.0
    if data_range <= 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    if first.ndim == 2:
        first, second = first[:, :, None], second[:, :, None]
    return first.astype(np.float64), second.astype(np.float64), float(data_range)


def mse(a: ImageLike, b: ImageLike) -> float:
    """Mean squared error over every pixel and channel, in the images' own units (uint8 -> [0, 255])."""
    first, second, _ = _prepared_pair(a, b, data_range=1.0)
    return float(np.mean((first - second) ** 2))


def psnr(a: ImageLike, b: ImageLike, data_range: Optional[float] = None) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)``; ``inf`` for identical images."""
    first, second, data_range = _prepared_pair(a, b, data_range)
    error = float(np.mean((first - second) ** 2))
    return math.inf if error == 0.0 else 10.0 * math.log10(data_range**2 / error)


def gaussian_window_1d(size: int = SSIM_WINDOW_SIZE, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """Normalised 1-D Gaussian of ``size`` taps; its outer product with itself is the 2-D SSIM window."""
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    weights = np.exp(-(offsets**2) / (2.0 * sigma**2))
    return weights / weights.sum()


def _filter_valid(channel: np.ndarray, taps: np.ndarray) -> np.ndarray:
    """Separable Gaussian-weighted local mean over every full window (output shrinks by len(taps) - 1)."""
    rows = np.lib.stride_tricks.sliding_window_view(channel, len(taps), axis=0) @ taps
    return np.lib.stride_tricks.sliding_window_view(rows, len(taps), axis=1) @ taps


def _ssim_channel(x: np.ndarray, y: np.ndarray, taps: np.ndarray, c1: float, c2: float) -> float:
    mu_x, mu_y = _filter_valid(x, taps), _filter_valid(y, taps)
    var_x = _filter_valid(x * x, taps) - mu_x**2
    var_y = _filter_valid(y * y, taps) - mu_y**2
    cov_xy = _filter_valid(x * y, taps) - mu_x * mu_y
    numerator = (2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
    denominator = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return float(np.mean(numerator / denominator))


def ssim(a: ImageLike, b: ImageLike, data_range: Optional[float] = None) -> float:
    """Mean structural similarity (Wang, Bovik, Sheikh & Simoncelli, IEEE TIP 13(4), 2004).

    11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03, C_i = (K_i * data_range)^2, population
    moments; the map covers the windows fully inside the image (both sides >= 11 pixels) and is
    averaged per channel, then over channels. Symmetric in ``a`` and ``b``; 1 iff equal."""
    first, second, data_range = _prepared_pair(a, b, data_range)
    height, width = first.shape[:2]
    if height < SSIM_WINDOW_SIZE or width < SSIM_WINDOW_SIZE:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW_SIZE}x{SSIM_WINDOW_SIZE}, got {height}x{width}")
    taps = gaussian_window_1d()
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    return float(np.mean([_ssim_channel(first[:, :, c], second[:, :, c], taps, c1, c2) for c in range(first.shape[2])]))


@dataclass(frozen=True)
class ImageMetrics:
    """MSE in [0, 255]^2 units, PSNR in dB (``inf`` when equal) and SSIM of one image pair."""

    mse: float
    psnr: float
    ssim: float

    def to_json(self) -> dict[str, Any]:
        """Plain dict; an infinite PSNR becomes the string ``"inf"`` so the result stays valid JSON."""
        return {key: (value if math.isfinite(value) else str(value)) for key, value in asdict(self).items()}


@dataclass(frozen=True)
class FolderMetrics:
    """Metrics of every same-named image pair of two folders, keyed by file name, and their means.

    The mean PSNR averages dB values and is ``inf`` as soon as one pair is identical."""

    per_file: dict[str, ImageMetrics]
    mean: ImageMetrics

    def to_json(self) -> dict[str, Any]:
        return {"files": {name: metrics.to_json() for name, metrics in self.per_file.items()},
                "mean": self.mean.to_json()}


def load_rgb(path: PathLike) -> np.ndarray:
    """The image at ``path`` as an HxWx3 uint8 array (Pillow, converted to RGB)."""
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)


def image_metrics(a: ImageLike, b: ImageLike, data_range: Optional[float] = None) -> ImageMetrics:
    """MSE, PSNR and SSIM of one pair, with the dtype conventions of this module."""
    return ImageMetrics(mse=mse(a, b), psnr=psnr(a, b, data_range), ssim=ssim(a, b, data_range))


def compare_images(path_a: PathLike, path_b: PathLike) -> ImageMetrics:
    """Metrics of two image files, both loaded as 8-bit RGB (``data_range=255``)."""
    return image_metrics(load_rgb(path_a), load_rgb(path_b))


def _image_names(folder: Path) -> set[str]:
    if not folder.is_dir():
        raise NotADirectoryError(f"not a folder: {folder}")
    return {entry.name for entry in folder.iterdir() if entry.is_file() and entry.suffix.lower() in IMAGE_EXTENSIONS}


def compare_folders(dir_a: PathLike, dir_b: PathLike) -> FolderMetrics:
    """Pair the images of two folders by exact file name (non-recursive; extensions png, jpg, jpeg,
    webp, bmp, any case; other files ignored) and compare every pair as ``compare_images`` does.

    Raises ValueError when a name exists in only one folder, or when there are no images at all."""
    folder_a, folder_b = Path(dir_a), Path(dir_b)
    names_a, names_b = _image_names(folder_a), _image_names(folder_b)
    unmatched = sorted(names_a ^ names_b)
    if unmatched:
        details = [f"{name} (only in {folder_a if name in names_a else folder_b})" for name in unmatched]
        raise ValueError("images without a counterpart: " + ", ".join(details))
    if not names_a:
        raise ValueError(f"no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in {folder_a} or {folder_b}")
    per_file = {name: compare_images(folder_a / name, folder_b / name) for name in sorted(names_a)}
    mean = {field.name: float(np.mean([getattr(m, field.name) for m in per_file.values()]))
            for field in fields(ImageMetrics)}
    return FolderMetrics(per_file=per_file, mean=ImageMetrics(**mean))
