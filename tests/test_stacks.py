"""The backend under what diffusers users stack on a transformer: LoRA adapters (PEFT, through
diffusers' API), layerwise casting and attention backends. Each stack caches with zero configuration and equals
the eager oracle ``reference_dbcache.ReferenceDBCache`` applied to the same stacked model.

Recompiles are counted, not forbidden: PEFT keeps each adapter's scale as a Python float, which
Dynamo specializes, so changing ``set_adapters`` weights or the active adapters retraces the
graph once (a new graph of the same layout continues the cache state); adapters loaded with
``enable_lora_hotswap`` and swapped with ``hotswap=True`` hold their scales in tensors and never
recompile.
"""

from __future__ import annotations

import pytest
import torch

import cachedit_fx
from models import BLOCK_LISTS, TINY_MODELS, ToyChain, run, trajectory
from reference_dbcache import ReferenceDBCache

peft = pytest.importorskip("peft", reason="peft is a test dependency: pip install -e '.[test]'")

ALWAYS = 100.0
OPTIONS = dict(inner_backend="eager", Fn_compute_blocks=1, residual_diff_threshold=ALWAYS, max_warmup_steps=1)
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
SINGLE_BLOCK_MLPS = r".*single_transformer_blocks\.\d+\.(proj_mlp|proj_out)"


def _reference_outputs(model, steps):
    reference = ReferenceDBCache(model, BLOCK_LISTS["flux"], 1, 0, threshold=ALWAYS, warmup=1)
    try:
        return run(reference, steps)
    finally:
        reference.close()


def _generation(compiled, model, steps):
    """(max |compiled - oracle|, cached steps, graphs Dynamo made) of one generation."""
    want = _reference_outputs(model, steps)
    torch._dynamo.utils.counters.clear()
    got = run(compiled, steps)
    error = max((g - w).abs().max().item() for g, w in zip(got, want))
    return error, cachedit_fx.summary(compiled).cached_steps, torch._dynamo.utils.counters["stats"]["unique_graphs"]


def _adapter(targets, rank: int, seed: int):
    torch.manual_seed(seed)
    return peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)


@pytest.mark.parametrize("targets", [ATTENTION, SINGLE_BLOCK_MLPS], ids=["attention-everywhere", "single-block-mlps"])
def test_lora_adapters_cache_and_equal_the_eager_model_when_weights_and_adapters_switch(targets):
    model, inputs = TINY_MODELS["flux"]()
    model.add_adapter(_adapter(targets, 4, 1), adapter_name="style")
    model.add_adapter(_adapter(ATTENTION, 2, 2), adapter_name="detail")
    model.set_adapters(["style"], [1.0])
    steps = list(trajectory(inputs, 5))
    compiled = torch.compile(model, backend="cachedit", options=OPTIONS)
    error, cached, _ = _generation(compiled, model, steps)
    assert error == 0.0 and cached == [1, 2, 3, 4]
    assert cachedit_fx.inspect(model, inputs, options=OPTIONS).num_blocks == 8  # LoRA layers leave the chain whole
    for names, weights in ((["style"], [0.4]), (["style", "detail"], [0.5, 1.5])):
        model.set_adapters(names, weights)
        error, cached, graphs = _generation(compiled, model, steps)
        assert error == 0.0 and cached == [1, 2, 3, 4]
        assert graphs <= 1  # PEFT's scales are Python floats: one retrace per change, none per step


def test_a_lora_file_hot_swapped_never_recompiles_and_fuse_and_unload_stay_exact(tmp_path):
    files = {}
    for name, seed in (("a", 1), ("b", 2)):
        donor, _ = TINY_MODELS["flux"]()
        donor.add_adapter(_adapter(ATTENTION, 4, seed), adapter_name=name)
        donor.save_lora_adapter(str(tmp_path / name), adapter_name=name)
        files[name] = str(tmp_path / name)
    model, inputs = TINY_MODELS["flux"]()
    steps = list(trajectory(inputs, 5))
    model.enable_lora_hotswap(target_rank=4)
    load = dict(prefix=None, weight_name="pytorch_lora_weights.safetensors")
    model.load_lora_adapter(files["a"], adapter_name="default_0", **load)
    compiled = torch.compile(model, backend="cachedit", options=OPTIONS)
    assert _generation(compiled, model, steps)[:2] == (0.0, [1, 2, 3, 4])
    model.load_lora_adapter(files["b"], adapter_name="default_0", hotswap=True, **load)
    assert _generation(compiled, model, steps) == (0.0, [1, 2, 3, 4], 0)
    model.fuse_lora(lora_scale=0.7)
    assert _generation(compiled, model, steps)[:2] == (0.0, [1, 2, 3, 4])
    model.unfuse_lora()
    model.unload_lora()
    assert _generation(compiled, model, steps)[:2] == (0.0, [1, 2, 3, 4])


def test_a_pipeline_lora_file_loaded_with_load_lora_weights_caches_like_the_oracle(tmp_path):
    """The pipeline-level API: ``FluxPipeline.save_lora_weights`` / ``load_lora_weights`` from
    a local file, then ``cachedit_fx.compile(pipe)``: equal to the oracle on the same pipeline."""
    from diffusers import FluxPipeline
    from peft.utils import get_peft_model_state_dict
    from cachedit_fx.tiny_pipelines import default_call_kwargs, tiny_flux_pipeline

    def generate(pipe):
        return pipe(**dict(default_call_kwargs("flux"), num_inference_steps=6), output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images

    donor = tiny_flux_pipeline(0)
    donor.transformer.add_adapter(_adapter(ATTENTION, 4, 1))
    FluxPipeline.save_lora_weights(str(tmp_path), transformer_lora_layers=get_peft_model_state_dict(donor.transformer))
    oracle_pipe, pipe = tiny_flux_pipeline(0), tiny_flux_pipeline(0)
    for p in (oracle_pipe, pipe):
        p.load_lora_weights(str(tmp_path), adapter_name="style")
    oracle = ReferenceDBCache(oracle_pipe.transformer, BLOCK_LISTS["flux"], 1, 0, threshold=0.3, warmup=1)
    want = generate(oracle_pipe)
    oracle.close()
    cachedit_fx.compile(pipe, **dict(OPTIONS, residual_diff_threshold=0.3))
    assert torch.equal(generate(pipe), want)
    assert cachedit_fx.summary(pipe.transformer).cached_steps == oracle.cached_steps != []


CPU_ATTENTION_BACKENDS = ["native", "_native_math", "_native_flash", "flex"]
CUDA_ATTENTION_BACKENDS = ["_native_cudnn", "_native_efficient", "flash", "_flash_3", "sage", "xformers"]


@pytest.mark.parametrize("backend", CPU_ATTENTION_BACKENDS + CUDA_ATTENTION_BACKENDS)
def test_attention_backends_cache_and_equal_the_eager_model(backend, monkeypatch):
    from diffusers.models.attention_dispatch import _AttentionBackendRegistry

    # set_attention_backend also makes the backend the process's active one: restored afterwards
    monkeypatch.setattr(_AttentionBackendRegistry, "_active_backend", _AttentionBackendRegistry._active_backend)
    if backend in CUDA_ATTENTION_BACKENDS and not torch.cuda.is_available():
        pytest.skip(f"attention backend {backend!r} runs on a GPU only (with its package installed)")
    device = "cuda" if backend in CUDA_ATTENTION_BACKENDS else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, inputs = TINY_MODELS["flux"]()
    model = model.to(device, dtype)
    inputs = {k: v.to(device, dtype) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}
    model.set_attention_backend(backend)
    steps = list(trajectory({k: v.cpu().float() for k, v in inputs.items()}, 5))
    steps = [{k: v.to(device, inputs[k].dtype) for k, v in step.items()} for step in steps]
    compiled = torch.compile(model, backend="cachedit", options=OPTIONS)
    error, cached, _ = _generation(compiled, model, steps)
    assert error == 0.0 and cached == [1, 2, 3, 4]


class _AllReducedInput(ToyChain):
    """A toy chain whose input is all-reduced first, as another parallelism would do in the graph."""

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        from torch.distributed._functional_collectives import all_reduce

        return super().forward(all_reduce(x, "sum", torch.distributed.group.WORLD), timestep)


@pytest.mark.parametrize("inner, compute", [("eager", torch.float32), ("aot_eager", torch.float32),
                                            ("eager", torch.bfloat16)])
def test_layerwise_casting_is_adopted_caches_in_one_graph_and_equals_the_hooked_model(inner, compute):
    """fp8 storage, fp32 or bf16 compute: diffusers' hooks split every layer into a graph of
    its own; ``cachedit_fx.compile`` adopts them as cast-on-use weights (one graph, decided in
    the program), the outputs equal the oracle on the hooked eager model, ``disable`` puts the
    hooks back."""
    from cachedit_fx.stored_weights import StoredWeight

    model, inputs = TINY_MODELS["flux"]()
    model.to(compute).enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=compute)
    steps = [{k: v.to(compute) if v.is_floating_point() else v for k, v in step.items()}
             for step in trajectory(inputs, 5)]
    compiled = cachedit_fx.compile(model, **dict(OPTIONS, inner_backend=inner))
    weight = model.transformer_blocks[0].attn.to_q.weight
    assert isinstance(weight, StoredWeight) and weight.stored.dtype == torch.float8_e4m3fn
    error, cached, graphs = _generation(compiled, model, steps)
    assert error <= 1e-6 and cached == [1, 2, 3, 4] and graphs == 1
    cachedit_fx.disable(compiled)
    layer = model.transformer_blocks[0].attn.to_q
    assert type(layer.weight) is torch.nn.Parameter and layer.weight.dtype == torch.float8_e4m3fn
    assert layer._diffusers_hook.get_hook("layerwise_casting") is not None
    hooked = run(model, steps[:1])[0]
    assert torch.equal(hooked, _reference_outputs(model, steps[:1])[0])


def _block_bytes(model, lists) -> list[int]:
    return [sum(p.stored.numel() * p.stored.element_size() for p in block.parameters())
            for name in lists for block in getattr(model, name)]


def _group_offloaded(offload_type):
    from diffusers.hooks import apply_group_offloading

    def apply(model):
        cpu = torch.device("cpu")
        apply_group_offloading(model, onload_device=cpu, offload_device=cpu, offload_type=offload_type,
                               **({"num_blocks_per_group": 1} if offload_type == "block_level" else {}))

    def hooked(model):
        return any(m._diffusers_hook.get_hook("group_offloading") is not None
                   for m in model.modules() if hasattr(m, "_diffusers_hook"))

    return apply, hooked


def _sequentially_offloaded():
    """accelerate's ``cpu_offload``, what ``enable_sequential_cpu_offload`` applies to each
    component (weights on the meta device, fetched from a CPU weights map at every layer)."""
    accelerate = pytest.importorskip("accelerate")

    def apply(model):
        accelerate.cpu_offload(model, execution_device=torch.device("cpu"))

    def hooked(model):
        layer = model.transformer_blocks[0].attn.to_q
        return hasattr(layer, "_hf_hook") and layer.weight.device.type == "meta"

    return apply, hooked


OFFLOADS = {"block_level": lambda: _group_offloaded("block_level"), "leaf_level": lambda: _group_offloaded("leaf_level"),
            "sequential_cpu_offload": _sequentially_offloaded}


@pytest.mark.parametrize("offload", sorted(OFFLOADS))
def test_offloading_is_adopted_and_skipped_blocks_are_never_fetched(offload):
    """diffusers' group offloading and accelerate's sequential CPU offload (onload / execution
    and offload device both CPU, so it runs anywhere) are adopted as fetched weights: one graph,
    outputs equal to the oracle on the offloaded eager model, and the weight bytes fetched per
    generation fall by exactly the skipped blocks' bytes (a cached step fetches the Fn block's
    weights only); ``disable`` puts the hooks back."""
    from cachedit_fx.runtime.weight_fetch import fetched_bytes, prefetched_bytes
    from cachedit_fx.stored_weights import StoredWeight

    apply, hooked = OFFLOADS[offload]()
    models = []
    for _ in range(2):
        model, inputs = TINY_MODELS["flux"]()
        apply(model)
        models.append(model)
    steps = list(trajectory(inputs, 5))
    compiled = cachedit_fx.compile(models[0], **dict(OPTIONS, residual_diff_threshold=0.0))
    stored = [p.stored for p in models[0].parameters() if isinstance(p, StoredWeight)]
    assert stored and all(type(t) is torch.Tensor and not t.requires_grad for t in stored)  # data, not parameters
    want_plain = run(models[1], steps)
    fetched_bytes(reset=True), prefetched_bytes(reset=True)
    assert torch.equal(torch.stack(run(compiled, steps)), torch.stack(want_plain))
    uncached, uncached_ahead = fetched_bytes(reset=True), prefetched_bytes(reset=True)
    cachedit_fx.refresh(compiled, residual_diff_threshold=ALWAYS)
    error, cached, graphs = _generation(compiled, models[1], steps)
    fetched, fetched_ahead = fetched_bytes(reset=True), prefetched_bytes(reset=True)
    blocks = _block_bytes(models[0], BLOCK_LISTS["flux"])
    assert error == 0.0 and cached == [1, 2, 3, 4] and graphs == 0
    assert uncached == len(steps) * sum(blocks)
    assert fetched == uncached - len(cached) * sum(blocks[1:])
    # copied ahead: each block after the second, once the first step has taught the order; never
    # the first middle block (a decision precedes it) nor the next call's first block
    assert uncached_ahead == (len(steps) - 1) * sum(blocks[2:])
    assert fetched_ahead == (len(steps) - len(cached)) * sum(blocks[2:])
    cachedit_fx.disable(compiled)
    assert hooked(models[0])
    assert not any(isinstance(p, StoredWeight) for p in models[0].parameters())
    assert torch.equal(run(models[0], steps[:1])[0], want_plain[0])


def test_model_cpu_offload_of_a_pipeline_caches_like_the_oracle_in_one_graph():
    """``enable_model_cpu_offload`` moves the whole transformer to the execution device around
    its call (accelerate's hook outside the traced forward): the compiled pipeline caches in one
    graph and equals the oracle on the offloaded eager pipeline."""
    from cachedit_fx.tiny_pipelines import default_call_kwargs, tiny_flux_pipeline

    def generate(pipe):
        return pipe(**dict(default_call_kwargs("flux"), num_inference_steps=6), output_type="latent",
                    generator=torch.Generator().manual_seed(0)).images

    oracle_pipe = tiny_flux_pipeline(0)
    oracle_pipe.enable_model_cpu_offload(device="cpu")
    oracle = ReferenceDBCache(oracle_pipe.transformer, BLOCK_LISTS["flux"], 1, 0, threshold=0.3, warmup=1)
    want = generate(oracle_pipe)
    oracle.close()
    pipe = tiny_flux_pipeline(0)
    pipe.enable_model_cpu_offload(device="cpu")
    cachedit_fx.compile(pipe, **dict(OPTIONS, residual_diff_threshold=0.3))
    torch._dynamo.utils.counters.clear()
    got = generate(pipe)
    assert torch.equal(got, want)
    assert cachedit_fx.summary(pipe.transformer).cached_steps == oracle.cached_steps != []
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_a_model_parallelised_by_diffusers_or_another_parallelism_is_refused_with_the_remedy():
    """diffusers' ``enable_parallelism`` needs an accelerator per rank (its device is picked by
    ``rank % torch.accelerator.device_count()``), so the recorded config stands in for it here;
    a graph holding collectives that cachedit_fx did not insert is refused the same way."""
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    model, _ = TINY_MODELS["flux"]()
    model._parallel_config = object()  # what enable_parallelism / from_pretrained(parallel_config=...) record
    with pytest.raises(cachedit_fx.ParallelismError, match="enable_parallelism.*parallelism_config"):
        cachedit_fx.compile(model)
    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        compiled = torch.compile(_AllReducedInput(4), backend="cachedit", options={"inner_backend": "eager"})
        with pytest.raises(Exception, match="collectives .* of another parallelism.*parallelism_config"):
            with torch.no_grad():
                compiled(torch.randn(1, 3, 8), torch.ones(1))
    finally:
        dist.destroy_process_group()


def test_offloaded_dbprune_fetches_only_the_blocks_it_runs_and_copies_none_ahead():
    """Under DBPrune every prunable block is decided on its own, so no offloaded weight is
    copied ahead past a block boundary; the bytes fetched are exactly the blocks that ran."""
    from reference_dbprune import ReferenceDBPrune
    from cachedit_fx.runtime.weight_fetch import fetched_bytes, prefetched_bytes

    apply, _ = _group_offloaded("block_level")
    model, inputs = TINY_MODELS["flux"]()
    apply(model)
    steps = list(trajectory(inputs, 6))
    reference = ReferenceDBPrune(model, BLOCK_LISTS["flux"], 1, 0, 0.3, warmup=1)
    want = run(reference, steps)
    reference.close()
    compiled = cachedit_fx.compile(model, inner_backend="eager", cache_config=cachedit_fx.DBPruneConfig(
        Fn_compute_blocks=1, residual_diff_threshold=0.3, max_warmup_steps=1))
    fetched_bytes(reset=True), prefetched_bytes(reset=True)
    got = run(compiled, steps)
    blocks = _block_bytes(model, BLOCK_LISTS["flux"])
    assert reference.pruned and cachedit_fx.summary(compiled).pruned_blocks == reference.pruned
    assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert prefetched_bytes() == 0
    assert fetched_bytes() == len(steps) * sum(blocks) - sum(blocks[b] for ids in reference.pruned.values() for b in ids)
