"""Emit the graph nodes that move sharded values between ranks.

Every collective is a ``torch.ops._c10d_functional`` op followed by ``wait_tensor``, so it
lives inside the compiled pieces and Inductor may overlap it with compute. All sizes are
Python ints fixed at compile time (each rank compiles its own program). Invariant: a value
handed to these builders holds exactly this rank's chunks of its ``Sharded`` layout.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.fx as fx

from cachedit_fx.shard_layout import Sharded, local_length, local_pieces, rank_major_pieces

_C10D = torch.ops._c10d_functional


@dataclass
class CollectiveEmitter:
    """Appends nodes (named ``cachedit_*``) to ``graph``; ``meta`` (e.g. the consumer's
    ``nn_module_stack``) is copied onto each, so inserted nodes stay inside the block that needs them."""

    graph: fx.Graph
    world: int
    rank: int
    group_name: str
    meta: dict[str, Any]
    counts: dict[str, int]

    def call(self, target: Any, *args: Any, **kwargs: Any) -> fx.Node:
        name = getattr(target, "__name__", "op").split(".")[0]
        node = self.graph.create_node("call_function", target, args, kwargs, name=f"cachedit_{name}")
        node.meta.update(self.meta)
        return node

    def method(self, name: str, *args: Any) -> fx.Node:
        node = self.graph.create_node("call_method", name, args, {}, name=f"cachedit_{name}")
        node.meta.update(self.meta)
        return node

    def _collective(self, name: str, *args: Any) -> fx.Node:
        self.counts[name] = self.counts.get(name, 0) + 1
        return self.call(_C10D.wait_tensor.default, self.call(getattr(_C10D, name).default, *args))

    def all_reduce_sum(self, x: fx.Node) -> fx.Node:
        return self._collective("all_reduce", x, "sum", self.group_name)

    def take_pieces(self, x: fx.Node, dim: int, pieces: Sequence[tuple[int, int]]) -> fx.Node:
        """``x`` (full along ``dim``) narrowed to ``pieces`` and concatenated."""
        parts = [self.call(torch.narrow, x, dim, start, size) for start, size in pieces]
        return parts[0] if len(parts) == 1 else self.call(torch.cat, parts, dim)

    def local_slice(self, x: fx.Node, spec: Sharded) -> fx.Node:
        """A replicated ``x`` cut down to this rank's chunks of ``spec``."""
        return self.take_pieces(x, spec.dim, local_pieces(spec.segments, self.world, self.rank))

    def rank_major(self, x: fx.Node, spec: Sharded) -> fx.Node:
        """A replicated ``x`` reordered along ``spec.dim`` into the ranks' chunks one rank after
        another (how all-to-all lays out a sharded sequence)."""
        return self.take_pieces(x, spec.dim, rank_major_pieces(spec.segments, self.world))

    def all_gather(self, x: fx.Node, spec: Sharded, shape: Sequence[int]) -> fx.Node:
        """The full tensor (global order) from every rank's local ``x``; ``shape`` is the full shape.
        Uneven chunks are padded to the longest for the gather and dropped again."""
        lengths = [local_length(spec.segments, self.world, r) for r in range(self.world)]
        longest = max(lengths)
        front = self.method("contiguous", self.call(torch.movedim, x, spec.dim, 0))
        if lengths[self.rank] < longest:
            pad_shape = [longest - lengths[self.rank]] + [s for d, s in enumerate(shape) if d != spec.dim]
            front = self.call(torch.cat, [front, self.method("new_zeros", front, pad_shape)], 0)
        gathered = self._collective("all_gather_into_tensor", front, self.world, self.group_name)
        pieces = []
        for rank in range(self.world):
            offset = rank * longest
            for start, size in local_pieces(spec.segments, self.world, rank):
                pieces.append((start, offset, size))
                offset += size
        full = self.take_pieces(gathered, 0, [(offset, size) for _, offset, size in sorted(pieces)])
        return self.call(torch.movedim, full, 0, spec.dim)

    def sequence_to_heads(self, x: fx.Node, spec: Sharded, shape: Sequence[int]) -> fx.Node:
        """``[B, H, L_local, D]`` (sequence sharded by ``spec``) -> ``[B, H/world, L, D]`` with the
        sequence in rank-major order (Ulysses all-to-all). ``shape`` is the full shape."""
        batch, heads, _, head_dim = shape
        group = heads // self.world
        lengths = [local_length(spec.segments, self.world, r) for r in range(self.world)]
        grouped = self.method("reshape", x, batch, self.world, group, lengths[self.rank], head_dim)
        flat = self.method("reshape", self.method("contiguous", self.method("transpose", grouped, 0, 1)), -1)
        sent = [batch * group * lengths[self.rank] * head_dim] * self.world
        received = [batch * group * length * head_dim for length in lengths]
        out = self._collective("all_to_all_single", flat, received, sent, self.group_name)
        parts = self.method("split_with_sizes", out, received)
        chunks = [self.method("reshape", self.call(operator.getitem, parts, r), batch, group, lengths[r], head_dim)
                  for r in range(self.world)]
        return self.call(torch.cat, chunks, 2)

    def heads_to_sequence(self, y: fx.Node, spec: Sharded, shape: Sequence[int]) -> fx.Node:
        """Inverse of ``sequence_to_heads``: ``[B, H/world, L, D]`` in rank-major order ->
        ``[B, H, L_local, D]``; ``shape`` is the full output shape."""
        batch, heads, _, head_dim = shape
        group = heads // self.world
        lengths = [local_length(spec.segments, self.world, r) for r in range(self.world)]
        parts = self.method("split_with_sizes", y, lengths, 2)
        flat = self.call(torch.cat, [self.method("reshape", self.call(operator.getitem, parts, r), -1)
                                     for r in range(self.world)])
        sent = [batch * group * length * head_dim for length in lengths]
        received = [batch * group * lengths[self.rank] * head_dim] * self.world
        out = self._collective("all_to_all_single", flat, received, sent, self.group_name)
        grouped = self.method("reshape", out, self.world, batch, group, lengths[self.rank], head_dim)
        merged = self.method("contiguous", self.method("transpose", grouped, 0, 1))
        return self.method("reshape", merged, batch, heads, lengths[self.rank], head_dim)
