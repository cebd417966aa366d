"""Compile reuse in ``lower`` and regional compilation: equal block graphs are compiled once
and shared, and the result equals the program compiled whole."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx

import cachedit_fx
from cachedit_fx.passes.lower import graph_signature
from models import MODEL_NAMES, TINY_MODELS, run, trajectory

STEPS = 6


def _options(**extra):
    return {"inner_backend": "aot_eager", "Fn_compute_blocks": 1, "max_warmup_steps": 1, **extra}


COMPILES = {"flux": (9, 4), "wan": (5, 2), "pixart": (5, 3)}
"""(pieces, compiles) of a regional program: the program (embedders, decision, epilogue) and one
compile per distinct block graph. Tiny FLUX (8 blocks): one double block (blocks 0-3), one single
block (4-6), the last single block (its text half is read by nothing); Wan (4 blocks): one block; PixArt
(4 blocks): every block but the last stack member shares one compile."""


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_regional_threshold_zero_equals_plain_compiled_model_and_compiles_equal_blocks_once(name, compile_reports):
    model, inputs = TINY_MODELS[name]()
    steps = list(trajectory(inputs, STEPS))
    plain = run(torch.compile(model, backend="aot_eager"), steps)
    torch._dynamo.reset()
    regional = torch.compile(model, backend="cachedit", options=_options(residual_diff_threshold=0.0,
                                                                         regional_compile=True))
    for got, want in zip(run(regional, steps), plain):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert compile_reports[-1].pieces > 3  # head, middle and tail were split per block
    if name in COMPILES:
        assert (compile_reports[-1].pieces, compile_reports[-1].compiles) == COMPILES[name]


@pytest.mark.parametrize("name, threshold", [("flux", 0.33), ("wan", 0.11)])
def test_regional_caching_equals_whole_piece_caching(name, threshold):
    model, inputs = TINY_MODELS[name]()
    steps = list(trajectory(inputs, 10))
    results = {}
    for regional in (False, True):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="cachedit", options=_options(
            residual_diff_threshold=threshold, regional_compile=regional, Bn_compute_blocks=1))
        results[regional] = (run(compiled, steps), cachedit_fx.summary(compiled))
    (whole, whole_summary), (regional, regional_summary) = results[False], results[True]
    assert 0 < regional_summary.num_cached_steps < 9
    assert regional_summary.cached_steps == whole_summary.cached_steps
    for a, b in zip(regional, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dbprune_block_pieces_share_compiles(compile_reports):
    """Blocks 1 and 2 are equal graphs: one compile serves both as the regions of the program's
    per-block steps, whether the branches are taken in the program or between its parts."""
    model, inputs = TINY_MODELS["wan"]()
    steps = list(trajectory(inputs, 8))
    outputs = {}
    for variant in ({"in_graph_decision": False, "regional_compile": True}, {"regional_compile": True}):
        torch._dynamo.reset()
        compiled = torch.compile(model, backend="cachedit", options={
            "inner_backend": "aot_eager", **variant,
            "cache_config": cachedit_fx.DBPruneConfig(Fn_compute_blocks=1, residual_diff_threshold=0.2,
                                                      max_warmup_steps=1)})
        outputs[len(outputs)] = (run(compiled, steps), cachedit_fx.summary(compiled).pruned_blocks)
    assert all(report.compiles < report.pieces for report in compile_reports)
    assert outputs[0][1] == outputs[1][1] and outputs[1][1]
    for a, b in zip(outputs[0][0], outputs[1][0]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _linear_piece(scale: float, shape=(2, 3)) -> fx.GraphModule:
    graph = fx.Graph()
    x, w = graph.placeholder("x"), graph.placeholder("w")
    for node, size in ((x, shape), (w, (shape[-1], shape[-1]))):
        node.meta["example_value"] = torch.empty(size)
    y = graph.call_function(torch.nn.functional.linear, (x, w))
    graph.output((graph.call_function(torch.mul, (y, scale)),))
    return fx.GraphModule(torch.nn.Module(), graph)


def test_graph_signature_tells_constants_and_input_layouts_apart():
    assert graph_signature(_linear_piece(0.5)) == graph_signature(_linear_piece(0.5))
    assert graph_signature(_linear_piece(0.5)) != graph_signature(_linear_piece(0.25))
    assert graph_signature(_linear_piece(1.0)) != graph_signature(_linear_piece(1))  # float vs int constant
    assert graph_signature(_linear_piece(0.5)) != graph_signature(_linear_piece(0.5, shape=(4, 3)))


def test_regional_compile_must_be_a_bool():
    with pytest.raises(ValueError, match="regional_compile must be a bool"):
        cachedit_fx.parse_options({"regional_compile": "yes"})


def _static_indices(piece):
    from torch._functorch._aot_autograd.frontend_utils import _try_get_metadata_from_dynamo

    count = len(list(piece.graph.find_nodes(op="placeholder")))
    return _try_get_metadata_from_dynamo(piece, {}.keys(), count, [])[1]


def test_the_program_marks_its_parameters_static_as_plain_compile_does(monkeypatch):
    """What Inductor reads to keep weights out of CUDA-graph input copies: the program's static
    inputs are exactly its parameter inputs, as many as the plain graph has."""
    import cachedit_fx.passes.lower as lower
    from cachedit_fx.passes.dataflow import is_module_state

    model, inputs = TINY_MODELS["flux"]()
    plain = []
    with torch.no_grad():
        torch.compile(model, backend=lambda gm, ex: plain.append(_static_indices(gm)) or gm.forward)(
            **inputs, return_dict=False)
    torch._dynamo.reset()
    pieces = []
    compile_piece = lower.compile_piece
    monkeypatch.setattr(lower, "compile_piece", lambda piece, settings, inputs: pieces.append(
        (_static_indices(piece), [i for i, n in enumerate(piece.graph.find_nodes(op="placeholder"))
                                  if is_module_state(n)])) or compile_piece(piece, settings, inputs))
    run(torch.compile(model, backend="cachedit", options=_options(residual_diff_threshold=0.0)),
        list(trajectory(inputs, 1)))
    assert len(pieces) == 1 and len(plain) == 1 and len(plain[0]) > 100
    (static, parameters), = pieces
    assert static == parameters and len(static) == len(plain[0])
