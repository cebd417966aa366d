"""Layout arithmetic of sharded dims against torch's own splitting."""

from __future__ import annotations

import pytest
import torch

from cachedit_fx.shard_layout import (
    Sharded, chunk_bounds, local_pieces, map_view, rank_major_pieces, split_segments,
)


@pytest.mark.parametrize("length,world", [(16, 2), (15, 2), (7, 4), (3, 4), (40, 3)])
def test_chunks_follow_tensor_split(length, world):
    parts = torch.arange(length).tensor_split(world)
    for rank, part in enumerate(parts):
        start, size = chunk_bounds(length, world, rank)
        assert torch.equal(torch.arange(length)[start:start + size], part)


def test_local_pieces_take_each_segment_chunk_in_order():
    assert local_pieces((24, 15), 2, 0) == [(0, 12), (24, 8)]
    assert local_pieces((24, 15), 2, 1) == [(12, 12), (32, 7)]
    assert rank_major_pieces((24, 15), 2) == [(0, 12), (24, 8), (12, 12), (32, 7)]


def test_split_segments_only_at_segment_boundaries():
    assert split_segments((24, 16), (24, 16)) == [(24,), (16,)]
    assert split_segments((8, 16, 4), (24, 4)) == [(8, 16), (4,)]
    assert split_segments((40,), (24, 16)) is None


def test_view_maps_heads_and_refuses_partial_heads():
    inner = Sharded(2, (32,))
    assert map_view(inner, (1, 40, 32), (1, 40, 2, 16), 2) == Sharded(2, (2,))
    assert map_view(Sharded(2, (2,)), (1, 40, 2, 16), (1, 40, 32), 2) == Sharded(2, (32,))
    assert map_view(inner, (1, 40, 32), (1, 40, 2, 16), 4) is None  # 8 features per rank: half a head
    assert map_view(Sharded(1, (24, 15)), (1, 39, 2, 16), (1, 39, 2, 8, 2), 2) == Sharded(1, (24, 15))
    assert map_view(Sharded(1, (40,)), (1, 40, 32), (1, 1280), 2) == Sharded(1, (1280,))  # whole rows per rank
    assert map_view(Sharded(2, (40,)), (1, 32, 40), (1, 1280), 2) is None  # the sharded dim is the inner one
