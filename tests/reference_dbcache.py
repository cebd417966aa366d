"""Independent eager DBCache: the oracle for the compiled rewrite.

Works on the eager module through hooks on its block lists (no graphs involved). Streams
are the blocks' ``hidden_states`` / ``encoder_hidden_states`` arguments; a block's outputs
are matched to them by shape (the tiny test models never have equal token counts).
On a cached step every middle block passes its inputs through and the last one adds the
stored middle residual, which equals ``carried = hF + M``.

With ``taylor_order`` k > 0 (TaylorSeer), each stream keeps a list of derivative estimates
over the computed steps, ``d[0] = value`` and ``d[i+1] = (d[i] - d_old[i]) / window``, as far
as earlier steps allow; a cached step uses ``sum_i d[i] * e**i / i!`` with ``e`` the steps
since the last computed one, as the residual (``taylor_cache_type="residual"``) or as the
middle output itself (``"hidden_states"``). With ``foca=True`` each stream instead keeps its
two latest computed values and its two latest values (computed or forecast): a cached step
uses ``2 k - km1`` plus ``0.5 ((full - full_prev) - (k - km1))`` when two computed values
exist, then shifts the forecast in as the latest value (with one value only: reuse it).
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Optional

import torch

STREAM_NAMES = ("hidden_states", "encoder_hidden_states")


class ReferenceDBCache:
    def __init__(
        self, model: torch.nn.Module, block_lists: list[str], Fn: int, Bn: int, threshold: float,
        warmup: int = 0, warmup_interval: int = 1, max_cached: int = -1, max_continuous: int = -1,
        max_accumulated: Optional[float] = None, mask: Optional[list[int]] = None, mask_policy: str = "dynamic",
        taylor_order: int = 0, taylor_cache_type: str = "residual", hidden_taylor: bool = True,
        encoder_taylor: bool = True, foca: bool = False,
    ) -> None:
        self.foca = foca
        self.taylor_order, self.taylor_cache_type = taylor_order, taylor_cache_type
        self.hidden_taylor, self.encoder_taylor = hidden_taylor, encoder_taylor
        self.model = model
        self.blocks = [b for name in block_lists for b in getattr(model, name)]
        self.Fn, self.Bn, self.threshold = Fn, Bn, threshold
        self.warmup, self.warmup_interval = warmup, warmup_interval
        self.max_cached, self.max_continuous, self.max_accumulated = max_cached, max_continuous, max_accumulated
        self.mask, self.mask_policy = mask, mask_policy
        self.middle = self.blocks[Fn : len(self.blocks) - Bn]
        self.out_names: dict[int, list[Optional[str]]] = {}
        for i, block in enumerate(self.blocks):
            self._wrap(i, block)
        self.reset()

    def close(self) -> None:
        """Give the blocks their own forwards back."""
        for block in self.blocks:
            block.__dict__.pop("forward", None)

    def reset(self) -> None:
        self.step = 0
        self.prev: Optional[torch.Tensor] = None
        self.residuals: Optional[dict[str, torch.Tensor]] = None
        self.derivatives: dict[str, list[torch.Tensor]] = {}
        self.last_computed = -1
        self.n_cached = self.continuous = 0
        self.accumulated = 0.0
        self.cached_steps: list[int] = []
        self.diffs: dict[int, float] = {}

    def __call__(self, **inputs: Any) -> Any:
        self.cache_now = False
        with torch.no_grad():
            out = self.model(**inputs)
        if self.cache_now:
            self.cached_steps.append(self.step)
        self.step += 1
        return out

    def _wrap(self, index: int, block: torch.nn.Module) -> None:
        original = type(block).forward.__get__(block)
        signature = inspect.signature(original)

        def forward(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            streams = {k: v for k, v in bound.arguments.items() if k in STREAM_NAMES and torch.is_tensor(v)}
            if index == 0:
                self.x0 = streams["hidden_states"]
            if index == self.Fn:
                self.h_cut = dict(streams)
            in_middle = self.Fn <= index < len(self.blocks) - self.Bn
            if in_middle and self.cache_now:
                last = index == len(self.blocks) - self.Bn - 1
                values = {k: (self._cached_value(k, v) if last and k in self.residuals else v)
                          for k, v in streams.items()}
                outs = [None if name is None else values[name] for name in self.out_names[index]]
                return outs[0] if len(outs) == 1 else tuple(outs)
            result = original(*args, **kwargs)
            outs = list(result) if isinstance(result, tuple) else [result]
            self.out_names[index] = [_match(o, streams) for o in outs]
            named = {n: o for n, o in zip(self.out_names[index], outs) if n is not None}
            if index == self.Fn - 1:
                self._decide(named["hidden_states"])
            if index == len(self.blocks) - self.Bn - 1 and not self.cache_now:
                self.residuals = {k: named[k] - self.h_cut[k] for k in named if k in self.h_cut}
                self._update_derivatives(named)
            return result

        block.forward = forward

    def _order(self, stream: str) -> int:
        enabled = self.hidden_taylor if stream == "hidden_states" else self.encoder_taylor
        return (1 if self.foca else self.taylor_order) if enabled else 0

    def _tracked(self, stream: str, middle_out: torch.Tensor) -> torch.Tensor:
        if self._order(stream) > 0 and self.taylor_cache_type == "hidden_states":
            return middle_out
        return middle_out - self.h_cut[stream]

    def _update_derivatives(self, named: dict[str, torch.Tensor]) -> None:
        window = self.step - self.last_computed
        for k in self.residuals:
            if self.foca and self._order(k) > 0:
                h = self.derivatives.setdefault(k, {"full": None, "full_prev": None, "k": None, "km1": None})
                value = self._tracked(k, named[k]).float()
                h["full_prev"], h["full"], h["km1"], h["k"] = h["full"], value, h["k"], value
                continue
            old = self.derivatives.get(k, [])
            new = [self._tracked(k, named[k]).float()]
            for i in range(self._order(k)):
                if i >= len(old):
                    break
                new.append((new[i] - old[i]) / window)
            self.derivatives[k] = new
        self.last_computed = self.step

    def _cached_value(self, stream: str, h_cut: torch.Tensor) -> torch.Tensor:
        elapsed = self.step - self.last_computed
        if self.foca and self._order(stream) > 0:
            forecast = self._foca_forecast(self.derivatives[stream])
        else:
            forecast = sum(d * (elapsed**i / math.factorial(i)) for i, d in enumerate(self.derivatives[stream]))
        if self._order(stream) > 0 and self.taylor_cache_type == "hidden_states":
            return forecast.to(h_cut.dtype)
        return (h_cut.float() + forecast).to(h_cut.dtype)

    @staticmethod
    def _foca_forecast(h: dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
        if h["km1"] is None:
            return h["k"]
        predicted = 2 * h["k"] - h["km1"]
        if h["full_prev"] is not None:
            predicted = predicted + 0.5 * ((h["full"] - h["full_prev"]) - (h["k"] - h["km1"]))
        h["km1"], h["k"] = h["k"], predicted
        return predicted

    def _decide(self, h_cut_hidden: torch.Tensor) -> None:
        residual = h_cut_hidden - self.x0
        diff = None
        if self.prev is not None:
            diff = ((self.prev - residual).abs().mean() / self.prev.abs().mean()).item()
            self.diffs[self.step] = diff
        cache = self._policy(diff)
        self.cache_now = cache
        if cache:
            self.n_cached += 1
            self.continuous += 1
            self.accumulated += max(diff or 0.0, 0.0)
        else:
            self.prev = residual.clone()
            self.continuous = 0

    def _policy(self, diff: Optional[float]) -> bool:
        s = self.step
        if s < self.warmup and s % self.warmup_interval == 0:
            return False
        if self.mask is not None:
            if s >= len(self.mask) or self.mask[s] == 1:
                return False
            if self.mask_policy == "static":
                return self.residuals is not None
        if self.max_cached >= 0 and self.n_cached >= self.max_cached:
            return False
        if self.max_continuous >= 0 and self.continuous >= self.max_continuous:
            return False
        if self.max_accumulated is not None and self.accumulated >= self.max_accumulated:
            return False
        if self.threshold <= 0 or diff is None:
            return False
        return diff < self.threshold


def _match(output: Any, streams: dict[str, torch.Tensor]) -> Optional[str]:
    if not torch.is_tensor(output):
        return None
    names = [k for k, v in streams.items() if v.shape == output.shape]
    assert len(names) == 1, f"reference cannot match a block output of shape {tuple(output.shape)}"
    return names[0]
