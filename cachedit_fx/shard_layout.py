"""How a sharded tensor's dimension is laid out over the ranks (pure arithmetic).

A ``Sharded`` value is split along one dimension made of consecutive *segments* (global
lengths, e.g. text then image tokens, or the attention then the MLP half of a fused
projection). Every segment is split on its own like ``torch.tensor_split``: rank ``r`` holds
chunk ``r`` of each segment, and its local tensor is those chunks concatenated in segment
order. Invariant: a rank's local length is the sum of its chunks; a layout with one segment
of length divisible by the world size is the even split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence


@dataclass(frozen=True)
class Sharded:
    dim: int
    segments: tuple[int, ...]

    def moved(self, dim: int) -> "Sharded":
        return Sharded(dim, self.segments)

    @property
    def length(self) -> int:
        return sum(self.segments)


def chunk_bounds(length: int, world: int, rank: int) -> tuple[int, int]:
    """``(start, size)`` of rank ``rank``'s chunk of ``length`` (first ranks get the extra)."""
    base, extra = divmod(length, world)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


def local_pieces(segments: Sequence[int], world: int, rank: int) -> list[tuple[int, int]]:
    """``(global start, size)`` of the chunks rank ``rank`` holds, in local order."""
    pieces, offset = [], 0
    for length in segments:
        start, size = chunk_bounds(length, world, rank)
        if size:
            pieces.append((offset + start, size))
        offset += length
    return pieces


def local_length(segments: Sequence[int], world: int, rank: int) -> int:
    return sum(chunk_bounds(length, world, rank)[1] for length in segments)


def rank_major_pieces(segments: Sequence[int], world: int) -> list[tuple[int, int]]:
    """``(global start, size)`` of every rank's chunks, rank 0's first: the order in which an
    all-to-all or all-gather lays out the ranks' local tensors one after another."""
    return [piece for rank in range(world) for piece in local_pieces(segments, world, rank)]


def split_segments(segments: Sequence[int], boundaries: Sequence[int]) -> Optional[list[tuple[int, ...]]]:
    """The segments of each part when the dimension is cut into parts of ``boundaries`` sizes,
    or ``None`` if a cut falls inside a segment."""
    parts, current, remaining = [], [], list(boundaries)
    for length in segments:
        current.append(length)
        if not remaining or sum(current) > remaining[0]:
            return None
        if sum(current) == remaining[0]:
            parts.append(tuple(current))
            current = []
            remaining.pop(0)
    return parts if not remaining and not current else None


def view_groups(a: Sequence[int], b: Sequence[int]) -> Optional[list[tuple[list[int], list[int]]]]:
    """Group the dims of shapes ``a`` and ``b`` (same numel) into runs with equal products."""
    groups, i, j = [], 0, 0
    while i < len(a) or j < len(b):
        dims_a, dims_b, prod_a, prod_b = [], [], 1, 1
        if i < len(a):
            dims_a.append(i)
            prod_a, i = a[i], i + 1
        if j < len(b):
            dims_b.append(j)
            prod_b, j = b[j], j + 1
        while prod_a != prod_b:
            if prod_a < prod_b and i < len(a):
                dims_a.append(i)
                prod_a, i = prod_a * a[i], i + 1
            elif prod_b < prod_a and j < len(b):
                dims_b.append(j)
                prod_b, j = prod_b * b[j], j + 1
            else:
                return None
        groups.append((dims_a, dims_b))
    return groups


def map_view(spec: Sharded, in_shape: Sequence[int], out_shape: Sequence[int], world: int) -> Optional[Sharded]:
    """The layout after a view/reshape from ``in_shape`` to ``out_shape`` (full sizes), or
    ``None`` when the sharded dim is not the outer dim of its group or a rank's chunk would
    not map onto whole elements of the new sharded dim."""
    groups = view_groups(in_shape, out_shape)
    if groups is None:
        return None
    for dims_a, dims_b in groups:
        if spec.dim not in dims_a:
            continue
        outer_a = [d for d in dims_a if in_shape[d] != 1]
        outer_b = [d for d in dims_b if out_shape[d] != 1]
        if not outer_a or outer_a[0] != spec.dim or not outer_b:
            return None
        new_dim = outer_b[0]
        inner_a = math.prod(in_shape[d] for d in dims_a if d > spec.dim)
        inner_b = math.prod(out_shape[d] for d in dims_b if d > new_dim)
        segments = []
        for length in spec.segments:
            if length * inner_a % inner_b:
                return None
            segments.append(length * inner_a // inner_b)
            if any(chunk_bounds(length, world, r)[1] * inner_a != chunk_bounds(segments[-1], world, r)[1] * inner_b
                   for r in range(world)):
                return None
        return Sharded(new_dim, tuple(segments))
    return None
