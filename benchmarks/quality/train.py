"""Train the digits DiT (rectified flow matching) and the digit classifier on CPU, and write
the weights, the loss curve, a sample grid and the model card to ``weights/``.

    python -m benchmarks.quality.train                 # the shipped run (seed 0)
    python -m benchmarks.quality.train --steps 50 --out /tmp/check   # a short check

Deterministic for a seed and thread count: the same run gives the same loss curve.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from benchmarks.models import generate
from benchmarks.quality.classifier import accuracy, train_classifier
from benchmarks.quality.data import Digits, load_digits_split, to_unit_range
from benchmarks.quality.model import (ClassConditioner, WEIGHTS_DIR, balanced_labels, digits_bench_model,
                                      new_transformer, patchify, position_ids, unpatchify)

DEFAULTS = dict(steps=2000, batch_size=128, lr=1e-3, warmup=100, ema_decay=0.999, seed=0)


def flow_matching_loss(transformer: torch.nn.Module, conditioner: ClassConditioner, images: torch.Tensor,
                       labels: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise, target velocity noise - x0; t logit-normal (as SD3)."""
    x0 = patchify(images)
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.sigmoid(torch.randn(x0.shape[0], generator=gen))
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * noise
    tokens, pooled = conditioner(labels)
    img_ids, txt_ids = position_ids(x0.device, x0.dtype)
    velocity = transformer(hidden_states=xt, encoder_hidden_states=tokens, pooled_projections=pooled, timestep=t,
                           img_ids=img_ids, txt_ids=txt_ids, return_dict=False)[0]
    return F.mse_loss(velocity, noise - x0)


def learning_rate(step: int, steps: int, peak: float, warmup: int) -> float:
    """Linear warmup, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_diffusion(train: Digits, steps: int, batch_size: int, lr: float, warmup: int, ema_decay: float,
                    seed: int, compile: bool = False) -> tuple[torch.nn.Module, ClassConditioner, list[float]]:
    """(EMA transformer, EMA conditioner, loss of every step). ``compile``: the forward and
    backward through Inductor (1.4x faster on CPU; same curve within float noise)."""
    transformer = new_transformer(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        conditioner = ClassConditioner()
    transformer.train()
    params = list(transformer.parameters()) + list(conditioner.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    ema = [copy.deepcopy(transformer).requires_grad_(False), copy.deepcopy(conditioner).requires_grad_(False)]
    ema_params = list(ema[0].parameters()) + list(ema[1].parameters())
    gen = torch.Generator().manual_seed(seed)
    forward = torch.compile(transformer) if compile else transformer
    losses = []
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, steps, lr, warmup)
        index = torch.randint(0, len(train.labels), (batch_size,), generator=gen)
        loss = flow_matching_loss(forward, conditioner, train.images[index], train.labels[index], gen)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        decay = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)
        losses.append(float(loss.detach()))
    return ema[0].eval(), ema[1].eval(), losses


def save_weights(transformer: torch.nn.Module, conditioner: ClassConditioner, path: Path) -> None:
    from safetensors.torch import save_file

    state = {f"transformer.{k}": v.contiguous() for k, v in transformer.state_dict().items()}
    state.update({f"conditioner.{k}": v.contiguous() for k, v in conditioner.state_dict().items()})
    save_file(state, str(path))


def sample_images(per_class: int, steps: int, weights: Path, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(images ``(10 per_class, 1, 16, 16)`` in [0, 1], labels) sampled eagerly, uncached."""
    bench = digits_bench_model(per_class, noise_seed=seed, weights=weights)
    model = bench.build(torch.device("cpu"), torch.float32)
    inputs = bench.make_inputs(torch.Generator(), torch.device("cpu"), torch.float32)
    with torch.no_grad():
        latent = generate(lambda **kw: model(**kw, return_dict=False)[0], bench, inputs, steps)
    return to_unit_range(unpatchify(latent)), balanced_labels(per_class)


def save_grid(images: torch.Tensor, per_row: int, path: Path, scale: int = 4) -> None:
    """Images ``(N, 1, H, W)`` in [0, 1] as one PNG grid (nearest-neighbour upscaled)."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = math.ceil(n / per_row)
    grid = torch.ones(rows * (h + 1) + 1, per_row * (w + 1) + 1)
    for i in range(n):
        r, c = divmod(i, per_row)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = images[i, 0]
    pixels = (grid * 255).round().to(torch.uint8).numpy()
    Image.fromarray(pixels, mode="L").resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST).save(path)


def plot_losses(losses: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    window = 50
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(losses, alpha=0.3, linewidth=0.6, label="per step")
    ax.plot(smooth, linewidth=1.5, label=f"mean of last {window}")
    ax.set_xlabel("training step")
    ax.set_ylabel("flow-matching MSE")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_card(record: dict[str, Any]) -> str:
    """MODEL_CARD.md from a training record (every figure from the record)."""
    from benchmarks.quality.model import TRANSFORMER_CONFIG

    hyper = record["hyperparameters"]
    return f"""# digits-flux: a trained FLUX-architecture DiT for offline cache-quality tests

Written by `python -m benchmarks.quality.train` (do not edit: rerun it).

- **Data**: scikit-learn's handwritten digits (`sklearn.datasets.load_digits`, 1797 8x8
  grey images shipped inside the package), bilinearly upscaled to 16x16, scaled to [-1, 1];
  a seeded 80/20 split: {record["train_examples"]} training, {record["test_examples"]} test images.
- **Model**: `diffusers.FluxTransformer2DModel({", ".join(f"{k}={v!r}" for k, v in TRANSFORMER_CONFIG.items())})`,
  {record["parameters"]:,} parameters, on 2x2 patches (64 image tokens of 4 channels, image ids
  (0, row, col)); a class conditioner (`ClassConditioner`: 2 "text" tokens of 32 and a pooled
  vector of 32 per digit) stands in for the text encoder. Both are in `digits_flux.safetensors`
  (`transformer.*`, `conditioner.*`; EMA weights, fp32).
- **Training**: rectified flow matching (`x_t = (1 - t) x0 + t noise`, target `noise - x0`,
  logit-normal `t`), AdamW lr {hyper["lr"]} (linear warmup {hyper["warmup"]} steps, cosine to 10%),
  batch {hyper["batch_size"]}, {hyper["steps"]} steps, gradient clip 1.0, EMA {hyper["ema_decay"]}, seed
  {hyper["seed"]}, {record["threads"]} CPU threads{", forward/backward through torch.compile" if record["compiled"] else ""}:
  {record["train_seconds"] / 60:.1f} minutes. Mean loss of the last 100 steps:
  {record["final_loss_mean_100"]:.4f} (curve: `loss.png`, every step in `training.json`).
- **Reproducibility**: the same seed and thread count give the same losses; retrained eagerly,
  the first steps match this run's within float noise (`tests/test_quality_testbed.py`).
- **Samples** (`samples.png`, row k = digit k, 28 Euler steps, uncached, seed 1): the classifier
  below labels {record["sample_label_agreement"]:.0%} of them as the digit asked for.
- **Classifier** (`digits_classifier.safetensors`, `benchmarks/quality/classifier.py`): a
  two-conv CNN with a 32-d feature layer, trained {record["classifier_seconds"]:.0f} s on the same
  training split; test accuracy {record["classifier_test_accuracy"]:.1%}. Its features give the
  Frechet distance of the quality benchmark.

![loss](loss.png) ![samples](samples.png)
"""


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for key, value in DEFAULTS.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eager", action="store_true", help="train without torch.compile")
    parser.add_argument("--sample-steps", type=int, default=28)
    parser.add_argument("--out", default=str(WEIGHTS_DIR))
    parser.add_argument("--card-only", action="store_true", help="rewrite MODEL_CARD.md from training.json")
    args = parser.parse_args(argv)
    if args.card_only:
        record = json.loads((Path(args.out) / "training.json").read_text())
        (Path(args.out) / "MODEL_CARD.md").write_text(model_card(record))
        return record
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, test = load_digits_split()
    hyper = {k: getattr(args, k) for k in DEFAULTS}

    start = time.perf_counter()
    transformer, conditioner, losses = train_diffusion(train, **hyper, compile=not args.eager)
    train_seconds = time.perf_counter() - start
    save_weights(transformer, conditioner, out / "digits_flux.safetensors")

    start = time.perf_counter()
    classifier = train_classifier(train, seed=args.seed)
    classifier_seconds = time.perf_counter() - start
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in classifier.state_dict().items()}, str(out / "digits_classifier.safetensors"))

    images, labels = sample_images(10, args.sample_steps, out / "digits_flux.safetensors")
    save_grid(images.view(10, 10, 1, *images.shape[2:]).transpose(0, 1).reshape(images.shape), 10, out / "samples.png")
    with torch.no_grad():
        agreement = float((classifier(images * 2 - 1).argmax(1) == labels).float().mean())
    plot_losses(losses, out / "loss.png")
    record = {
        "hyperparameters": hyper, "threads": args.threads, "compiled": not args.eager, "train_examples": len(train.labels),
        "test_examples": len(test.labels), "parameters": sum(p.numel() for p in transformer.parameters()),
        "train_seconds": train_seconds, "classifier_seconds": classifier_seconds,
        "classifier_test_accuracy": accuracy(classifier, test), "sample_label_agreement": agreement,
        "final_loss_mean_100": sum(losses[-100:]) / len(losses[-100:]), "losses": losses,
    }
    (out / "training.json").write_text(json.dumps(record, indent=1))
    (out / "MODEL_CARD.md").write_text(model_card(record))
    print(json.dumps({k: v for k, v in record.items() if k != "losses"}, indent=1))
    return record


if __name__ == "__main__":
    main()
