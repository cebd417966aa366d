"""Locate the chain of repeated transformer blocks in a Dynamo graph.

Assumes: Dynamo-captured torch IR with ``nn_module_stack`` on call nodes.

Block lists: a block is a member ``<list>.<i>`` of a module that is never called itself (a
``ModuleList``, not a ``Sequential``); a node belongs to the outermost such block on its module
stack, so lists nested in blocks (``ff.net``) are no lists of the graph. A block list holds two
or more modules of one class (``repeated``) or one module with submodules (one block); a list of
layers of different classes (``[GELU, Dropout, Linear]``) never joins a chain. A list is
well-formed when every block runs once as one contiguous run of nodes, indices 0..n-1 in
program order; it conditions a later well-formed list L when its values reach the graph output
only by merging into values computed from L's first block, never by entering it (WanAnimate's
motion encoder, WanVACE's control blocks).

The chain: the well-formed, non-conditioning list carrying the most compute (``compute.py``),
grown backwards and forwards by neighbouring block lists whose streams continue into it: list B
follows list A when the largest tensor the streams entering B's first block read (through the
glue between) is an output of A's last block and none comes from a third list (FLUX.2's
single-stream blocks read ``cat(text, image)``; a bank of per-block text projections may join
in). A list whose every block hands the stream on to the next chain block by itself joins
between chain blocks (Latte's temporal blocks). Lists of one block each form a chain when they
join one another. Lists on their own streams before the chain (Lumina2 / Z-Image refiners,
HunyuanVideo's token refiner) and lists adding to a stream that bypasses them (ConsisID's face
cross-attention) stay outside; ``BlockChain.lists`` records every list with its role.

Guarantees (else ``UnsupportedGraph``; ``NoBlocks`` when no ``ModuleList`` runs): two or more
chain blocks, each one contiguous run of nodes, no two overlapping, each chain list's indices
0..n-1 in program order; every list neither well-formed nor conditioning carries less compute
than the chain's main list (else it would be the chain, split by a graph break or run twice:
the error names it); the graph does not end in a graph break inside a block or inside the loop
over a chain list. Graph breaks are blamed only in a graph that ends in one or resumes after
one. The result is ``gm.meta[CHAIN_META_KEY]``.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import linecache
import re
from collections import Counter
from dataclasses import dataclass
from typing import AbstractSet, Iterable, Optional

import torch.fx as fx

from cachedit_fx.config import BackendSettings
from cachedit_fx.passes import CHAIN_META_KEY
from cachedit_fx.passes.compute import largest_tensor, node_flops, total_flops
from cachedit_fx.passes.dataflow import tensor_meta
from cachedit_fx.passes.errors import NoBlocks, UnsupportedGraph
from cachedit_fx.passes.streams import StreamGraph, expr_leaves

_INDEXED_PATH = re.compile(r"^(?P<list>.+)\.(?P<index>\d+)$")
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
_RESUME_FRAME = "torch_dynamo_resume_in_"


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
class ListInfo:
    """A block list of the graph: ``role`` is "chain", "prologue" (runs before the chain on its
    own streams), "interleaved" (its blocks run between chain blocks) or "epilogue"."""

    path: str
    kind: str
    count: int
    flops: int
    role: str


@dataclass(frozen=True)
class BlockChain:
    """The chain's blocks in program order, and every block list of the graph."""

    blocks: tuple[Block, ...]
    lists: tuple[ListInfo, ...] = ()
    graph_flops: int = 0

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def list_paths(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(b.list_path for b in self.blocks))

    @property
    def chain_flops(self) -> int:
        return sum(info.flops for info in self.lists if info.role == "chain")

    def block_ranges(self, graph: fx.Graph) -> list[tuple[int, int]]:
        """Each block's (first, last) position in ``graph`` (a rewrite of the analysed graph), by node name."""
        pos = {n.name: i for i, n in enumerate(graph.nodes)}
        return [(pos[b.node_names[0]], pos[b.node_names[-1]]) for b in self.blocks]

    def describe(self) -> str:
        parts = []
        for path in self.list_paths:
            members = [b for b in self.blocks if b.list_path == path]
            parts.append(f"{path}[{len(members)}] ({members[0].kind})")
        runs = [b.list_path for k, b in enumerate(self.blocks) if k == 0 or self.blocks[k - 1].list_path != b.list_path]
        joined = " + ".join(parts) + " interleaved" if len(runs) > len(parts) else " -> ".join(parts)
        side = [f"{info.path}[{info.count}] {info.role}" for info in self.lists if info.role != "chain"]
        return joined + (f"; side lists: {', '.join(side)}" if side else "")


def normalize_module_path(path: str) -> str:
    """``L['self'].__dict__['_modules']['blocks']._modules['3']`` -> ``blocks.3``: relative to the
    traced forward's module, whatever its local is called (``L['module']`` when a hook wrapper
    such as accelerate's calls the forward)."""
    path = re.sub(r"^L\['[^']+'\]", "", path)
    return re.sub(r"(?:\.__dict__\['_modules'\]|\._modules)?\['([^']+)'\]", r".\1", path).strip(".")


def _stack(node: fx.Node) -> list[tuple[str, str]]:
    """(normalized module path, class name) of the modules enclosing ``node``, outermost first."""
    entries = []
    for value in (node.meta.get("nn_module_stack") or {}).values():
        cls = value[1]
        name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
        entries.append((normalize_module_path(value[0]), name.rsplit(".", 1)[-1]))
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


@dataclass
class _List:
    path: str
    runs: list[tuple[int, str, int, int]]  # (index, class, first, last) per contiguous run
    flops: int = 0
    repeated: bool = True
    """Two or more members of one class."""
    compound: bool = False
    """Some member's nodes lie in submodules of that member (a block, not a single layer)."""
    bank: bool = False
    """No member reads another's output (per-block projections computed side by side)."""

    @property
    def first(self) -> int:
        return self.runs[0][2]

    @property
    def last(self) -> int:
        return self.runs[-1][3]

    @property
    def kind(self) -> str:
        return self.runs[0][1]

    @property
    def count(self) -> int:
        return len({r[0] for r in self.runs})

    @property
    def is_block_list(self) -> bool:
        """Repeated, or one block: a list that can seed a chain."""
        return self.repeated or (self.count == 1 and self.compound)

    @property
    def weight(self) -> tuple[int, int, int]:
        """Rank as the chain's main list: compute, then nodes, then the earlier list."""
        return self.flops, sum(r[3] - r[2] + 1 for r in self.runs), -self.first


def analyze_block_chain(gm: fx.GraphModule) -> BlockChain:
    nodes = list(gm.graph.nodes)
    fragment = _is_fragment(gm, nodes)
    lists = _block_lists(nodes)
    block_lists = [info for info in lists if info.is_block_list]
    problems = {info.path: _run_problem(info, fragment) for info in block_lists}
    candidates = [info for info in block_lists if problems[info.path] is None]
    conditioning = _conditioning_lists(nodes, block_lists, candidates)
    main = max((info for info in candidates if info not in conditioning), key=lambda l: l.weight, default=None)
    malformed = [info for info in block_lists if problems[info.path] is not None and info not in conditioning
                 and (main is None or info.weight > main.weight)]
    if malformed:
        raise UnsupportedGraph(problems[max(malformed, key=lambda l: l.weight).path])
    chain = _grown_chain(nodes, lists, main) if main is not None else []
    if sum(info.count for info in chain) < 2:
        raise _no_chain(gm, lists, block_lists, main, fragment)
    problem = next((problems[info.path] for info in chain if problems[info.path] is not None), None)
    if problem is not None:
        raise UnsupportedGraph(problem)
    blocks = _chain_blocks(nodes, chain)
    _check_graph_break(gm, nodes, blocks)
    start, stop = blocks[0].first, blocks[-1].last
    infos = [ListInfo(info.path, info.kind, info.count, info.flops,
                      "chain" if info in chain else "prologue" if info.last < start
                      else "epilogue" if info.first > stop else "interleaved")
             for info in lists if info.repeated or info in chain]
    return BlockChain(tuple(blocks), tuple(infos), total_flops(nodes))


def ends_in_graph_break(gm: fx.GraphModule) -> bool:
    """Dynamo ended this graph at a graph break (the forward goes on in another graph)."""
    return bool(getattr(getattr(gm, "compile_subgraph_reason", None), "graph_break", False))


def _is_fragment(gm: fx.GraphModule, nodes: list[fx.Node]) -> bool:
    """The graph is one of several Dynamo made of one forward: it ends in a graph break, or it
    resumes after one (its frames are Dynamo's ``torch_dynamo_resume_in_*`` functions)."""
    frames = getattr(getattr(gm, "compile_subgraph_reason", None), "user_stack", None) or []
    return (ends_in_graph_break(gm) or any(frame.name.startswith(_RESUME_FRAME) for frame in frames)
            or any(_RESUME_FRAME in (node.meta.get("stack_trace") or "") for node in nodes))


def _run_problem(info: _List, fragment: bool) -> Optional[str]:
    """Why ``info`` is not well-formed (module docstring), or None."""
    indices = [r[0] for r in info.runs]
    if len(set(indices)) != len(indices):
        twice = next(i for i in indices if indices.count(i) > 1)
        return (f"block {info.path}.{twice} is not one contiguous run of nodes (the list runs more than once, "
                "or the block runs in pieces)")
    if indices != list(range(len(indices))):
        cause = ("the chain is split by a graph break or runs out of order" if fragment
                 else "the list runs only some of its blocks, or out of order")
        return f"block list {info.path} holds blocks {indices} instead of 0..{len(indices) - 1}: {cause}"
    return None


def _conditioning_lists(nodes: list[fx.Node], block_lists: list[_List], candidates: list[_List]) -> list[_List]:
    """The block lists whose values reach the graph output only through values computed from the
    first block of a later candidate, never by entering that block (module docstring)."""
    heads = {later.path: set(nodes[later.runs[0][2]:later.runs[0][3] + 1]) for later in candidates}
    merged = {path: _descendants(head) for path, head in heads.items()}

    def conditions(info: _List, later: _List) -> bool:
        reached = _descendants([n for run in info.runs for n in nodes[run[2]:run[3] + 1]], merged[later.path])
        return not any(n.op == "output" or n in heads[later.path] for n in reached)

    return [info for info in block_lists
            if any(conditions(info, later) for later in candidates if later.first > info.last)]


def _descendants(sources: Iterable[fx.Node], stop: AbstractSet[fx.Node] = frozenset()) -> set[fx.Node]:
    """``sources`` and every node that depends on one of them, walking on from no ``stop`` node."""
    found, frontier = set(sources), list(sources)
    while frontier:
        for user in frontier.pop().users:
            if user not in found:
                found.add(user)
                if user not in stop:
                    frontier.append(user)
    return found


def _no_chain(gm: fx.GraphModule, lists: list[_List], block_lists: list[_List], main: Optional[_List],
              fragment: bool) -> UnsupportedGraph:
    """The error for a graph whose lists form no chain of two blocks, naming the cause: graph breaks
    only when the graph ends in one (its lists may go on in the next graph), or resumes after one
    and holds no block list."""
    if not lists:
        return NoBlocks(
            "no repeated transformer blocks found in this graph (no block list runs in it: no ModuleList of "
            "blocks); if the model has block lists, a graph break split them (see torch._dynamo.explain)"
        )
    if fragment and (not block_lists or ends_in_graph_break(gm)):
        return UnsupportedGraph(
            "no repeated transformer blocks in this graph: it holds part of a block list but not two of its "
            "blocks, so graph breaks split the chain (see torch._dynamo.explain). If an earlier call raised "
            "while Dynamo traced the model, Dynamo now runs its forward eagerly and compiles each block "
            "alone: torch._dynamo.reset() restores it (cachedit_fx.compile recovers by itself)")
    if not block_lists:
        layers = ", ".join(f"{info.path} ({', '.join(dict.fromkeys(r[1] for r in info.runs))})" for info in lists)
        return UnsupportedGraph(
            f"no repeated transformer blocks in this graph: its ModuleLists hold layers of different classes, "
            f"not blocks ({layers}). If this graph is one block of a model compiled block by block (an earlier "
            "call raised while Dynamo traced the model, and Dynamo now runs its forward eagerly), "
            "torch._dynamo.reset() restores it (cachedit_fx.compile recovers by itself)")
    held = ", ".join(f"{info.path}: {info.count} block{'s' if info.count > 1 else ''}" for info in block_lists)
    if sum(info.count for info in block_lists) == 1:
        return UnsupportedGraph(f"the model's block lists hold only one block ({held}): nothing to cache")
    if main is None:
        return UnsupportedGraph(f"no chain of two or more blocks: every block list conditions another ({held}): "
                                "nothing to cache")
    return UnsupportedGraph(
        f"no chain of two or more blocks: {main.path}, the block list carrying the most compute, holds one block "
        f"and continues into no other block list, nor another into it ({held}): nothing to cache")


def _grown_chain(nodes: list[fx.Node], lists: list[_List], main: _List) -> list[_List]:
    """``main`` and every block list that joins it (the module docstring's rules), in program order."""
    joinable = [info for info in lists if info.is_block_list]
    chain = [main]
    while True:
        start, stop = min(l.first for l in chain), max(l.last for l in chain)
        runs = sorted((r for l in chain for r in l.runs), key=lambda r: r[2])
        before = max((l for l in joinable if l.last < start), key=lambda l: l.last, default=None)
        after = min((l for l in joinable if l.first > stop), key=lambda l: l.first, default=None)
        if before is not None and _continues_into(nodes, before.runs[-1], runs[0], lists):
            chain.append(before)
        elif after is not None and _continues_into(nodes, max(runs, key=lambda r: r[3]), after.runs[0], lists):
            chain.append(after)
        else:
            inside = next((l for l in joinable if l not in chain and start < l.first < stop
                           and _interleaved_into(nodes, l, runs, lists)), None)
            if inside is None:
                return sorted(chain, key=lambda l: l.first)
            chain.append(inside)


def _block_lists(nodes: list[fx.Node]) -> list[_List]:
    """Every top-level block list of the graph with its contiguous runs, in program order."""
    stacks = [[] if n.op in ("placeholder", "output") else _stack(n) for n in nodes]
    called = {path for stack in stacks for path, _ in stack}
    # per node: (list, index, class, depth) of each member of a never-called list on its stack
    indexed = [[(m["list"], int(m["index"]), cls, depth) for depth, (path, cls) in enumerate(stack)
                if (m := _INDEXED_PATH.match(path)) and m["list"] not in called] for stack in stacks]
    classes: dict[str, Counter[str]] = {}
    for path, index, cls in {entry[:3] for entries in indexed for entry in entries}:
        classes.setdefault(path, Counter())[cls] += 1
    repeated = {path for path, counts in classes.items() if max(counts.values()) >= 2}
    owners = [entries[0][:3] if entries else None for entries in indexed]
    compound = {entries[0][0] for entries, stack in zip(indexed, stacks) if entries and entries[0][3] + 1 < len(stack)}
    _absorb_stackless(nodes, stacks, owners)
    found: dict[str, _List] = {}
    for pos, owner in enumerate(owners):
        if owner is None:
            continue
        path, index, cls = owner
        info = found.setdefault(path, _List(path, [], repeated=path in repeated, compound=path in compound))
        if info.runs and info.runs[-1][0] == index and info.runs[-1][3] == pos - 1:
            info.runs[-1] = (index, cls, info.runs[-1][2], pos)
        else:
            info.runs.append((index, cls, pos, pos))
        info.flops += node_flops(nodes[pos])
    for info in found.values():
        info.bank = len(info.runs) > 1 and not any(_reads(nodes, b, a) for a, b in zip(info.runs, info.runs[1:]))
    return sorted(found.values(), key=lambda l: l.first)


def _reads(nodes: list[fx.Node], run: tuple, earlier: tuple) -> bool:
    """Some node of block run ``run`` depends on a value defined in block run ``earlier``
    (directly or through the nodes between them)."""
    position = {n: i for i, n in enumerate(nodes[earlier[2]:run[3] + 1], start=earlier[2])}
    frontier, seen = list(nodes[run[2]:run[3] + 1]), set()
    while frontier:
        node = frontier.pop()
        for arg in node.all_input_nodes:
            where = position.get(arg)
            if where is None or arg in seen:
                continue
            if where <= earlier[3]:
                return True
            seen.add(arg)
            frontier.append(arg)
    return False


def _absorb_stackless(nodes: list[fx.Node], stacks: list[list[tuple[str, str]]],
                      owners: list[Optional[tuple[str, int, str]]]) -> None:
    """Nodes with no module stack (autocast enter / exit markers) between two nodes of one block
    belong to that block."""
    previous: Optional[tuple[str, int, str]] = None
    pending: list[int] = []
    for pos, node in enumerate(nodes):
        if node.op in ("placeholder", "output"):
            continue
        if not stacks[pos]:
            pending.append(pos)
            continue
        if pending and previous is not None and owners[pos] == previous:
            for index in pending:
                owners[index] = previous
        pending = []
        previous = owners[pos]


def _continues_into(nodes: list[fx.Node], earlier: tuple, later: tuple, lists: list[_List]) -> bool:
    """The streams entering block run ``later`` are made, through the glue between, of block
    run ``earlier``'s outputs: the largest tensor they read is one of them, and none is the output
    of another block list (two refiners joined into one stream). Values computed outside block
    lists (embeddings, a bank of per-block projections) may join in. No stream is read as a tensor
    after ``later`` (shape reads do not count): a block whose input is also read after it
    (``h + s * block(h)``: ConsisID's face cross-attention) returns an update to the stream."""
    graph = StreamGraph(nodes, [(earlier[2], earlier[3]), (later[2], later[3])])
    try:
        entries = {graph.continued_input(o) for o in graph.block_outputs(1)} - {None}
        leaves = [leaf for entry in entries for leaf in expr_leaves(graph.source(entry, earlier[3] + 1))
                  if tensor_meta(leaf) is not None]
    except UnsupportedGraph:
        return False
    if not leaves or any(graph.pos[user] > later[3] and user.op != "output" and tensor_meta(user) is not None
                         for entry in entries for user in entry.users):
        return False
    others = [run for info in lists if not info.bank for run in info.runs if run not in (earlier, later)]
    if any(run[2] <= graph.pos[leaf] <= run[3] for leaf in leaves for run in others):
        return False
    return earlier[2] <= graph.pos[largest_tensor(leaves, graph.pos)] <= earlier[3]


def _interleaved_into(nodes: list[fx.Node], info: _List, chain_runs: list[tuple], lists: list[_List]) -> bool:
    """Every block of ``info`` lies between chain blocks and carries the stream through: the chain
    block before it continues into it, and it continues by itself into the chain block after it
    (Latte's temporal blocks between its spatial ones), not as a side branch added to a stream
    that bypasses it (ConsisID's face cross-attention)."""
    for run in info.runs:
        before = next((r for r in reversed(chain_runs) if r[3] < run[2]), None)
        after = next((r for r in chain_runs if r[2] > run[3]), None)
        if (before is None or not _continues_into(nodes, before, run, lists)
                or after is not None and not _continues_into(nodes, run, after, lists)):
            return False
    return True


def _chain_blocks(nodes: list[fx.Node], chain: list[_List]) -> list[Block]:
    """The blocks of the chain's lists in program order; raises if two blocks overlap."""
    runs = sorted(((info.path, *run) for info in chain for run in info.runs), key=lambda r: r[3])
    blocks: list[Block] = []
    for path, index, cls, first, last in runs:
        if blocks and first <= blocks[-1].last:
            raise UnsupportedGraph(f"block {path}.{index} overlaps {blocks[-1].list_path}.{blocks[-1].list_index}")
        members = nodes[first:last + 1]
        blocks.append(Block(len(blocks), path, index, cls, _structure_hash(members), first, last,
                            tuple(n.name for n in members)))
    return blocks


def _check_graph_break(gm: fx.GraphModule, nodes: list[fx.Node], blocks: list[Block]) -> None:
    """Raise if the graph ends in a graph break inside a chain block or inside the loop that
    calls a chain list's blocks (the rest of the chain then lies in another graph)."""
    if not ends_in_graph_break(gm):
        return
    held = f"{blocks[0].list_path}.{blocks[0].list_index}..{blocks[-1].list_path}.{blocks[-1].list_index}"
    user_stack = [(f.filename, f.lineno) for f in (getattr(gm.compile_subgraph_reason, "user_stack", None) or [])]
    call_sites = set()
    for block in blocks:
        frame = _FRAME.search(nodes[block.first].meta.get("stack_trace") or "")
        if frame is None:
            raise UnsupportedGraph(f"graph break after blocks {held}; cannot tell whether it splits the chain")
        call_sites.add((frame["file"], int(frame["line"])))
    if not user_stack or len(user_stack) > 1 and user_stack[0] in call_sites:
        raise UnsupportedGraph(f"graph break inside a block of the chain (blocks {held} in this graph)")
    file, line = user_stack[0]
    for site_file, site_line in call_sites:
        if site_file != file:
            raise UnsupportedGraph(f"graph break outside the chain's forward after blocks {held}")
        spans = [span for span in _loops(site_file) if span[0] <= site_line <= span[1]]
        first_line, last_line = min(spans, key=lambda s: s[1] - s[0], default=(site_line, site_line))  # innermost
        if first_line <= line <= last_line:
            raise UnsupportedGraph(f"graph break inside the loop over the chain's blocks (blocks {held} in this "
                                   "graph, the rest in the next)")


@functools.lru_cache(maxsize=64)
def _loops(file: str) -> tuple[tuple[int, int], ...]:
    """Line spans of the ``for`` / ``while`` loops of ``file``."""
    try:
        tree = ast.parse("".join(linecache.getlines(file)))
    except (SyntaxError, ValueError):
        return ()
    return tuple((n.lineno, n.end_lineno or n.lineno) for n in ast.walk(tree) if isinstance(n, (ast.For, ast.While)))
