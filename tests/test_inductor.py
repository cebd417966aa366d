"""The Inductor tests: tiny FLUX pieces compiled by Inductor (cache shared via
TORCHINDUCTOR_CACHE_DIR), threshold 0 against plain Inductor, a caching run against the
eager-piece run, the diff fused into the Inductor head piece against the separate op, the
in-graph program (decision inside one Inductor program) against both, the same program in
parts around its ``torch.cond`` (what ``mode="reduce-overhead"`` records on CUDA) against it,
and regional compilation (one compiled block serving every equal block)."""

from __future__ import annotations

import logging

import pytest
import torch

import cachedit_fx
from cachedit_fx.runtime.registry import cache_for_model
from torch._dynamo.utils import counters
from models import TINY_MODELS, ToyChain, run, trajectory


def test_inductor_pieces_match_plain_inductor_and_cache():
    """The default program under Inductor: threshold 0 equals plain Inductor, caching decides
    like the same program on eager pieces, the parts around its ``torch.cond`` (CUDA graphs'
    layout, unrecorded on CPU) equal it, and a recompile hits Inductor's graph cache."""
    model, inputs = TINY_MODELS["flux"]()
    steps = list(trajectory(inputs, 6))
    plain = run(torch.compile(model), steps)
    torch._dynamo.reset()
    options = {"Fn_compute_blocks": 1, "residual_diff_threshold": 0.0, "max_warmup_steps": 1}
    compiled = torch.compile(model, backend="cachedit", options=options)
    for a, b in zip(run(compiled, steps), plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    cachedit_fx.refresh(compiled, residual_diff_threshold=0.3)
    cached = run(compiled, steps)
    summary = cachedit_fx.summary(compiled)
    assert cache_for_model(compiled).active().step_tensors is not None
    torch._dynamo.reset()
    eager_pieces = torch.compile(model, backend="cachedit", options={
        **options, "residual_diff_threshold": 0.3, "inner_backend": "eager"})
    eager_out = run(eager_pieces, steps)
    eager_summary = cachedit_fx.summary(eager_pieces)
    assert 0 < summary.num_cached_steps < 5 and summary.cached_steps == eager_summary.cached_steps
    assert list(summary.residual_diffs.values()) == pytest.approx(list(eager_summary.residual_diffs.values()),
                                                                  rel=1e-4)
    for a, b in zip(cached, eager_out):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    torch._dynamo.reset()
    parts = torch.compile(model, backend="cachedit", options={
        **options, "in_graph_decision": True, "enable_separate_cfg": False, "residual_diff_threshold": 0.3,
        "mode": "reduce-overhead"})  # on CPU: the parts around the torch.cond, unrecorded
    for a, b in zip(run(parts, steps), cached):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert cachedit_fx.summary(parts).cached_steps == summary.cached_steps
    torch._dynamo.reset()
    counters.clear()
    again = torch.compile(model, backend="cachedit", options={**options, "residual_diff_threshold": 0.3})
    assert torch.equal(run(again, steps[:1])[0], cached[0])
    assert counters["inductor"]["fxgraph_cache_hit"] == 1, "the torch.cond program must hit Inductor's graph cache"


def test_dbprune_in_parts_around_each_cond_equals_its_one_program(caplog):
    """DBPrune's program holds one ``torch.cond`` per prunable block; CUDA graphs' layout cuts
    it at each in turn (unrecorded on CPU) and prunes and computes as the one program does."""
    torch.manual_seed(0)
    model = ToyChain(5).eval()
    x = torch.randn(1, 4, 8)
    steps = [dict(x=x * (1 - 0.03 * k), timestep=torch.tensor([1000.0 - 100 * k])) for k in range(8)]
    options = dict(cache_config=cachedit_fx.DBPruneConfig(Fn_compute_blocks=1, max_warmup_steps=1,
                                                          residual_diff_threshold=0.3),
                   in_graph_decision=True, enable_separate_cfg=False)
    results = []
    for mode in ({}, {"mode": "reduce-overhead"}):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="cachedit", options=dict(options, **mode))
        with torch.no_grad(), caplog.at_level(logging.INFO, logger="cachedit_fx"):
            results.append(([compiled(**step) for step in steps], cachedit_fx.summary(compiled).pruned_blocks))
    assert any("parts around its torch.cond" in r.getMessage() for r in caplog.records)
    (one_program, pruned), (parts, parts_pruned) = results
    assert parts_pruned == pruned and len({len(blocks) for blocks in pruned.values()}) > 1, pruned
    for a, b in zip(parts, one_program):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_regional_compile_reuses_inductor_blocks_across_weights(compile_reports):
    """One compiled Inductor block runs every equal block with that block's own weights."""
    model, inputs = TINY_MODELS["flux"]()
    steps = list(trajectory(inputs, 4))
    plain = run(torch.compile(model), steps)
    torch._dynamo.reset()
    regional = torch.compile(model, backend="cachedit", options={
        "Fn_compute_blocks": 1, "residual_diff_threshold": 0.0, "regional_compile": True})
    zero = run(regional, steps)
    # the program (embedders, decision, epilogue) and the 8 blocks, 3 distinct graphs: the
    # double-stream blocks, the single-stream blocks (fed slices of one joined tensor or fresh
    # tensors alike) and the last single block, whose text half nothing reads
    assert (compile_reports[-1].pieces, compile_reports[-1].compiles) == (9, 4)
    assert cachedit_fx.summary(regional).num_steps == 4 and cache_for_model(regional).active().step_tensors is not None
    for a, b in zip(zero, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
