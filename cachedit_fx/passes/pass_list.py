"""The pass list of one compile, built once from its (frozen) options; read top to bottom.

    inline_block_regions   block regions Dynamo traced once (``trace_blocks_once``) inlined again
    find_block_chain       annotate the repeated block chain
    tensor_parallel        (tp_size > 1) attention heads and MLPs sharded, row-parallel all-reduce
    context_parallel       (ulysses_size > 1) sequence sharded at the chain entry, all-to-all attention
  DBCache:
    partition              head | middle | tail pieces, carried/shared values, streams
    insert_in_graph_step   the whole step in the program (a torch.cond), its state as inputs
  DBPrune:
    partition_blocks       one piece per prunable block, its streams
    insert_prune_steps     one step (a torch.cond) per prunable block
  then:
    compile_regions        (regional_compile=True) the steps' regions compiled block by block, once
                           per distinct block, called through a custom op
    lower                  compile the program; where its branches are taken (in the program,
                           between its parts on the host, a CUDA graph's conditional node)

``target="export"`` ends with ``insert_exported_step`` or, for DBPrune,
``insert_exported_prune_steps`` (state as buffers, a reset input) and compiles nothing.
``add_pass`` adds a researcher's pass to every list built afterwards. ``PassManager.run``
applies a list, logging each pass's wall time at DEBUG and handing each result to the dumper.

Invariant: a list never holds a pass twice under one name; ``insert`` names an existing pass.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal, Optional

import torch.fx as fx

from cachedit_fx.config import BackendSettings, DBPruneConfig
from cachedit_fx.passes.compile_regions import compile_regions
from cachedit_fx.passes.context_parallel import context_parallel
from cachedit_fx.passes.find_block_chain import find_block_chain
from cachedit_fx.passes.inline_block_regions import inline_block_regions
from cachedit_fx.passes.insert_in_graph_step import insert_exported_step, insert_in_graph_step
from cachedit_fx.passes.insert_prune_steps import insert_exported_prune_steps, insert_prune_steps
from cachedit_fx.passes.lower import lower
from cachedit_fx.passes.partition import partition
from cachedit_fx.passes.partition_blocks import partition_blocks
from cachedit_fx.passes.tensor_parallel import tensor_parallel

log = logging.getLogger("cachedit_fx")

Pass = Callable[[fx.GraphModule, Any], fx.GraphModule]


def pass_name(graph_pass: Pass) -> str:
    return getattr(graph_pass, "__name__", type(graph_pass).__name__)


def _anchor(caller: str, after: Optional[str], before: Optional[str], names: Any) -> str:
    """The one pass named by ``after`` / ``before``, which must be among ``names``."""
    if (after is None) == (before is None):
        raise ValueError(f"{caller}: name exactly one of after= / before=")
    anchor = after if after is not None else before
    if anchor not in names:
        raise ValueError(f"{caller}: no pass named {anchor!r}; the passes are {sorted(names)}")
    return anchor


@dataclass
class PassManager:
    passes: list[Pass]

    @property
    def names(self) -> list[str]:
        return [pass_name(p) for p in self.passes]

    def insert(self, graph_pass: Pass, *, after: Optional[str] = None, before: Optional[str] = None) -> None:
        """Insert ``graph_pass`` right after the pass named ``after`` or before ``before``."""
        anchor = _anchor("insert", after, before, self.names)
        if pass_name(graph_pass) in self.names:
            raise ValueError(f"insert: a pass named {pass_name(graph_pass)!r} is already in the list")
        self.passes.insert(self.names.index(anchor) + (after is not None), graph_pass)

    def up_to(self, name: str) -> "PassManager":
        """The passes up to and including ``name`` (an analysis prefix)."""
        return PassManager(self.passes[: self.names.index(name) + 1])

    def run(self, gm: fx.GraphModule, settings: Any, dump: Optional[Callable[..., None]] = None) -> fx.GraphModule:
        for graph_pass in self.passes:
            start = time.perf_counter()
            gm = graph_pass(gm, settings)
            seconds = time.perf_counter() - start
            log.debug("cachedit: pass %s %.1f ms", pass_name(graph_pass), 1e3 * seconds)
            if dump is not None:
                dump(pass_name(graph_pass), gm, seconds)
        return gm


def build_pass_list(settings: BackendSettings, target: Literal["compile", "export"] = "compile") -> PassManager:
    """The passes for ``settings``, ``add_pass`` entries included."""
    passes: list[Pass] = [inline_block_regions, find_block_chain]
    parallelism = settings.parallelism
    if parallelism is not None and parallelism.enabled:
        passes.append(tensor_parallel if parallelism.kind == "tp" else context_parallel)
    prune = isinstance(settings.cache, DBPruneConfig)
    if target == "export":
        passes += [partition_blocks, insert_exported_prune_steps] if prune else [partition, insert_exported_step]
    else:
        passes += [partition_blocks, insert_prune_steps] if prune else [partition, insert_in_graph_step]
        if settings.regional_compile:
            passes.append(compile_regions)
        passes.append(lower)
    manager = PassManager(passes)
    for entry in _USER_PASSES:
        if (entry.after or entry.before) in manager.names:
            manager.insert(entry.graph_pass, after=entry.after, before=entry.before)
    return manager


PASS_NAMES = frozenset(pass_name(p) for p in (
    inline_block_regions, find_block_chain, tensor_parallel, context_parallel, partition, partition_blocks,
    insert_in_graph_step, insert_exported_step, insert_prune_steps, insert_exported_prune_steps, compile_regions,
    lower))
"""Every pass a list may hold: the anchors ``add_pass`` accepts."""


@dataclass
class PassRegistration:
    """An ``add_pass`` entry; ``remove()`` takes it out of lists built afterwards."""

    graph_pass: Pass
    after: Optional[str]
    before: Optional[str]

    def remove(self) -> None:
        if self in _USER_PASSES:
            _USER_PASSES.remove(self)


_USER_PASSES: list[PassRegistration] = []


def add_pass(graph_pass: Pass, *, after: Optional[str] = None, before: Optional[str] = None) -> PassRegistration:
    """Insert ``graph_pass`` (``(gm, settings) -> gm``) after or before the pass of that name in
    every pass list built from now on (lists without that pass are left as they are)."""
    _anchor("add_pass", after, before, PASS_NAMES)
    entry = PassRegistration(graph_pass, after, before)
    _USER_PASSES.append(entry)
    return entry
