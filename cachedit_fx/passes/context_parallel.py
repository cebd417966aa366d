"""Ulysses context parallelism: shard the sequence over ``ulysses_size`` ranks.

Assumes: ``gm.meta[CHAIN_META_KEY]``; a ``ParallelRun`` of kind "cp" in ``compile_handles(gm)``.
The chain's entry values (``[B, L, C]`` tensors defined before the chain and used by its
first block only) are cut along L at the chain entry like ``tensor_split`` (lengths need not
divide); shared values that meet them (rotary tables, masks) are cut where they are used.
Attention runs on all tokens and ``H / world`` heads between two all-to-alls; the first use
after the chain all-gathers the full sequence. Guarantees: the rewritten graph computes the
original function (``shard_propagation``); ``record_sharding`` stores the report and re-analyses the chain.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import CHAIN_META_KEY, compile_handles
from cachedit_fx.passes.errors import ParallelismError
from cachedit_fx.passes.find_block_chain import BlockChain
from cachedit_fx.shard_layout import Sharded
from cachedit_fx.passes.shard_propagation import ShardPlan, ShardRewriter, ShardingReport, record_sharding
from cachedit_fx.passes.tensor_parallel import chain_node_names, check_heads_divide

SEQUENCE_DIM = 1


def context_parallel(gm: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    run = compile_handles(gm).parallel_run
    chain: BlockChain = gm.meta[CHAIN_META_KEY]
    parameters = {name for name, value in run.inputs.items() if isinstance(value, torch.nn.Parameter)}
    entry = find_entry_values(gm, chain, parameters)
    if not entry:
        raise ParallelismError("no [B, L, C] value enters the block chain, so there is no sequence to split")
    chain_names = chain_node_names(chain)
    check_heads_divide(gm, chain_names, run.world, "ulysses_size")
    report = ShardingReport("cp", run.world)
    report.weight_bytes_full = report.weight_bytes_local = sum(run.inputs[name].nbytes for name in parameters)
    plan = ShardPlan("cp", run.world, run.rank, run.group_name, chain_names, entry=entry)
    return record_sharding(ShardRewriter(gm, plan, lambda *_: None, report).run(), report)


def find_entry_values(gm: fx.GraphModule, chain: BlockChain, parameters: set[str]) -> dict[str, Sharded]:
    """Values before the chain (not ``parameters``) that only the first block uses: the
    streams entering the chain."""
    first = set(chain.blocks[0].node_names)
    entry = {}
    for node in list(gm.graph.nodes)[:chain.blocks[0].first]:
        value = node.meta.get("example_value")
        if (node.name not in parameters and isinstance(value, torch.Tensor) and value.dim() == 3
                and value.is_floating_point() and value.shape[SEQUENCE_DIM] > 1
                and node.users and all(u.name in first for u in node.users)):
            entry[node.name] = Sharded(SEQUENCE_DIM, (int(value.shape[SEQUENCE_DIM]),))
    return entry
