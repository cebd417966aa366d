"""Backend contract: no recompiles from caching, clear errors, fallback, registration."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch._dynamo.utils import counters

import cachedit_fx
from models import TINY_MODELS, ToyBlock, run, trajectory


def test_no_recompiles_across_two_28_step_generations():
    model, inputs = TINY_MODELS["flux"]()
    compiled = torch.compile(model, backend="cachedit", options={
        "inner_backend": "aot_eager", "Fn_compute_blocks": 1, "residual_diff_threshold": 100.0,
        "max_warmup_steps": 4, "num_inference_steps": 28})
    steps = list(trajectory(inputs, 28))
    counters.clear()
    run(compiled, steps[:1])
    with torch._dynamo.config.patch(error_on_recompile=True):
        run(compiled, steps[1:])
        assert cachedit_fx.summary(compiled).num_cached_steps == 24
        run(compiled, steps)
    assert counters["stats"]["unique_graphs"] == 1
    assert cachedit_fx.summary(compiled).num_cached_steps == 24


def test_unknown_option_key_is_named():
    model, inputs = TINY_MODELS["flux"]()
    compiled = torch.compile(model, backend="cachedit", options={"Fn_compute_block": 1})
    with pytest.raises(Exception, match="Fn_compute_block"):
        run(compiled, list(trajectory(inputs, 1)))


@pytest.mark.parametrize("options,needle", [
    ({"Fn_compute_blocks": 0}, "Fn_compute_blocks must be >= 1"),
    ({"Fn_compute_blocks": 6, "Bn_compute_blocks": 2}, "Fn_compute_blocks \\+ Bn_compute_blocks"),
    ({"Fn_compute_blocks": 9}, "Fn_compute_blocks \\+ Bn_compute_blocks"),
    ({"inner_backend": "tvm"}, "inner_backend"),
    ({"steps_computation_policy": "sometimes"}, "steps_computation_policy"),
])
def test_bad_values_raise_clear_errors(options, needle):
    model, inputs = TINY_MODELS["flux"]()
    compiled = torch.compile(model, backend="cachedit", options={"inner_backend": "eager", **options})
    with pytest.raises(Exception, match=needle):
        run(compiled, list(trajectory(inputs, 1)))


def test_typed_config_object_and_flat_keys_override_it():
    settings = cachedit_fx.parse_options({
        "cache_config": cachedit_fx.DBCacheConfig(Fn_compute_blocks=2, residual_diff_threshold=0.2),
        "residual_diff_threshold": 0.3})
    assert settings.cache.Fn_compute_blocks == 2 and settings.cache.residual_diff_threshold == 0.3
    with pytest.raises(ValueError, match="max_warmup_steps"):
        cachedit_fx.DBCacheConfig(max_warmup_steps=-1)


class NoBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_model_without_repeated_blocks_falls_back_with_one_warning():
    model, x = NoBlocks(), torch.randn(2, 8)
    compiled = torch.compile(model, backend="cachedit", options={"inner_backend": "aot_eager"})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, cachedit_fx.CacheditFallbackWarning)]
    assert len(messages) == 1 and "no repeated transformer blocks" in messages[0]
    torch.testing.assert_close(out, model(x))


def test_strict_raises_instead_of_falling_back():
    compiled = torch.compile(NoBlocks(), backend="cachedit", options={"inner_backend": "eager", "strict": True})
    with pytest.raises(Exception, match="no repeated transformer blocks"):
        compiled(torch.randn(2, 8))


class BrokenChain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(ToyBlock(breaks=i == 2) for i in range(5))
        self.out = torch.nn.Linear(8, 8)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return self.out(x)


def test_graph_break_inside_the_chain_falls_back_and_strict_names_it():
    model, x = BrokenChain(), torch.randn(2, 8)
    compiled = torch.compile(model, backend="cachedit", options={"inner_backend": "eager", "Fn_compute_blocks": 1})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(x)
    reasons = [str(w.message) for w in caught if issubclass(w.category, cachedit_fx.CacheditFallbackWarning)]
    assert reasons and all("graph break" in r for r in reasons)
    torch.testing.assert_close(out, model(x))
    torch._dynamo.reset()
    strict = torch.compile(model, backend="cachedit", options={"inner_backend": "eager", "strict": True})
    with pytest.raises(Exception, match="graph break"):
        strict(x)


def test_backend_is_found_through_the_entry_point_without_importing_cachedit_fx():
    code = textwrap.dedent("""
        import sys, torch
        m = torch.nn.Linear(4, 4)
        out = torch.compile(m, backend="cachedit", options={"inner_backend": "eager"})(torch.randn(2, 4))
        assert out.shape == (2, 4)
        print("ok", "cachedit_fx" in sys.modules)
    """)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + "/..")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok True" in result.stdout


def test_dump_dir_writes_each_pass_its_time_and_the_analysis(tmp_path):
    model, inputs = TINY_MODELS["wan"]()
    options = {"inner_backend": "eager", "Fn_compute_blocks": 1, "dump_dir": str(tmp_path)}
    compiled = torch.compile(model, backend="cachedit", options=options)
    run(compiled, list(trajectory(inputs, 1)))
    expected = cachedit_fx.build_pass_list(cachedit_fx.parse_options(options)).names
    expected.insert(expected.index("find_block_chain") + 1, "bind_model_cache")
    dumped = sorted((p for p in tmp_path.iterdir() if p.suffix == ".py"), key=lambda p: int(p.name.split("_")[1]))
    assert [p.stem.split("_", 2)[2] for p in dumped] == ["dynamo", *expected]
    timings = json.loads(next(p for p in tmp_path.iterdir() if p.name.endswith("_timings.json")).read_text())
    assert [name for name, _ in timings] == expected and all(seconds >= 0 for _, seconds in timings)
    analysis = json.loads(next(p for p in tmp_path.iterdir() if p.name.endswith("_analysis.json")).read_text())
    blocks = analysis["cachedit_fx.block_chain"]["blocks"]
    assert [(b["list_path"], b["list_index"]) for b in blocks] == [("blocks", i) for i in range(4)]
    assert analysis["cachedit_fx.partition"]["Fn"] == 1
    code = next(p for p in dumped if p.stem.endswith("insert_in_graph_step")).read_text()
    assert "in_graph_step" in code


def test_pass_list_follows_the_options_and_a_researchers_pass_joins_with_one_line():
    names = lambda **options: cachedit_fx.build_pass_list(cachedit_fx.parse_options(options)).names
    assert names() == ["inline_block_regions", "find_block_chain", "partition", "insert_in_graph_step", "lower"]
    assert names(in_graph_decision=False, cache_kernels="inductor-fused") == names()
    assert names(cache_config=cachedit_fx.DBPruneConfig()) == [
        "inline_block_regions", "find_block_chain", "partition_blocks", "insert_prune_steps", "lower"]
    assert names(cache_config=cachedit_fx.DBPruneConfig(), regional_compile=True, in_graph_decision=False) == [
        "inline_block_regions", "find_block_chain", "partition_blocks", "insert_prune_steps", "compile_regions",
        "lower"]
    seen = []

    def count_middle_nodes(gm, settings):
        seen.append(len(gm.get_submodule("middle").graph.nodes))
        return gm

    registration = cachedit_fx.add_pass(count_middle_nodes, after="partition")
    try:
        assert names()[3] == "count_middle_nodes"
        model, inputs = TINY_MODELS["wan"]()
        options = {"inner_backend": "eager", "Fn_compute_blocks": 1}
        with torch.no_grad():
            torch.compile(model, backend="cachedit", options=options)(**inputs, return_dict=False)
        assert seen and seen[0] > 0
    finally:
        registration.remove()
    assert "count_middle_nodes" not in names()
    with pytest.raises(ValueError, match="no pass named 'partitoin'"):
        cachedit_fx.add_pass(count_middle_nodes, after="partitoin")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cachedit_fx.parse_options({}).strict = True


def test_mode_given_to_torch_compile_reaches_every_part_and_cuda_graph_modes_own_their_outputs(monkeypatch):
    """Under CUDA graphs the program is compiled as its parts around the ``torch.cond``
    (before, both branches, after): each gets the mode."""
    import cachedit_fx.passes.compile_cond_parts as compile_cond_parts
    from cachedit_fx.backend import outputs_owned
    from cachedit_fx.passes.lower import uses_cuda_graphs

    modes = []
    monkeypatch.setattr(compile_cond_parts, "_compile_part", lambda part, settings: modes.append(settings.mode) or part)
    model, x = BrokenChain(), torch.randn(2, 8)
    model.blocks = torch.nn.ModuleList(ToyBlock() for _ in range(10))  # room for the default F8B0
    with torch.no_grad():
        out = torch.compile(model, backend="cachedit", mode="reduce-overhead")(x)
    assert modes == ["reduce-overhead"] * 4
    torch.testing.assert_close(out, model(x))
    assert uses_cuda_graphs(cachedit_fx.parse_options({"mode": "reduce-overhead"}))
    assert uses_cuda_graphs(cachedit_fx.parse_options({"inductor_options": {"triton.cudagraphs": True}}))
    assert not uses_cuda_graphs(cachedit_fx.parse_options({"mode": "max-autotune-no-cudagraphs"}))
    assert not uses_cuda_graphs(cachedit_fx.parse_options({"inner_backend": "aot_eager"}))
    pool = torch.zeros(3)
    owned = outputs_owned(lambda x: (pool.add_(x), 7))
    first = owned(torch.ones(3))[0]
    owned(torch.ones(3))
    assert first.tolist() == [1.0, 1.0, 1.0] and pool.tolist() == [2.0, 2.0, 2.0]
