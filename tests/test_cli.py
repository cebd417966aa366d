import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from cachedit_fx.cli import main, parse_option
from cachedit_fx.metrics import compare_folders
from cachedit_fx.tiny_models import tiny_flux

FN_1 = ["--option", "Fn_compute_blocks=1"]


def random_rgb(seed: int, side: int = 16) -> np.ndarray:
    return (np.random.default_rng(seed).random((side, side, 3)) * 255).astype(np.uint8)


@pytest.fixture
def image_folders(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    ref.mkdir()
    out.mkdir()
    for index, name in enumerate(["first.png", "second.png"]):
        Image.fromarray(random_rgb(index)).save(ref / name)
        Image.fromarray(random_rgb(index + 10)).save(out / name)
    return ref, out


def test_metrics_of_two_files(tmp_path, capsys):
    image = random_rgb(0)
    changed = image.copy()
    changed[0, 0, 0] = image[0, 0, 0] ^ 2
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(changed).save(tmp_path / "b.png")
    assert main(["metrics", str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 0
    out = capsys.readouterr().out
    assert "MSE" in out and "PSNR" in out and "SSIM" in out
    assert f"{4 / (16 * 16 * 3):.4f}" in out
    assert f"{10 * math.log10(255**2 * 16 * 16 * 3 / 4):.3f}" in out


def test_metrics_of_two_folders_text_and_json(image_folders, capsys):
    ref, out_dir = image_folders
    expected = compare_folders(ref, out_dir)
    assert main(["metrics", str(ref), str(out_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == ["first.png", "second.png", "mean"]
    assert f"{expected.mean.ssim:.5f}" in lines[-1]
    assert main(["metrics", str(ref), str(out_dir), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert sorted(report["files"]) == ["first.png", "second.png"]
    assert report["mean"]["mse"] == pytest.approx(expected.mean.mse)
    assert report["files"]["second.png"]["psnr"] == pytest.approx(expected.per_file["second.png"].psnr)


def test_metrics_failure_on_valid_arguments_exits_1(tmp_path, capsys):
    Image.fromarray(random_rgb(0, 16)).save(tmp_path / "a.png")
    Image.fromarray(random_rgb(0, 20)).save(tmp_path / "b.png")
    assert main(["metrics", str(tmp_path / "a.png"), str(tmp_path / "b.png")]) == 1
    assert "(16, 16, 3)" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    [],
    ["bogus"],
    ["metrics", "only_one.png"],
    ["metrics", "missing_a.png", "missing_b.png"],
    ["inspect", "--model", "no_such_model"],
    ["inspect", "--option", "no_equals_sign"],
    ["inspect", "--model", "flux", "--model-class", "FluxTransformer2DModel"],
    ["inspect", "--model-class", "FluxTransformer2DModel"],
    ["inspect", "--config", "cfg.json"],
    ["inspect", "--model-class", "UNet2DConditionModel", "--config", "cfg.json"],
    ["inspect", "--model-class", "NoSuchModel", "--config", "cfg.json", "--inputs", "inputs.pt"],
    ["demo", "--no-such-demo-flag"],
], ids=lambda argv: " ".join(argv) or "no-command")
def test_argument_errors_exit_2(argv, capsys):
    assert main(argv) == 2
    assert "usage:" in capsys.readouterr().err


def test_metrics_file_against_folder_is_a_usage_error(image_folders, capsys):
    ref, _ = image_folders
    assert main(["metrics", str(ref / "first.png"), str(ref)]) == 2
    assert "two existing files or two existing folders" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "inspect" in out and "demo" in out and "metrics" in out


def test_option_values_are_json_when_possible():
    assert parse_option("Fn_compute_blocks=2") == ("Fn_compute_blocks", 2)
    assert parse_option("residual_diff_threshold=0.12") == ("residual_diff_threshold", 0.12)
    assert parse_option("enable_taylorseer=true") == ("enable_taylorseer", True)
    assert parse_option("steps_mask=[1, 0, 1]") == ("steps_mask", [1, 0, 1])
    assert parse_option("inner_backend=eager") == ("inner_backend", "eager")
    assert parse_option("label=a=b") == ("label", "a=b")


def test_inspect_tiny_flux_lists_both_block_stacks(capsys):
    assert main(["inspect", "--model", "flux", *FN_1]) == 0
    out = capsys.readouterr().out
    assert "transformer_blocks" in out and "single_transformer_blocks" in out
    assert "8 blocks" in out


def test_inspect_model_class_from_config_json(tmp_path, capsys):
    model, _ = tiny_flux()
    config = {key: value for key, value in dict(model.config).items() if not key.startswith("_")}
    (tmp_path / "cfg.json").write_text(json.dumps(config))
    argv = ["inspect", "--model-class", "FluxTransformer2DModel", "--config", str(tmp_path / "cfg.json"), "--json"]
    assert main(argv + FN_1) == 0
    report = json.loads(capsys.readouterr().out)
    assert "single_transformer_blocks" in json.dumps(report)


def test_inspect_with_saved_inputs(tmp_path, capsys):
    _, inputs = tiny_flux(seed=1)
    torch.save(inputs, tmp_path / "inputs.pt")
    assert main(["inspect", "--model", "flux", "--inputs", str(tmp_path / "inputs.pt"), *FN_1]) == 0
    assert "single_transformer_blocks" in capsys.readouterr().out


def test_module_entry_point_runs(image_folders):
    ref, out_dir = image_folders
    result = subprocess.run([sys.executable, "-m", "cachedit_fx.cli", "metrics", str(ref), str(out_dir)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "mean" in result.stdout


def test_demo_hands_its_arguments_to_the_demo_parser(capsys):
    assert main(["demo", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: cachedit-fx demo" in out and "--steps" in out and "--inner-backend" in out
