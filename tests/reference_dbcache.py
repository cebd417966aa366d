"""Independent eager DBCache: the oracle for the compiled rewrite.

Works on the eager module through hooks on the model and its block lists (no graphs involved).
The semantics it implements, stated without reference to graphs:

  * a block "skipped" is the identity on its streams: it returns, in its output structure, the
    tensor arguments each output continues (matched by shape; the test models never have two
    streams of one shape in a block); the model's own code between blocks (concatenating text
    and image, adding control hints, side cross-attention) runs as written;
  * decision: ``x0`` is the hidden argument (``hidden_arg``) block Fn receives in a probe
    forward where blocks ``0..Fn-1`` are skipped, ``hF`` the one it receives in the real
    forward; ``r = hF - x0``; the diff is ``mean|prev - r| / mean|prev|`` against ``r`` of the
    last computed step;
  * the middle's end: the streams the first tail block receives (the last block's outputs when
    Bn = 0). On a computed step a probe forward with the middle blocks skipped gives the same
    point's values ``P``; the residual per stream is ``M = end - P``. On a cached step the middle
    blocks are skipped and ``M`` (or its forecast) is added at the middle's end.

With ``taylor_order`` k > 0 (TaylorSeer), each stream keeps a list of derivative estimates
over the computed steps, ``d[0] = value`` and ``d[i+1] = (d[i] - d_old[i]) / window``, as far
as earlier steps allow; a cached step uses ``sum_i d[i] * e**i / i!`` with ``e`` the steps
since the last computed one, as the residual (``taylor_cache_type="residual"``) or as the
middle's end itself (``"hidden_states"``). With ``foca=True`` each stream instead keeps its
two latest computed values and its two latest values (computed or forecast): a cached step
uses ``2 k - km1`` plus ``0.5 ((full - full_prev) - (k - km1))`` when two computed values
exist, then shifts the forecast in as the latest value (with one value only: reuse it).

Every call of the model (directly, or from a pipeline) is one step; ``reset()`` starts over.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Optional

import torch


class _Probed(Exception):
    """Ends a probe forward once it has captured what it needs."""


class ReferenceDBCache:
    def __init__(
        self, model: torch.nn.Module, block_lists: list[str], Fn: int, Bn: int, threshold: float,
        warmup: int = 0, warmup_interval: int = 1, max_cached: int = -1, max_continuous: int = -1,
        max_accumulated: Optional[float] = None, mask: Optional[list[int]] = None, mask_policy: str = "dynamic",
        taylor_order: int = 0, taylor_cache_type: str = "residual", hidden_taylor: bool = True,
        encoder_taylor: bool = True, foca: bool = False, hidden_arg: str = "hidden_states",
    ) -> None:
        self.foca = foca
        self.taylor_order, self.taylor_cache_type = taylor_order, taylor_cache_type
        self.hidden_taylor, self.encoder_taylor = hidden_taylor, encoder_taylor
        self.hidden_arg = hidden_arg
        self.model = model
        self.blocks = [b for name in block_lists for b in model.get_submodule(name)]
        self.Fn, self.Bn, self.threshold = Fn, Bn, threshold
        self.end = len(self.blocks) - Bn
        self.warmup, self.warmup_interval = warmup, warmup_interval
        self.max_cached, self.max_continuous, self.max_accumulated = max_cached, max_continuous, max_accumulated
        self.mask, self.mask_policy = mask, mask_policy
        self.out_names: dict[int, list[Optional[str]]] = {}
        self.mode = "idle"
        for i, block in enumerate(self.blocks):
            self._wrap(i, block)
        self._hooks = [model.register_forward_pre_hook(self._before, with_kwargs=True),
                       model.register_forward_hook(self._after, with_kwargs=True)]
        self.reset()

    def close(self) -> None:
        """Give the blocks their own forwards back and remove the model hooks."""
        for block in self.blocks:
            block.__dict__.pop("forward", None)
        for hook in self._hooks:
            hook.remove()

    def reset(self) -> None:
        self.step = 0
        self.prev: Optional[torch.Tensor] = None
        self.residuals: Optional[dict[str, torch.Tensor]] = None
        self.derivatives: dict[str, Any] = {}
        self.last_computed = -1
        self.n_cached = self.continuous = 0
        self.accumulated = 0.0
        self.cached_steps: list[int] = []
        self.diffs: dict[int, float] = {}
        self.cache_now = False

    def __call__(self, **inputs: Any) -> Any:
        with torch.no_grad():
            return self.model(**inputs)

    # -- model hooks: probes around the real forward -------------------------------------------

    def _probe(self, mode: str, args: tuple, kwargs: dict) -> dict[str, torch.Tensor]:
        self.mode, self.captured = mode, {}
        try:
            with torch.no_grad():
                self.model(*args, **kwargs)
        except _Probed:
            pass
        finally:
            self.mode = "idle"
        return self.captured

    def _before(self, module: Any, args: tuple, kwargs: dict) -> None:
        if self.mode != "idle":
            return
        self.x0 = self._probe("skip_head", args, kwargs)[self.hidden_arg]
        self.call_args = (args, kwargs)
        self.cache_now = False
        self.mode = "real"

    def _after(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        if self.mode != "real":
            return
        self.mode = "idle"
        if self.cache_now:
            self.cached_steps.append(self.step)
        else:
            ends = self.ends
            partners = self._probe("skip_middle", *self.call_args)
            self.residuals = {k: ends[k] - partners[k] for k in ends}
            self._update_derivatives(ends, partners)
        self.step += 1

    # -- blocks ----------------------------------------------------------------------------------

    def _wrap(self, index: int, block: torch.nn.Module) -> None:
        original = type(block).forward.__get__(block)
        signature = inspect.signature(original)

        def forward(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            tensors = {k: v for k, v in bound.arguments.items() if torch.is_tensor(v)}
            if self.mode == "idle":
                return original(*args, **kwargs)
            if index == self.Fn and self.mode == "skip_head":
                self.captured = dict(tensors)
                raise _Probed()
            if index == self.Fn and self.mode == "real":
                self._decide(tensors[self.hidden_arg])
            if index == self.end and self.mode == "real" and self.cache_now:
                bound.arguments.update({k: self._cached_value(k, tensors[k]) for k in self._stream_args(index, tensors)})
                return original(*bound.args, **bound.kwargs)
            skipped = (self.mode == "skip_head" and index < self.Fn) or (
                self.Fn <= index < self.end and (self.mode == "skip_middle" or self.cache_now))
            if index not in self.out_names or not skipped:
                result = original(*args, **kwargs)
                outs = list(result) if isinstance(result, tuple) else [result]
                self.out_names[index] = [_match(o, tensors, self.hidden_arg) for o in outs]
            if skipped:
                outs = [None if name is None else tensors[name] for name in self.out_names[index]]
                result = outs[0] if len(outs) == 1 else tuple(outs)
            if index == self.end and self.mode in ("real", "skip_middle"):
                streams = {k: tensors[k] for k in self._stream_args(index, tensors)}
                if self.mode == "skip_middle":
                    self.captured = streams
                    raise _Probed()
                self.ends = streams
            if index == len(self.blocks) - 1 and self.Bn == 0 and self.mode in ("real", "skip_middle"):
                return self._at_chain_end(result)
            return result

        block.forward = forward

    def _stream_args(self, index: int, tensors: dict[str, torch.Tensor]) -> list[str]:
        """The streams the first tail block receives: its tensor arguments named like an output of
        it or of the block before it."""
        names = self.out_names.get(index - 1, []) + self.out_names[index]
        return [name for name in dict.fromkeys(names) if name is not None and name in tensors]

    def _at_chain_end(self, result: Any) -> Any:
        """With Bn = 0 the middle ends with the last block's outputs."""
        outs = list(result) if isinstance(result, tuple) else [result]
        names = self.out_names[len(self.blocks) - 1]
        streams = {name: out for name, out in zip(names, outs) if name is not None}
        if self.mode == "skip_middle":
            self.captured = streams
            raise _Probed()
        if self.cache_now:
            outs = [out if name is None else self._cached_value(name, out) for name, out in zip(names, outs)]
            return outs[0] if len(outs) == 1 else tuple(outs)
        self.ends = streams
        return result

    # -- calibrators -----------------------------------------------------------------------------

    def _order(self, stream: str) -> int:
        enabled = self.hidden_taylor if stream == self.hidden_arg else self.encoder_taylor
        return (1 if self.foca else self.taylor_order) if enabled else 0

    def _tracked(self, stream: str, end: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
        if self._order(stream) > 0 and self.taylor_cache_type == "hidden_states":
            return end
        return end - partner

    def _update_derivatives(self, ends: dict[str, torch.Tensor], partners: dict[str, torch.Tensor]) -> None:
        window = self.step - self.last_computed
        for k in ends:
            value = self._tracked(k, ends[k], partners[k]).float()
            if self.foca and self._order(k) > 0:
                h = self.derivatives.setdefault(k, {"full": None, "full_prev": None, "k": None, "km1": None})
                h["full_prev"], h["full"], h["km1"], h["k"] = h["full"], value, h["k"], value
                continue
            old = self.derivatives.get(k, [])
            new = [value]
            for i in range(self._order(k)):
                if i >= len(old):
                    break
                new.append((new[i] - old[i]) / window)
            self.derivatives[k] = new
        self.last_computed = self.step

    def _cached_value(self, stream: str, partner: torch.Tensor) -> torch.Tensor:
        elapsed = self.step - self.last_computed
        if self.foca and self._order(stream) > 0:
            forecast = self._foca_forecast(self.derivatives[stream])
        else:
            forecast = sum(d * (elapsed**i / math.factorial(i)) for i, d in enumerate(self.derivatives[stream]))
        if self._order(stream) > 0 and self.taylor_cache_type == "hidden_states":
            return forecast.to(partner.dtype)
        return (partner.float() + forecast).to(partner.dtype)

    @staticmethod
    def _foca_forecast(h: dict[str, Optional[torch.Tensor]]) -> torch.Tensor:
        if h["km1"] is None:
            return h["k"]
        predicted = 2 * h["k"] - h["km1"]
        if h["full_prev"] is not None:
            predicted = predicted + 0.5 * ((h["full"] - h["full_prev"]) - (h["k"] - h["km1"]))
        h["km1"], h["k"] = h["k"], predicted
        return predicted

    # -- decision --------------------------------------------------------------------------------

    def _decide(self, h_cut: torch.Tensor) -> None:
        residual = h_cut - self.x0
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


STREAM_NAMES = ("hidden_states", "encoder_hidden_states")


def _match(output: Any, inputs: dict[str, torch.Tensor], hidden_arg: str) -> Optional[str]:
    """The tensor argument a block output continues: the one of its shape and dtype (among
    several, the one named like a stream)."""
    if not torch.is_tensor(output):
        return None
    names = [k for k, v in inputs.items() if v.shape == output.shape and v.dtype == output.dtype]
    if len(names) > 1:
        names = [k for k in names if k in (hidden_arg, *STREAM_NAMES)]
    assert len(names) == 1, f"reference cannot match a block output of shape {tuple(output.shape)} among {names}"
    return names[0]
