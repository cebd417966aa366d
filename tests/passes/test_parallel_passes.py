"""The TP and Ulysses passes on a fake 2-rank process group: which linears they shard, the
collectives they insert, and the errors for what they cannot shard."""

from __future__ import annotations

import re

import pytest
import torch
import torch.distributed as dist
from torch.testing._internal.distributed.fake_pg import FakeStore

import cachedit_fx
from cachedit_fx import ParallelismConfig
from cachedit_fx.parallelism import bind_parallel_run
from cachedit_fx.passes import HANDLES_META_KEY, CompileHandles
from cachedit_fx.passes.context_parallel import context_parallel
from cachedit_fx.passes.find_block_chain import find_block_chain
from cachedit_fx.passes.errors import ParallelismError
from cachedit_fx.passes.tensor_parallel import tensor_parallel
from cachedit_fx.tiny_models import TINY_MODELS

C10D = torch.ops._c10d_functional


@pytest.fixture
def fake_group(request):
    world = getattr(request, "param", 2)
    dist.init_process_group("fake", store=FakeStore(), rank=1, world_size=world)
    yield world
    dist.destroy_process_group()


def sharded_graph(name: str, options: dict, inputs_override: dict | None = None):
    """Dynamo's graph of tiny ``name`` after find_block_chain and the parallel passes."""
    model, inputs = TINY_MODELS[name]()
    inputs = {**inputs, **(inputs_override or {})}
    captured = []

    def backend(gm, example_inputs):
        settings = cachedit_fx.parse_options(options)
        run = bind_parallel_run(settings.parallelism)
        run.inputs = dict(zip([n.name for n in gm.graph.nodes if n.op == "placeholder"], example_inputs))
        gm.meta[HANDLES_META_KEY] = CompileHandles(parallel_run=run)
        gm = find_block_chain(gm, settings)
        captured.append((tensor_parallel if run.config.kind == "tp" else context_parallel)(gm, settings))
        return gm.forward

    with torch.no_grad():
        torch.compile(model, backend=backend, fullgraph=True)(**inputs, return_dict=False)
    return captured[0]


def count(gm, op) -> int:
    return sum(1 for n in gm.graph.nodes if n.op == "call_function" and n.target is op.default)


def weight_of(node) -> str:
    return re.sub(r"_parameters_weight_$", "", node.args[1].name.replace("_tp_shard", ""))


def test_tensor_parallel_shards_attention_and_mlp_linears_found_by_dataflow(fake_group):
    gm = sharded_graph("flux", {"tp_size": 2})
    report = gm.meta["cachedit_fx.sharding"]
    linears = {n.name: n for n in gm.graph.nodes if n.op == "call_function" and n.target is torch._C._nn.linear}
    column_modules = {re.sub(r".*blocks_modules_\d+_modules_", "", weight_of(linears[c])) for c in report.columns}
    row_modules = {re.sub(r".*blocks_modules_\d+_modules_", "", weight_of(linears[r])) for r in report.rows}
    assert column_modules == {
        "attn_modules_to_q", "attn_modules_to_k", "attn_modules_to_v", "attn_modules_add_q_proj",
        "attn_modules_add_k_proj", "attn_modules_add_v_proj", "ff_modules_net_modules_0_modules_proj",
        "ff_context_modules_net_modules_0_modules_proj", "proj_mlp"}
    assert row_modules == {"attn_modules_to_out_modules_0", "attn_modules_to_add_out",
                           "ff_modules_net_modules_2", "ff_context_modules_net_modules_2", "proj_out"}
    # 4 double blocks: attention out and MLP down for the image and the text stream; 4 single blocks: proj_out.
    assert count(gm, C10D.all_reduce) == 4 * 4 + 4 * 1 == len(report.rows)
    assert count(gm, C10D.wait_tensor) == count(gm, C10D.all_reduce)
    assert not any(n.target is C10D.all_gather_into_tensor.default for n in gm.graph.nodes)


def test_tensor_parallel_graph_reads_weight_shards(fake_group):
    gm = sharded_graph("flux", {"tp_size": 2})
    shards = [n for n in gm.graph.nodes if n.op == "placeholder" and n.name.endswith("_tp_shard")]
    to_q = next(n for n in shards if "transformer_blocks_modules_0_modules_attn_modules_to_q_parameters_weight" in n.name)
    assert tuple(to_q.meta["example_value"].shape) == (16, 32)  # 32 output features over 2 ranks
    proj_out = next(n for n in shards if "single_transformer_blocks_modules_0_modules_proj_out_parameters_weight" in n.name)
    assert tuple(proj_out.meta["example_value"].shape) == (32, 80)  # (32 attention + 128 MLP) inputs / 2


def test_ulysses_inserts_all_to_all_around_attention_and_one_gather(fake_group):
    gm = sharded_graph("flux", {"ulysses_size": 2})
    assert count(gm, C10D.all_to_all_single) == 4 * 8  # q, k, v in and the output back, 8 attentions
    assert count(gm, C10D.all_gather_into_tensor) == 1  # the hidden states after the chain
    assert not any(n.target is C10D.all_reduce.default for n in gm.graph.nodes)
    attention = next(n for n in gm.graph.nodes if n.target is torch._C._nn.scaled_dot_product_attention)
    assert tuple(attention.kwargs["query"].meta["example_value"].shape) == (1, 1, 40, 16)  # all tokens, 1 of 2 heads


def test_ulysses_uneven_sequence_gives_rank_one_the_shorter_chunk(fake_group):
    gen = torch.Generator().manual_seed(0)
    gm = sharded_graph("flux", {"ulysses_size": 2}, {"hidden_states": torch.randn(1, 15, 4, generator=gen),
                                                      "img_ids": torch.randn(15, 3, generator=gen)})
    first_block_norm = next(n for n in gm.graph.nodes if n.target is torch.nn.functional.layer_norm)
    assert tuple(first_block_norm.meta["example_value"].shape) == (1, 7, 32)  # rank 1 of 2: 15 = 8 + 7


@pytest.mark.parametrize("fake_group", [4], indirect=True)
def test_tensor_parallel_heads_not_divisible_is_a_clear_error(fake_group):
    with pytest.raises(Exception, match="2 attention heads do not divide over tp_size 4"):
        sharded_graph("flux", {"tp_size": 4})


@pytest.mark.parametrize("fake_group", [4], indirect=True)
def test_ulysses_heads_not_divisible_is_a_clear_error(fake_group):
    with pytest.raises(Exception, match="2 attention heads do not divide over ulysses_size 4"):
        sharded_graph("flux", {"ulysses_size": 4})


def test_world_size_must_match(fake_group):
    with pytest.raises(ParallelismError, match="tp_size=4 must equal the world size 2"):
        bind_parallel_run(ParallelismConfig(tp_size=4))


def test_parallelism_needs_an_initialised_process_group():
    with pytest.raises(ParallelismError, match="needs torch.distributed initialised"):
        bind_parallel_run(ParallelismConfig(ulysses_size=2))


def test_parallel_options_are_validated():
    with pytest.raises(ValueError, match="2-D mesh"):
        ParallelismConfig(tp_size=2, ulysses_size=2)
    with pytest.raises(ValueError, match="tp_size must be an int >= 1"):
        cachedit_fx.parse_options({"tp_size": 0})
    with pytest.raises(ValueError, match="parallelism_config must be a ParallelismConfig"):
        cachedit_fx.parse_options({"parallelism_config": {"tp_size": 2}})
    settings = cachedit_fx.parse_options({"parallelism_config": ParallelismConfig(tp_size=2), "ulysses_size": 1})
    assert settings.parallelism == ParallelismConfig(tp_size=2)


def test_dynamic_shapes_are_refused(fake_group):
    model, inputs = TINY_MODELS["flux"]()
    compiled = torch.compile(model, backend="cachedit", dynamic=True, options={
        "inner_backend": "eager", "Fn_compute_blocks": 1, "tp_size": 2})
    with pytest.raises(Exception, match="static shapes"), torch.no_grad():
        compiled(**inputs, return_dict=False)


@pytest.mark.parametrize("option", ["tp_size", "ulysses_size"])
def test_sharded_blocks_stay_equal_so_regional_compile_reuses_them(fake_group, compile_reports, option):
    model, inputs = TINY_MODELS["flux"]()
    compiled = torch.compile(model, backend="cachedit", options={
        "inner_backend": "eager", "Fn_compute_blocks": 1, "regional_compile": True, "strict": True, option: 2})
    with torch.no_grad():
        out = compiled(**inputs, return_dict=False)[0]
    assert out.shape == inputs["hidden_states"].shape
    (report,) = compile_reports
    assert (report.pieces, report.compiles) == (9, 4)  # as unsharded: equal blocks share one compile
