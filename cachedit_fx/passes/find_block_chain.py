"""Locate the chain of repeated transformer blocks in a Dynamo graph.

Assumes: Dynamo-captured torch IR with ``nn_module_stack`` on call nodes.
Guarantees (else ``UnsupportedGraph``):
  * every block is a contiguous run of non-placeholder nodes under one module path
    ``<list>.<i>`` of a block list at the shallowest module depth among block lists
    (nested lists such as HunyuanVideo's ``refiner_blocks`` are not the chain);
  * each list's indices run 0..n-1 in program order, lists follow each other, and all
    blocks of a list except the last share one structural hash;
  * the graph did not end in a graph break while holding blocks.
The result is recorded in ``gm.meta[CHAIN_META_KEY]`` as a ``BlockChain``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Optional

import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import CHAIN_META_KEY
from cachedit_fx.passes.errors import UnsupportedGraph

_INDEXED_PATH = re.compile(r"^(?P<list>.+)\.(?P<index>\d+)$")


@dataclass(frozen=True)
class Block:
    """One transformer block: nodes ``node_names``, at graph positions ``first..last``."""

    chain_index: int
    list_path: str
    list_index: int
    kind: str
    structure_hash: str
    first: int
    last: int
    node_names: tuple[str, ...]


@dataclass(frozen=True)
class BlockChain:
    """All block lists of the model, concatenated in program order."""

    blocks: tuple[Block, ...]

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def list_paths(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(b.list_path for b in self.blocks))

    def describe(self) -> str:
        parts = []
        for path in self.list_paths:
            members = [b for b in self.blocks if b.list_path == path]
            parts.append(f"{path}[{len(members)}] ({members[0].kind})")
        return " -> ".join(parts)


def normalize_module_path(path: str) -> str:
    """``L['self'].__dict__['_modules']['blocks']._modules['3']`` -> ``blocks.3``."""
    path = path.replace("L['self']", "")
    path = re.sub(r"\.__dict__\['_modules'\]\['([^']+)'\]", r".\1", path)
    path = re.sub(r"\._modules\['([^']+)'\]", r".\1", path)
    path = re.sub(r"\['([^']+)'\]", r".\1", path)
    return path.strip(".")


def _indexed_entries(node: fx.Node) -> list[tuple[str, int, str]]:
    """(list path, index, class name) of every indexed module enclosing ``node``."""
    entries = []
    for value in (node.meta.get("nn_module_stack") or {}).values():
        path, cls = value[0], value[1]
        match = _INDEXED_PATH.match(normalize_module_path(path))
        if match:
            name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
            entries.append((match["list"], int(match["index"]), name.rsplit(".", 1)[-1]))
    return entries


def _structure_hash(nodes: list[fx.Node]) -> str:
    digest = hashlib.sha1()
    for node in nodes:
        target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", repr(node.target))
        digest.update(f"{node.op}:{target};".encode())
    return digest.hexdigest()[:16]


def find_block_chain(gm: fx.GraphModule, settings: Optional[BackendSettings] = None) -> fx.GraphModule:
    """Annotate ``gm`` with its ``BlockChain``; raise ``UnsupportedGraph`` if there is none."""
    gm.meta[CHAIN_META_KEY] = analyze_block_chain(gm)
    return gm


def analyze_block_chain(gm: fx.GraphModule) -> BlockChain:
    nodes = list(gm.graph.nodes)
    depth_of: dict[str, int] = {}
    membership: list[Optional[tuple[str, int, str]]] = []
    for node in nodes:
        entries = [] if node.op in ("placeholder", "output") else _indexed_entries(node)
        for list_path, _, _ in entries:
            depth_of.setdefault(list_path, list_path.count("."))
        membership.append(entries)
    if not depth_of:
        raise UnsupportedGraph(
            "no repeated transformer blocks found in this graph (no module path of the form '<list>.<i>'); "
            "if the model has block lists, a graph break split them (see torch._dynamo.explain)"
        )
    top_depth = min(depth_of.values())
    top_lists = {p for p, d in depth_of.items() if d == top_depth}

    runs: list[list] = []  # [list_path, index, kind, first, last]
    for pos, entries in enumerate(membership):
        owner = next(((p, i, k) for p, i, k in entries if p in top_lists), None)
        if owner is None:
            continue
        if runs and runs[-1][:2] == [owner[0], owner[1]] and runs[-1][4] == pos - 1:
            runs[-1][4] = pos
            continue
        if any(r[:2] == [owner[0], owner[1]] for r in runs):
            raise UnsupportedGraph(f"block {owner[0]}.{owner[1]} is not one contiguous run of nodes")
        runs.append([owner[0], owner[1], owner[2], pos, pos])

    blocks: list[Block] = []
    for chain_index, (list_path, index, kind, first, last) in enumerate(runs):
        members = nodes[first : last + 1]
        blocks.append(
            Block(chain_index, list_path, index, kind, _structure_hash(members), first, last,
                  tuple(n.name for n in members))
        )
    _check_lists(blocks)
    reason = getattr(gm, "compile_subgraph_reason", None)
    if reason is not None and getattr(reason, "graph_break", False):
        raise UnsupportedGraph(
            "graph break inside the block chain: this graph ends in a graph break while holding blocks "
            f"{blocks[0].list_path}.{blocks[0].list_index}..{blocks[-1].list_path}.{blocks[-1].list_index}"
        )
    if len(blocks) < 2:
        raise UnsupportedGraph("no repeated transformer blocks found (fewer than 2 blocks)")
    return BlockChain(tuple(blocks))


def _check_lists(blocks: list[Block]) -> None:
    seen_lists: list[str] = []
    for block in blocks:
        if not seen_lists or seen_lists[-1] != block.list_path:
            if block.list_path in seen_lists:
                raise UnsupportedGraph(f"block list {block.list_path} is interleaved with another list")
            seen_lists.append(block.list_path)
    for path in seen_lists:
        members = [b for b in blocks if b.list_path == path]
        indices = [b.list_index for b in members]
        if indices != list(range(len(members))):
            raise UnsupportedGraph(
                f"block list {path} holds blocks {indices} instead of 0..{len(members) - 1}: "
                "the chain is split by a graph break or runs out of order"
            )
        body_hashes = {b.structure_hash for b in members[:-1]}
        if len(body_hashes) > 1:
            raise UnsupportedGraph(f"blocks of {path} are not structurally identical")
