"""Ulysses context parallelism: shard the sequence over ``ulysses_size`` ranks.

Assumes: ``gm.meta[CHAIN_META_KEY]``; a ``ParallelRun`` of kind "cp" in ``compile_handles(gm)``.
The chain's entry values (``[B, L, C]`` tensors defined before the chain and used by its
first block only: image and text hidden states) are cut along L at the chain entry, chunk
``r`` of each to rank ``r`` (lengths need not divide: the first ``L % world`` ranks take one
more token). Shared values that meet them (rotary tables, masks) are cut to match where
they are used. Attention runs on all tokens and ``H / world`` heads through two functional
all-to-alls; the first use after the chain all-gathers the full sequence. Guarantees: the
rewritten graph computes the original function; the ``ShardingReport`` lands in
``meta[SHARDING_META_KEY]`` and the chain is re-analysed on the new graph.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import CHAIN_META_KEY, compile_handles
from cachedit_fx.passes.errors import ParallelismError
from cachedit_fx.passes.find_block_chain import BlockChain
from cachedit_fx.shard_layout import Sharded
from cachedit_fx.passes.shard_propagation import (
    ShardPlan, ShardRewriter, ShardingReport, record_sharding,
)
from cachedit_fx.passes.tensor_parallel import chain_node_names, check_heads_divide

SEQUENCE_DIM = 1


def context_parallel(gm: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    run = compile_handles(gm).parallel_run
    chain: BlockChain = gm.meta[CHAIN_META_KEY]
    parameters = {name for name, value in run.inputs.items() if isinstance(value, torch.nn.Parameter)}
    entry = find_entry_values(gm, chain, parameters)
    if not entry:
        raise ParallelismError("no [B, L, C] value enters the block chain, so there is no sequence to split")
    check_heads_divide(gm, chain_node_names(chain), run.world, "ulysses_size")
    plan = ShardPlan("cp", run.world, run.rank, run.group_name, chain_node_names(chain), entry=entry)
    report = ShardingReport("cp", run.world)
    report.weight_bytes_full = report.weight_bytes_local = sum(run.inputs[name].nbytes for name in parameters)
    new = ShardRewriter(gm, plan, lambda *_: None, report).run()
    return record_sharding(new, report)


def find_entry_values(gm: fx.GraphModule, chain: BlockChain, parameters: set[str]) -> dict[str, Sharded]:
    """Values (not ``parameters``) the first block consumes that no later node uses: the
    streams entering the chain."""
    first = set(chain.blocks[0].node_names)
    inside_or_after = {n for n in list(gm.graph.nodes)[chain.blocks[0].first:]}
    entry = {}
    for node in gm.graph.nodes:
        if node.name in first or node in inside_or_after or node.op == "output" or node.name in parameters:
            continue
        value = node.meta.get("example_value")
        if not isinstance(value, torch.Tensor) or value.dim() != 3 or not value.is_floating_point():
            continue
        users = set(node.users)
        if users and all(u.name in first for u in users) and value.shape[SEQUENCE_DIM] > 1:
            entry[node.name] = Sharded(SEQUENCE_DIM, (int(value.shape[SEQUENCE_DIM]),))
    return entry
