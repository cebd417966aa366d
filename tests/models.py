"""Tiny-model fixtures for tests: block lists and a deterministic denoising trajectory."""

from __future__ import annotations

from typing import Any, Iterator

import torch

from cachedit_fx.tiny_models import TINY_MODELS

BLOCK_LISTS = {
    "flux": ["transformer_blocks", "single_transformer_blocks"],
    "qwen_image": ["transformer_blocks"],
    "wan": ["blocks"],
    "sd3": ["transformer_blocks"],
    "cogvideox": ["transformer_blocks"],
    "hunyuan_video": ["transformer_blocks", "single_transformer_blocks"],
    "pixart": ["transformer_blocks"],
}
MODEL_NAMES = list(TINY_MODELS)


def chain_length(name: str, model: torch.nn.Module) -> int:
    return sum(len(getattr(model, attr)) for attr in BLOCK_LISTS[name])


def trajectory(inputs: dict[str, Any], steps: int, seed: int = 1, offset: float = 0.0) -> Iterator[dict[str, Any]]:
    """Per-step inputs: the latent moves smoothly from its start toward fixed noise and the
    timestep falls, like a sampler (independent of the model's outputs)."""
    start = inputs["hidden_states"]
    target = torch.randn(start.shape, generator=torch.Generator().manual_seed(seed))
    t0 = inputs["timestep"]
    for k in range(steps):
        a = (k + offset) / (steps + 1)
        step_inputs = dict(inputs)
        step_inputs["hidden_states"] = (1 - a) * start + a * target
        t = t0.double() * (1 - a) if t0.is_floating_point() else (t0.double() * (1 - a)).round()
        step_inputs["timestep"] = t.to(t0.dtype)
        yield step_inputs


def run_in_threads_interleaved(compiled, *requests) -> list[tuple[list[torch.Tensor], list[int]]]:
    """Each request's steps in a thread of its own, the threads advancing in lock step (no
    ``cache_context``); per request, its outputs and the cached steps its summary reports."""
    import threading

    import cachedit_fx

    barrier, results = threading.Barrier(len(requests)), {}

    def worker(key, steps):
        outputs = []
        for step in steps:
            barrier.wait()
            outputs.append(run(compiled, [step])[0])
        results[key] = (outputs, cachedit_fx.summary(compiled).cached_steps)

    threads = [threading.Thread(target=worker, args=(k, s)) for k, s in enumerate(requests)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [results[k] for k in range(len(requests))]


def run(model_fn, steps_inputs) -> list[torch.Tensor]:
    with torch.no_grad():
        return [model_fn(**s, return_dict=False)[0].clone() for s in steps_inputs]


class ToyBlock(torch.nn.Module):
    """A residual block of a toy chain; ``breaks`` puts a Dynamo graph break inside it, before
    its last op."""

    def __init__(self, breaks: bool = False) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.breaks = breaks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + torch.tanh(self.lin(x))
        if self.breaks:
            torch._dynamo.graph_break()
        return x * 1.5


class ToyChain(torch.nn.Module):
    """An embedding, ``depth`` ``ToyBlock``s and an output projection; ``forward(x, timestep)``
    (the timestep is added to the embedding, as a DiT's conditioning would be)."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(8, 8)
        self.blocks = torch.nn.ModuleList(ToyBlock() for _ in range(depth))
        self.out = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + timestep.reshape(-1, 1, 1) * 1e-3
        for block in self.blocks:
            h = block(h)
        return self.out(h)


def matrix_oracle(model, lists, steps, threshold, Fn=1, Bn=0, hidden_arg="hidden_states"):
    """The eager reference (``reference_dbcache.py``) run over support-matrix steps
    (``benchmarks.coverage.matrix``'s inputs): its outputs per step and the reference itself."""
    from benchmarks.coverage.matrix import _run
    from reference_dbcache import ReferenceDBCache

    reference = ReferenceDBCache(model, lists, Fn, Bn, threshold=threshold, warmup=1, hidden_arg=hidden_arg)
    try:
        return _run(reference.model, steps), reference
    finally:
        reference.close()


def max_rel_err(got, want) -> float:
    """Largest per-output ``max|got - want| / max|want|`` over steps of output tuples."""
    return max(((g - w).abs().max() / w.abs().max().clamp_min(1e-12)).item()
               for got_step, want_step in zip(got, want) for g, w in zip(got_step, want_step))
