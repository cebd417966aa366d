"""``cachedit_fx.inspect``: the chain, cut values and pieces, without running or caching."""

from __future__ import annotations

import pytest
import torch

import cachedit_fx
from cachedit_fx.runtime.registry import cache_for_model
from cachedit_fx.tiny_models import tiny_flux, tiny_qwen_image, tiny_wan


def test_flux_report_names_the_chain_cut_and_pieces():
    model, inputs = tiny_flux()
    calls = []
    model.transformer_blocks[0].register_forward_hook(lambda *_: calls.append(1))
    report = cachedit_fx.inspect(model, inputs, {"Fn_compute_blocks": 1, "Bn_compute_blocks": 1})
    assert calls == []  # captured, never run
    with pytest.raises(ValueError, match="no cachedit state"):
        cache_for_model(model)
    assert report.num_blocks == 8 and report.rewrite == "DBCache" and (report.Fn, report.Bn) == (1, 1)
    assert [(b.path, b.count) for b in report.block_lists] == [("transformer_blocks", 4),
                                                               ("single_transformer_blocks", 4)]
    assert report.hidden_cut.shape == (1, 16, 32) and report.hidden_cut.dtype == "float32"
    assert {v.shape for v in report.carried} == {(1, 16, 32), (1, 24, 32)}
    assert set(report.piece_sizes) == {"head", "middle", "tail"}
    assert report.cache_bytes_per_stream == (16 * 32 + (16 * 32 + 24 * 32)) * 4  # hF residual + 2 middle residuals
    text = str(report)
    assert "transformer_blocks[4] FluxTransformerBlock" in text and "DBCache F1B1" in text
    json = report.to_json()
    assert json["num_blocks"] == 8 and json["piece_sizes"] == report.piece_sizes


def test_inspect_leaves_no_compiled_frame_behind():
    model, inputs = tiny_wan()
    cachedit_fx.inspect(model, inputs, {"Fn_compute_blocks": 1})
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = torch.compile(model, backend="cachedit", options={"inner_backend": "eager", "Fn_compute_blocks": 1})
    with torch.no_grad():
        compiled(**inputs, return_dict=False)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs + 1
    assert cachedit_fx.summary(compiled).num_steps == 1


def test_calibrator_levels_prune_and_bad_options():
    model, inputs = tiny_qwen_image()
    taylor = cachedit_fx.inspect(model, inputs, {"Fn_compute_blocks": 1, "taylorseer_order": 2})
    assert taylor.residual_levels == 3
    hidden = taylor.hidden_cut.nbytes
    assert taylor.cache_bytes_per_stream == hidden + 3 * sum(
        v.nbytes for v in taylor.carried if v.name in {s[1] for s in taylor.streams})
    prune = cachedit_fx.inspect(model, inputs, {
        "cache_config": cachedit_fx.DBPruneConfig(Fn_compute_blocks=1, non_prune_block_ids=[2])})
    assert prune.rewrite == "DBPrune" and prune.prunable_blocks == (1, 3)
    too_many = cachedit_fx.inspect(model, inputs, {"Fn_compute_blocks": 4})
    assert too_many.rewrite == "none" and "no cacheable block" in too_many.problem
    assert "no cacheable region" in str(too_many)
    with pytest.raises(ValueError, match="unknown cachedit option"):
        cachedit_fx.inspect(model, inputs, {"Fn": 1})


def test_a_model_without_blocks_raises_unsupported_graph():
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 4))
    with pytest.raises(cachedit_fx.UnsupportedGraph):
        cachedit_fx.inspect(mlp, (torch.randn(2, 4),))
