"""The ``cachedit`` Dynamo backend: resolve where the step is decided for this graph, build
the pass list once (``passes/pass_list.py``, read top to bottom there), bind the model's cache
after the chain is found, run the passes, return the program.

Graphs that cannot be cached (no repeated blocks, a graph break in the chain, ambiguous
streams) are compiled whole by the inner backend after one warning; ``strict=True`` raises.
A graph holding no block at all between graph breaks (a prologue or epilogue fragment of a
model whose chain is in another graph), or only lists the chain does not need while the
model's main list runs in another graph (a refiner between graph breaks), is compiled the
same way with a log line only.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, Callable, Optional, Sequence

import torch
import torch.fx as fx
from torch.utils._pytree import tree_map_only

from cachedit_fx.config import CAPTURE_SETTINGS, BackendSettings, DBCacheConfig, parse_options
from cachedit_fx.parallelism import ParallelRun, bind_parallel_run, check_no_foreign_parallelism, release_full_storage
from cachedit_fx.passes import (
    CHAIN_META_KEY, HANDLES_META_KEY, PARTITION_META_KEY, SHARDING_META_KEY, CompileHandles,
    compile_handles)
from cachedit_fx.passes.dump import GraphDumper
from cachedit_fx.passes.errors import NoBlocks, ParallelismError, SideGraph, UnsupportedGraph
from cachedit_fx.passes.find_block_chain import BlockChain, ends_in_graph_break
from cachedit_fx.passes.inner_compile import DynamoInputs, compile_piece, uses_cuda_graphs
from cachedit_fx.passes.insert_in_graph_step import step_program
from cachedit_fx.passes.pass_list import build_pass_list
from cachedit_fx.runtime.contexts import ModelCache
from cachedit_fx.runtime.stateful_program import program_with_state
from cachedit_fx.runtime.registry import cache_for_params
from cachedit_fx.runtime.state import ChainShape
from cachedit_fx.runtime.weight_fetch import stop_prefetch_after
from cachedit_fx.stored_weights import StoredWeight

log = logging.getLogger("cachedit_fx")

class CacheditFallbackWarning(UserWarning):
    """Emitted once per graph compiled without caching."""


def cachedit_backend(
    gm: fx.GraphModule, example_inputs: Sequence[Any], options: Optional[dict[str, Any]] = None,
    mode: Optional[str] = None,
) -> Callable[..., Any]:
    """``torch.compile(model, backend="cachedit", options={...})``; ``mode=`` given to
    ``torch.compile`` instead of ``options`` is Inductor's mode for every piece."""
    settings = parse_options(options if mode is None else {**(options or {}), "mode": mode})
    run = bind_parallel_run(settings.parallelism)
    if run is None:
        check_no_foreign_parallelism(graph=gm.graph, example_inputs=example_inputs)
    else:
        placeholders = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        run.inputs = dict(zip(placeholders, example_inputs))
        if any(not isinstance(v, torch.Tensor) or not all(isinstance(s, int) for s in v.shape) for v in example_inputs):
            raise ParallelismError("tensor- and context-parallel compiles need static shapes; this graph has "
                                   "symbolic ones (compile with dynamic=False, or mark_static the inputs)")
    dump = GraphDumper(settings.dump_dir)
    dump("dynamo", gm)
    handles = CompileHandles(parallel_run=run, dynamo_inputs=DynamoInputs.of(gm, example_inputs), dump=dump)
    gm.meta[HANDLES_META_KEY] = handles
    original = gm

    def bind_model_cache(gm: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
        """The model's cache bound to this graph's chain and options (``_cache_for``)."""
        chain = gm.meta[CHAIN_META_KEY]
        settings.cache.check_against_chain(len(chain))
        handles.model_cache = _cache_for(example_inputs, settings, chain)
        stop_prefetch_after(_prefetch_stops(gm, example_inputs, chain, settings.cache))
        return gm

    passes = build_pass_list(settings)
    passes.insert(bind_model_cache, after="find_block_chain")
    try:
        gm = passes.run(gm, settings, dump)
    except UnsupportedGraph as reason:
        if settings.strict:
            raise
        caches_elsewhere = _record(example_inputs, False, str(reason))
        message = (f"cachedit: compiling without cache ({reason}); inner backend {settings.inner_backend!r}"
                   + _capture_remedy(original, str(reason)))
        fragment = isinstance(reason, SideGraph) or (
            isinstance(reason, NoBlocks) and (caches_elsewhere or ends_in_graph_break(original)))
        if not fragment:
            warnings.warn(message, CacheditFallbackWarning, stacklevel=2)
        log.info(message)
        return compile_piece(original, settings, handles.dynamo_inputs)
    finally:
        handles.dynamo_inputs.release_examples()
    description = gm.meta[CHAIN_META_KEY].describe()
    model_cache = compile_handles(gm).model_cache
    model_cache.record_graph(True, description)
    log.info("cachedit: chain %s, %s F%dB%d, pieces %s", description,
             type(settings.cache).__name__, settings.cache.Fn_compute_blocks, settings.cache.Bn_compute_blocks,
             gm.meta[PARTITION_META_KEY].piece_sizes)
    program = program_with_state(step_program(gm), model_cache.bound)
    if run is not None:
        program = _with_weight_shards(program, run)
        model_cache.sharding = gm.meta.get(SHARDING_META_KEY)
    return outputs_owned(program) if uses_cuda_graphs(settings) else program


def outputs_owned(program: Callable[..., Any]) -> Callable[..., Any]:
    """``program`` returning copies of its tensor outputs: under CUDA graphs the tail piece's
    outputs live in the graph's memory pool, which the next replay overwrites (the second call
    of a CFG step would change the first call's result)."""

    def run_owned(*args: Any) -> Any:
        return tree_map_only(torch.Tensor, torch.clone, program(*args))

    return run_owned


def _with_weight_shards(program: Callable[..., Any], run: ParallelRun) -> Callable[..., Any]:
    """``program`` fed this rank's weight shards after Dynamo's inputs; with
    ``release_full_weights``, the parameters it no longer reads give up their storage."""
    if run.config.release_full_weights:
        freed = sum(release_full_storage(p) for p in run.releasable)
        log.info("cachedit: released %.1f MB of full weights now held as shards", freed / 2**20)
    shards = tuple(run.shard_inputs)
    if not shards:
        return program

    def run_with_shards(*args: Any) -> Any:
        return program(*args, *shards)

    return run_with_shards


def _record(example_inputs: Sequence[Any], cached: bool, detail: str) -> bool:
    """Note on the model's cache (found by the graph's parameters) how this graph was compiled;
    returns whether another graph of the model caches a chain."""
    params = [t for t in example_inputs if isinstance(t, torch.nn.Parameter)]
    if not params:
        return False
    cache = cache_for_params(params)
    cache.record_graph(cached, detail)
    return cache.bound is not None


def _capture_remedy(gm: fx.GraphModule, reason: str) -> str:
    """How to keep data-dependent ops in one graph, for a fallback that graph breaks may have
    caused while Dynamo traces without the capture settings (a plain ``torch.compile``:
    ``torch.compile`` gives a backend no way to set them for one model); else ""."""
    config = torch._dynamo.config
    if all(getattr(config, name) == value for name, value in CAPTURE_SETTINGS.items()):
        return ""
    if not (ends_in_graph_break(gm) or "graph break" in reason):
        return ""
    return ("; graph breaks at data-dependent ops (.item(), .tolist(), nonzero, boolean masks) go away when "
            "Dynamo captures them: compile with cachedit_fx.compile(model, ...), which sets "
            "capture_scalar_outputs and capture_dynamic_output_shape_ops for this model's calls only, or call the "
            "model inside torch._dynamo.config.patch(capture_scalar_outputs=True, "
            "capture_dynamic_output_shape_ops=True)")


def _prefetch_stops(gm: fx.GraphModule, example_inputs: Sequence[Any], chain: BlockChain,
                    cache: DBCacheConfig) -> set[int]:
    """The weight-fetch groups of the chain blocks past which offloaded weights are not copied
    ahead (``runtime/weight_fetch.py``): a cache decision may skip the next block, or the block
    is the chain's last."""
    examples = dict(zip(gm.graph.find_nodes(op="placeholder"), example_inputs))
    nodes = {node.name: node for node in gm.graph.nodes}
    groups = set()
    for block in chain.blocks:
        if block is chain.blocks[-1] or cache.decided_before(block.chain_index + 1, len(chain)):
            for name in block.node_names:
                for value in map(examples.get, nodes[name].all_input_nodes):
                    if isinstance(value, StoredWeight) and value.compute[2] is not None:
                        groups.add(value.compute[2])
    return groups


def _cache_for(example_inputs: Sequence[Any], settings: BackendSettings, chain: BlockChain) -> ModelCache:
    """The model's cache (found by its lifted parameters, else created), bound to this graph's
    options. One chain per model: a graph that does not hold the model's main block list (a
    refiner between graph breaks), or whose chain is not the one another graph of the model
    already caches, is refused (``UnsupportedGraph``), so two graphs never share one cache state."""
    params = [t for t in example_inputs if isinstance(t, torch.nn.Parameter)]
    if not params:
        raise UnsupportedGraph("the graph lifts no parameters, so its model's cache state cannot be identified")
    cache = cache_for_params(params)
    if cache.main_list is not None and cache.main_list not in {info.path for info in chain.lists}:
        raise SideGraph(f"this graph's blocks ({chain.describe()}) do not include the model's main block "
                               f"list {cache.main_list}, which runs in another graph")
    if cache.chain_lists is not None and cache.chain_lists != chain.list_paths:
        raise UnsupportedGraph(f"the model already caches the chain {' -> '.join(cache.chain_lists)} in another "
                               f"graph; this graph's blocks ({chain.describe()}) run uncached")
    cache.chain_lists = chain.list_paths
    shape = ChainShape(len(chain), settings.cache.Fn_compute_blocks, settings.cache.Bn_compute_blocks)
    cache.bind(settings.cache, shape, settings.calibrator)
    return cache
