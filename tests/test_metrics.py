import math

import numpy as np
import pytest
import torch
from PIL import Image

from cachedit_fx.metrics import FolderMetrics, ImageMetrics, compare_folders, compare_images, mse, psnr, ssim


def reference_ssim(x: np.ndarray, y: np.ndarray, data_range: float) -> float:
    """Direct, unvectorised SSIM (Wang et al. 2004): 2-D 11x11 Gaussian window (sigma 1.5), every
    fully contained window, mean over positions then over channels."""
    radius = 5
    window = [[math.exp(-(i * i + j * j) / (2 * 1.5**2)) for j in range(-radius, radius + 1)]
              for i in range(-radius, radius + 1)]
    total = sum(sum(row) for row in window)
    window = [[w / total for w in row] for row in window]
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    x = x.astype(np.float64).reshape(x.shape[0], x.shape[1], -1)
    y = y.astype(np.float64).reshape(y.shape[0], y.shape[1], -1)
    channel_means = []
    for c in range(x.shape[2]):
        values = []
        for top in range(x.shape[0] - 2 * radius):
            for left in range(x.shape[1] - 2 * radius):
                mx = my = sxx = syy = sxy = 0.0
                for i in range(2 * radius + 1):
                    for j in range(2 * radius + 1):
                        w, a, b = window[i][j], x[top + i, left + j, c], y[top + i, left + j, c]
                        mx += w * a
                        my += w * b
                        sxx += w * a * a
                        syy += w * b * b
                        sxy += w * a * b
                vx, vy, cxy = sxx - mx * mx, syy - my * my, sxy - mx * my
                values.append((2 * mx * my + c1) * (2 * cxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2)))
        channel_means.append(sum(values) / len(values))
    return sum(channel_means) / len(channel_means)


def random_image(seed: int, shape=(16, 14, 3)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape)


def test_mse_and_psnr_match_hand_computed_values():
    a = np.array([[0, 10], [20, 30]], dtype=np.uint8)
    b = np.array([[0, 12], [16, 30]], dtype=np.uint8)
    assert mse(a, b) == pytest.approx((0 + 4 + 16 + 0) / 4)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 5.0))
    fa, fb = np.array([0.0, 0.5]), np.array([0.1, 0.5])
    assert psnr(fa[None], fb[None]) == pytest.approx(10 * math.log10(1 / 0.005))
    assert psnr(fa[None], fb[None], data_range=2.0) == pytest.approx(10 * math.log10(4 / 0.005))


def test_identical_images_give_zero_mse_infinite_psnr_unit_ssim():
    image = random_image(0)
    assert mse(image, image) == 0.0
    assert psnr(image, image) == math.inf
    assert ssim(image, image) == pytest.approx(1.0)


def test_ssim_matches_direct_reference_implementation():
    a = random_image(1)
    b = np.clip(a + 0.2 * random_image(2) - 0.1, 0, 1)
    assert ssim(a, b) == pytest.approx(reference_ssim(a, b, 1.0), rel=1e-10)
    a8, b8 = (a * 255).astype(np.uint8), (b * 255).astype(np.uint8)
    assert ssim(a8, b8) == pytest.approx(reference_ssim(a8, b8, 255.0), rel=1e-10)
    gray_a, gray_b = a[:, :, 0], b[:, :, 0]
    assert ssim(gray_a, gray_b) == pytest.approx(reference_ssim(gray_a, gray_b, 1.0), rel=1e-10)


def test_ssim_is_symmetric_and_accepts_tensors():
    a, b = random_image(3), random_image(4)
    assert ssim(a, b) == pytest.approx(ssim(b, a), rel=1e-12)
    assert ssim(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ssim(a, b), rel=1e-12)
    assert ssim(a, b) < 0.5


def test_ssim_of_constant_images_is_the_luminance_term():
    first, second = 0.2, 0.7
    a, b = np.full((12, 13), first), np.full((12, 13), second)
    c1 = (0.01 * 1.0) ** 2
    assert ssim(a, b) == pytest.approx((2 * first * second + c1) / (first**2 + second**2 + c1), rel=1e-10)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(16, 14, 3\).*\(14, 16, 3\)"):
        ssim(random_image(0), random_image(0, (14, 16, 3)))
    with pytest.raises(ValueError, match="uint8"):
        mse(np.zeros((2, 2), np.uint8), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((8, 20)), np.zeros((8, 20)))


def write_png(path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def test_compare_images_on_pngs(tmp_path):
    a = (random_image(5, (16, 16, 3)) * 255).astype(np.uint8)
    b = a.copy()
    b[0, 0, 0] = a[0, 0, 0] ^ 1
    write_png(tmp_path / "a.png", a)
    write_png(tmp_path / "b.png", b)
    write_png(tmp_path / "gray.png", a[:, :, 0])
    result = compare_images(tmp_path / "a.png", tmp_path / "b.png")
    assert isinstance(result, ImageMetrics)
    assert result.mse == pytest.approx(1 / (16 * 16 * 3))
    assert result.psnr == pytest.approx(10 * math.log10(255**2 * 16 * 16 * 3))
    assert result.ssim == pytest.approx(reference_ssim(a, b, 255.0), rel=1e-10)
    same = compare_images(tmp_path / "gray.png", tmp_path / "gray.png")
    assert same.psnr == math.inf and same.to_json()["psnr"] == "inf"


def test_compare_folders_pairs_by_name_and_averages(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    ref.mkdir()
    out.mkdir()
    images = [(random_image(seed, (12, 12, 3)) * 255).astype(np.uint8) for seed in range(3)]
    for name, image, other in (("x.png", images[0], images[1]), ("y.bmp", images[1], images[2])):
        write_png(ref / name, image)
        write_png(out / name, other)
    (ref / "notes.txt").write_text("ignored")
    result = compare_folders(ref, out)
    assert isinstance(result, FolderMetrics)
    assert sorted(result.per_file) == ["x.png", "y.bmp"]
    assert result.per_file["x.png"].mse == pytest.approx(mse(images[0], images[1]))
    assert result.mean.ssim == pytest.approx((ssim(images[0], images[1]) + ssim(images[1], images[2])) / 2)
    assert result.mean.mse == pytest.approx((mse(images[0], images[1]) + mse(images[1], images[2])) / 2)


def test_compare_folders_rejects_unmatched_and_empty(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    ref.mkdir()
    out.mkdir()
    with pytest.raises(ValueError, match="no images"):
        compare_folders(ref, out)
    image = np.zeros((12, 12, 3), np.uint8)
    write_png(ref / "a.png", image)
    write_png(out / "a.png", image)
    write_png(ref / "only_ref.png", image)
    write_png(out / "only_out.png", image)
    with pytest.raises(ValueError, match="only_out.png.*only_ref.png"):
        compare_folders(ref, out)
