"""Independent eager DBPrune: the oracle for the per-block rewrite.

Hooks on the model's blocks (no graphs). Every block outside the first Fn, the last Bn and
``non_prune`` compares its ``hidden_states`` argument with the one it saw at its last computed
step; when pruned it returns its inputs plus the residuals it stored then (outputs matched to
the ``hidden_states`` / ``encoder_hidden_states`` arguments by shape).
"""

from __future__ import annotations

import inspect
from typing import Any, Optional

import torch

STREAM_NAMES = ("hidden_states", "encoder_hidden_states")


class ReferenceDBPrune:
    def __init__(
        self, model: torch.nn.Module, block_lists: list[str], Fn: int, Bn: int, threshold: float,
        warmup: int = 0, non_prune: tuple[int, ...] = (), max_pruned_steps: int = -1, max_continuous: int = -1,
        dynamic: bool = False, max_dynamic: Optional[float] = None, relax: float = 1.25,
    ) -> None:
        self.model = model
        self.blocks = [b for name in block_lists for b in getattr(model, name)]
        n = len(self.blocks)
        self.prunable = [i for i in range(n) if not (i < Fn or i >= n - Bn or i in non_prune)]
        self.threshold, self.warmup = threshold, warmup
        self.max_pruned_steps, self.max_continuous = max_pruned_steps, max_continuous
        self.dynamic, self.max_dynamic, self.relax = dynamic, max_dynamic, relax
        for i in self.prunable:
            self._wrap(i, self.blocks[i])
        self.step = 0
        self.state: dict[int, dict[str, Any]] = {i: {"prev": None, "res": None, "run": 0} for i in self.prunable}
        self.pruned_steps = 0
        self.pruned: dict[int, list[int]] = {}

    def close(self) -> None:
        for i in self.prunable:
            self.blocks[i].__dict__.pop("forward", None)

    def __call__(self, **inputs: Any) -> Any:
        self.step_diffs: list[float] = []
        self.step_pruned: list[int] = []
        with torch.no_grad():
            out = self.model(**inputs)
        if self.step_pruned:
            self.pruned[self.step] = list(self.step_pruned)
            self.pruned_steps += 1
        self.step += 1
        return out

    def _threshold(self) -> float:
        positive = [d for d in self.step_diffs[:5] if d > 0]
        if not self.dynamic or not positive:
            return self.threshold
        relaxed = sum(positive) / len(positive) * self.relax
        ceiling = 2 * self.threshold if self.max_dynamic is None else self.max_dynamic
        return max(relaxed, self.threshold) if relaxed < ceiling else self.threshold

    def _wrap(self, index: int, block: torch.nn.Module) -> None:
        original = type(block).forward.__get__(block)
        signature = inspect.signature(original)

        def forward(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            streams = {k: v for k, v in bound.arguments.items() if k in STREAM_NAMES and torch.is_tensor(v)}
            state = self.state[index]
            x = streams["hidden_states"]
            diff = None
            if state["prev"] is not None:
                diff = ((state["prev"] - x).abs().mean() / state["prev"].abs().mean()).item()
            prune = self._decide(state, diff)
            if diff is not None:
                self.step_diffs.append(diff)
            if prune:
                self.step_pruned.append(index)
                state["run"] += 1
                values = {k: v + state["res"][k] for k, v in streams.items() if k in state["res"]}
                outs = [values[name] for name in state["names"]]
                return outs[0] if len(outs) == 1 else tuple(outs)
            result = original(*args, **kwargs)
            outs = list(result) if isinstance(result, tuple) else [result]
            state["names"] = [_match(o, streams) for o in outs]
            state["res"] = {n: o - streams[n] for n, o in zip(state["names"], outs)}
            state["prev"] = x.clone()
            state["run"] = 0
            return result

        block.forward = forward

    def _decide(self, state: dict[str, Any], diff: Optional[float]) -> bool:
        if self.step < self.warmup:
            return False
        if 0 <= self.max_pruned_steps <= self.pruned_steps:
            return False
        if 0 <= self.max_continuous <= state["run"]:
            return False
        threshold = self._threshold()
        if threshold <= 0 or diff is None:
            return False
        return diff < threshold


def _match(output: torch.Tensor, streams: dict[str, torch.Tensor]) -> str:
    names = [k for k, v in streams.items() if v.shape == output.shape]
    assert len(names) == 1, f"reference cannot match a block output of shape {tuple(output.shape)}"
    return names[0]
