"""The tiny offline pipelines build, run a few steps (latent and PIL output) and are deterministic."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from cachedit_fx.tiny_pipelines import TINY_PIPELINES, default_call_kwargs

CASES = {"flux": ("flux", {}), "wan": ("wan", {}), "wan_two_experts": ("wan", {"two_experts": True})}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny ops on a busy 2-core machine run far faster on one intra-op thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(case: str, seed: int = 0):
    name, kwargs = CASES[case]
    pipe = TINY_PIPELINES[name](seed=seed, **kwargs)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(pipe, case: str, seed: int = 0, output_type: str = "latent", steps: int = 2):
    out = pipe(**dict(default_call_kwargs(CASES[case][0]), num_inference_steps=steps),
               generator=torch.Generator().manual_seed(seed), output_type=output_type)
    return out.images if CASES[case][0] == "flux" else out.frames


@pytest.mark.parametrize("case", sorted(CASES))
def test_runs_latent_and_pil(case):
    pipe = build(case)
    latents = call(pipe, case)
    assert latents.shape == ((1, 64, 16) if case == "flux" else (1, 4, 3, 4, 4))
    assert torch.isfinite(latents).all()
    images = call(pipe, case, output_type="pil")
    frames = images if case == "flux" else images[0]
    assert len(frames) == (1 if case == "flux" else 9)
    assert all(isinstance(f, Image.Image) and f.size == (32, 32) for f in frames)


@pytest.mark.parametrize("case", sorted(CASES))
def test_deterministic_given_seeds(case):
    rng = torch.get_rng_state()
    first, second = build(case, seed=0), build(case, seed=0)
    assert torch.equal(rng, torch.get_rng_state()), "building must not touch the global RNG"
    assert torch.equal(call(first, case, seed=1), call(second, case, seed=1))
    assert torch.equal(call(first, case, seed=1), call(first, case, seed=1))
    assert not torch.equal(call(first, case, seed=1), call(first, case, seed=2))
    assert not torch.equal(call(first, case, seed=1), call(build(case, seed=1), case, seed=1))


def test_transformer_calls_per_step():
    """Flux: one call a step; Wan: CFG, two calls a step; Wan 2.2: both experts run."""
    for case, expected in (("flux", {"transformer": 3}), ("wan", {"transformer": 6}),
                           ("wan_two_experts", {"transformer": 2, "transformer_2": 4})):
        pipe = build(case)
        seen = {name: 0 for name in expected}
        hooks = [getattr(pipe, name).register_forward_pre_hook(
            lambda *_, name=name: seen.__setitem__(name, seen[name] + 1)) for name in expected]
        call(pipe, case, steps=3)
        for hook in hooks:
            hook.remove()
        assert seen == expected, case


def test_unknown_pipeline_name():
    with pytest.raises(KeyError):
        default_call_kwargs("sdxl")
