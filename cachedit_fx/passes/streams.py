"""Stream analysis over a block chain: what a region of blocks continues, as expressions.

A stream is a value carried from block to block (hidden states, encoder hidden states). The
source of a value at an earlier point is what the graph computes there when every chain block in
between is the identity on its streams and the glue between blocks (``cat(text, image)``, a
control hint or a side block's cross-attention added to the stream) runs as written:

  * a block output continues the block input of its shape and dtype it reaches first walking
    back through the block (the residual path), preferring inputs no other block reads (a
    position embedding added in every block is no stream); among equally near ones, the one
    whose tokens the output slices back out of a concatenation (text and image of equal length),
    else the one the previous block defines (not a long skip connection), else an error;
  * a glue node is re-applied (``Replay``) to the sources of its operands; glue that writes in
    place cannot be (``UnsupportedGraph``).

``StreamGraph.source(value, cut)`` is an ``Expr`` over values defined before position ``cut``:
the value itself, or a ``Replay`` over such values, whose ops ``materialize`` inserts.
"""

from collections import deque
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch.fx as fx

from cachedit_fx.passes.alias_classes import op_name, writes_in_place
from cachedit_fx.passes.compute import numel_hint
from cachedit_fx.passes.dataflow import is_module_state, live_across, nearest_ancestors, same_layout, tensor_meta
from cachedit_fx.passes.errors import UnsupportedGraph


@dataclass(frozen=True)
class Replay:
    """Glue node ``node`` re-applied with each of its graph arguments in ``args`` replaced by that
    argument's source."""

    node: fx.Node
    args: tuple[tuple[fx.Node, "Expr"], ...]

    def leaves(self) -> list[fx.Node]:
        return list(dict.fromkeys(leaf for _, source in self.args for leaf in expr_leaves(source)))

    def __str__(self) -> str:
        return f"{op_name(self.node)}({', '.join(str(s) if isinstance(s, Replay) else s.name for _, s in self.args)})"


Expr = Union[fx.Node, Replay]


def expr_leaves(expr: Expr) -> list[fx.Node]:
    return [expr] if isinstance(expr, fx.Node) else expr.leaves()


@dataclass(frozen=True)
class StreamPair:
    """A value a region hands on (``middle_output``) and the node holding what it continues
    (``head_value``: a region input, or the glue between blocks re-applied to region inputs)."""

    middle_output: str
    head_value: str


class StreamGraph:
    """Stream sources over ``nodes`` (one graph, program order) whose chain blocks occupy the
    position ranges ``block_ranges`` (first, last), inclusive."""

    def __init__(self, nodes: Sequence[fx.Node], block_ranges: Sequence[tuple[int, int]]) -> None:
        self.nodes = list(nodes)
        self.pos = {n: i for i, n in enumerate(self.nodes)}
        self.block_ranges = list(block_ranges)
        self.block_of = {node: index for index, (first, last) in enumerate(self.block_ranges)
                         for node in self.nodes[first:last + 1]}
        self.chain_start = self.block_ranges[0][0]
        self.chain_stop = self.block_ranges[-1][1] + 1
        self._continued: dict[fx.Node, Optional[fx.Node]] = {}
        self._sources: dict[tuple[fx.Node, int], Expr] = {}

    def block_inputs(self, index: int) -> list[fx.Node]:
        """Values block ``index`` reads that are defined before it (module state excluded)."""
        first, last = self.block_ranges[index]
        return list(dict.fromkeys(arg for node in self.nodes[first:last + 1] for arg in node.all_input_nodes
                                  if self.pos[arg] < first and not is_module_state(arg)))

    def block_outputs(self, index: int) -> list[fx.Node]:
        """Tensors block ``index`` defines that are used after it."""
        first, last = self.block_ranges[index]
        return [n for n in live_across(self.nodes, self.pos, last + 1, first) if tensor_meta(n) is not None]

    def continued_input(self, output: fx.Node) -> Optional[fx.Node]:
        """The input of ``output``'s block that ``output`` continues (None: no input of its layout;
        module docstring); raises ``UnsupportedGraph`` when equally near inputs stay ambiguous."""
        if output not in self._continued:
            index = self.block_of[output]
            inside = lambda n: self.block_of.get(n) == index  # noqa: E731
            candidates = {n for n in self.block_inputs(index) if same_layout(n, output)}
            own = {n for n in candidates if not any(self.block_of.get(u, index) != index for u in n.users)}
            candidates = own or candidates
            nearest = nearest_ancestors(output, candidates, inside) if candidates else []
            if len(nearest) > 1:
                segment = _concatenated_input(output, inside)
                recent = self.block_ranges[index - 1][0] if index > 0 else self.chain_start
                nearest = [segment] if segment in nearest else [n for n in nearest if self.pos[n] >= recent]
                if len(nearest) != 1:
                    raise UnsupportedGraph(
                        f"cannot tell which input of block {index} {output.name} continues: "
                        f"{sorted(n.name for n in candidates)} are equally near and alike")
            self._continued[output] = nearest[0] if nearest else None
        return self._continued[output]

    def source(self, value: Expr, cut: int) -> Expr:
        """``value`` (a node, or a replay over nodes) as an expression over values defined before
        position ``cut``, every chain block at or after ``cut`` read as the identity on its streams."""
        if isinstance(value, Replay):
            return Replay(value.node, tuple((arg, self.source(source, cut)) for arg, source in value.args))
        if (value, cut) not in self._sources:
            self._sources[value, cut] = self._source(value, cut)
        return self._sources[value, cut]

    def _source(self, value: fx.Node, cut: int) -> Expr:
        if self.pos[value] < cut:
            return value
        if value in self.block_of:
            continued = self.continued_input(value)
            if continued is None:
                raise UnsupportedGraph(
                    f"block output {value.name} continues no input of its block with the same shape and dtype")
            return self.source(continued, cut)
        if not self.chain_start <= self.pos[value] < self.chain_stop:
            raise UnsupportedGraph(f"{value.name} is not defined by the block chain")
        if writes_in_place(value):
            raise UnsupportedGraph(f"{value.name} between blocks writes in place; it cannot be re-applied when the "
                                   "blocks are skipped")
        return Replay(value, tuple((a, self.source(a, cut)) for a in value.all_input_nodes))


def _concatenated_input(output: fx.Node, inside: Callable[[fx.Node], bool]) -> Optional[fx.Node]:
    """The ``cat`` operand whose segment ``output`` takes back out: ``output`` is a slice (or a
    ``split`` piece) of a value along one dim, and walking back through ``inside`` nodes of that
    value's shape reaches a ``cat`` along the same dim whose k-th segment spans exactly the
    slice. None when ``output`` is not such a slice or the bounds are not static."""
    selected = _slice_of(output)
    if selected is None:
        return None
    base, dim, start, stop = selected
    shape = list(tensor_meta(base).shape)
    frontier, seen = [base], {base}
    while frontier:
        following = []
        for node in frontier:
            if node.op == "call_function" and op_name(node) in ("cat", "concat", "concatenate"):
                cat_dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
                if cat_dim % len(shape) == dim:
                    offset = 0
                    for operand in node.args[0]:
                        size = tensor_meta(operand).shape[dim] if isinstance(operand, fx.Node) else None
                        if not isinstance(size, int):
                            return None
                        if (offset, offset + size) == (start, stop):
                            return operand
                        offset += size
                    return None
            for arg in node.all_input_nodes:
                meta = tensor_meta(arg)
                if arg not in seen and inside(arg) and meta is not None and list(meta.shape) == shape:
                    seen.add(arg)
                    following.append(arg)
        frontier = following
    return None


def _slice_of(node: fx.Node) -> Optional[tuple[fx.Node, int, int, int]]:
    """``(base, dim, start, stop)`` when ``node`` is ``base`` sliced along one dim (static bounds),
    by indexing or as a piece of ``split`` / ``split_with_sizes``."""
    if node.op != "call_function" or op_name(node) != "getitem" or not isinstance(node.args[0], fx.Node):
        return None
    base, index = node.args[0], node.args[1]
    if isinstance(index, int) and op_name(base) in ("split", "split_with_sizes"):
        return _split_piece(base, index)
    meta = tensor_meta(base)
    items = index if isinstance(index, tuple) else (index,)
    cuts = [(d, item) for d, item in enumerate(items) if isinstance(item, slice) and item != slice(None)]
    if meta is None or len(cuts) != 1 or any(not isinstance(i, slice) and i is not Ellipsis for i in items):
        return None
    dim, item = cuts[0]
    size = meta.shape[dim]
    if (not isinstance(size, int) or item.step not in (None, 1)
            or not all(b is None or isinstance(b, int) for b in (item.start, item.stop))):
        return None
    start, stop, _ = item.indices(size)
    return base, dim, start, stop


def _split_piece(split: fx.Node, piece: int) -> Optional[tuple[fx.Node, int, int, int]]:
    source = split.args[0]
    meta = tensor_meta(source) if isinstance(source, fx.Node) else None
    if meta is None:
        return None
    sizes = split.args[1] if len(split.args) > 1 else split.kwargs.get("split_size_or_sections",
                                                                        split.kwargs.get("split_sizes"))
    dim = (split.args[2] if len(split.args) > 2 else split.kwargs.get("dim", 0)) % meta.dim()
    total = meta.shape[dim]
    if not isinstance(total, int):
        return None
    if isinstance(sizes, int):
        sizes = [sizes] * -(-total // sizes)
    if not isinstance(sizes, (list, tuple)) or not all(isinstance(v, int) for v in sizes) or piece >= len(sizes):
        return None
    start = sum(sizes[:piece])
    return source, dim, start, start + sizes[piece]


def materialize(graph: fx.Graph, expr: Expr, before: fx.Node, made: dict[Replay, fx.Node]) -> fx.Node:
    """The node computing ``expr``: a leaf itself, or copies of the replayed glue ops inserted
    before ``before`` (``made`` memoises replays already inserted)."""
    if isinstance(expr, fx.Node):
        return expr
    if expr not in made:
        mapping = {arg: materialize(graph, source, before, made) for arg, source in expr.args}
        with graph.inserting_before(before):
            copy = graph.node_copy(expr.node, lambda a: mapping.get(a, a))
        copy.name = graph._graph_namespace.create_name(f"{expr.node.name}_replayed", None)
        copy.meta = {k: v for k, v in expr.node.meta.items() if k in ("example_value", "val", "stack_trace",
                                                                      "tensor_meta")}
        made[expr] = copy
    return made[expr]


def hidden_exit(nodes: list[fx.Node], pos: dict[fx.Node, int], chain_start: int, chain_stop: int) -> Expr:
    """The chain's hidden output: the chain-defined tensor used after the chain that is fewest
    uses away from the graph output; when several are equally near, the one op after the chain
    that joins them all (``cat([text, image])`` before the final norm), else the largest (LTX-2's
    video output beside its audio output)."""
    exits = [n for n in live_across(nodes, pos, chain_stop, chain_start) if tensor_meta(n) is not None]
    if not exits:
        raise UnsupportedGraph("no tensor leaves the block chain")
    distance = {n: _uses_to_output(n, nodes[-1]) for n in exits}
    nearest = [n for n in exits if distance[n] == min(distance.values())]
    if len(nearest) == 1:
        return nearest[0]
    joins = [u for u in nearest[0].users if pos[u] >= chain_stop and all(n in u.all_input_nodes for n in nearest)]
    if len(joins) == 1:
        return Replay(joins[0], tuple((a, a) for a in joins[0].all_input_nodes))
    sizes = {n: numel_hint(tensor_meta(n)) for n in nearest}
    largest = [n for n in nearest if sizes[n] == max(sizes.values())]
    if len(largest) == 1:
        return largest[0]
    raise UnsupportedGraph(f"cannot tell the hidden stream among chain outputs {[n.name for n in nearest]}")


def _uses_to_output(start: fx.Node, output: fx.Node) -> float:
    queue, seen = deque([(start, 0)]), {start}
    while queue:
        node, depth = queue.popleft()
        if node is output:
            return depth
        for user in node.users:
            if user not in seen:
                seen.add(user)
                queue.append((user, depth + 1))
    return float("inf")
