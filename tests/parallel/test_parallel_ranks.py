"""TP and Ulysses CP on 2 gloo processes equal the single-process compiled model, with
caching off and on, and every rank takes the same cache decisions (DBCache inside the compiled
program, its diff sums all-reduced there, DBPrune per block)."""

from __future__ import annotations

import pytest
import torch

from distributed_harness import run_on_ranks

NAMES = ["flux", "wan", "qwen_image"]
TP_NAMES = ["flux", "wan"]
"""Qwen-Image shards like FLUX (both dual-stream): it runs under CP only."""
POLICY_CASES = ["flux/taylorseer", "flux/dbprune"]
TP_POLICY_CASES = ["flux/dbprune"]
"""Under TP every rank holds the whole hidden stream, so decisions cannot drift apart; DBPrune
still runs its per-block pieces on sharded weights. TaylorSeer runs only under CP, where the
diff sums are all-reduced over sequence shards."""
RMS_NORMS_ACROSS_HEADS = {"flux": 0, "qwen_image": 0, "wan": 4 * 4}
"""Wan normalises q and k over all heads in both attentions of its 4 blocks: each such norm
needs one all-reduce of the sum of squares under TP."""


def max_rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _check(results: list[dict], names: list[str]) -> None:
    for name in names:
        want_exact, want_cached, want_steps, want_pruned = results[0][name]["want"]
        assert 0 < len(want_steps) < 7, f"{name}: the threshold must mix cached and computed steps"
        for rank, per_rank in enumerate(results):
            got_exact, got_cached, got_steps, got_pruned = per_rank[name]["got"]
            assert got_steps == want_steps, f"{name} rank {rank}: cached steps differ from the single-process run"
            assert got_pruned == want_pruned, f"{name} rank {rank}: pruned blocks differ"
            for k, (g, w) in enumerate(zip(got_exact + got_cached, want_exact + want_cached)):
                assert g.shape == w.shape
                assert max_rel_err(g, w) <= 1e-5, f"{name} rank {rank} output {k}"
            assert not per_rank[name]["report"].gathers, f"{name}: ops ran on gathered values"
            assert per_rank[name]["in_graph"], f"{name}: decides in the graph (diff sums all-reduced there)"


@pytest.fixture(scope="module")
def tp_results(tmp_path_factory):
    return run_on_ranks(tmp_path_factory.mktemp("tp"), "parallel.ranks", "compare", "tp_size",
                        TP_NAMES + TP_POLICY_CASES + ["flux_flex"])


@pytest.fixture(scope="module")
def cp_results(tmp_path_factory):
    return run_on_ranks(tmp_path_factory.mktemp("cp"), "parallel.ranks", "compare", "ulysses_size",
                        NAMES + ["flux_uneven"] + POLICY_CASES)


def test_tensor_parallel_equals_single_process(tp_results):
    _check(tp_results, TP_NAMES)


def test_tensor_parallel_dbprune_decides_alike_on_every_rank(tp_results):
    _check(tp_results, TP_POLICY_CASES)


def test_tensor_parallel_with_flex_attention_equals_single_process(tp_results):
    """flex attention's score and mask mods are subgraphs of the graph: the shard pass keeps them
    as they are, and the attention, which it does not shard through, stays replicated."""
    _check(tp_results, ["flux_flex"])
    assert tp_results[0]["flux_flex"]["report"].rows


def test_tensor_parallel_all_reduces_once_per_row_linear(tp_results):
    for name in TP_NAMES:
        report = tp_results[0][name]["report"]
        assert report.columns and report.rows, name
        assert report.collectives == {"all_reduce": len(report.rows) + RMS_NORMS_ACROSS_HEADS[name]}, name


def test_tensor_parallel_ranks_hold_only_their_weight_shards(tp_results):
    for name in TP_NAMES:
        for per_rank in tp_results:
            report = per_rank[name]["report"]
            assert sum(per_rank[name]["storage"]) == report.weight_bytes_full - report.released_bytes, name
            assert report.weight_bytes_local < 0.75 * report.weight_bytes_full, name


def test_context_parallel_equals_single_process(cp_results):
    _check(cp_results, NAMES + ["flux_uneven"])


def test_context_parallel_all_to_all_around_each_attention(cp_results):
    attentions = {"flux": 8, "flux_uneven": 8, "qwen_image": 4}
    for name, count in attentions.items():
        report = cp_results[0][name]["report"]
        assert report.collectives == {"all_to_all_single": 4 * count, "all_gather_into_tensor": 1}, name
    wan = cp_results[0]["wan"]["report"]
    assert wan.collectives == {"all_to_all_single": 4 * (4 + 2), "all_gather_into_tensor": 1}, \
        "Wan: self-attention moves q, k, v and out; cross-attention only q and out (text stays whole)"


def test_context_parallel_taylorseer_and_dbprune_decide_alike_on_every_rank(cp_results):
    _check(cp_results, POLICY_CASES)
