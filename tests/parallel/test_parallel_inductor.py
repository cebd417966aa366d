"""Inductor compiles the sharded pieces with the functional collectives inside them (2 gloo
ranks, regional compilation so equal blocks compile once; cache in TORCHINDUCTOR_CACHE_DIR)."""

from __future__ import annotations

from distributed_harness import run_on_ranks


def test_ulysses_pieces_compile_with_inductor_and_match(tmp_path):
    results = run_on_ranks(tmp_path, "parallel.ranks", "inductor_matches_eager", "ulysses_size")
    for rank, result in enumerate(results):
        assert result["rel_err"] <= 1e-5, rank
        assert result["report"].collectives == {"all_to_all_single": 32, "all_gather_into_tensor": 1}
