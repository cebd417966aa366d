"""The one program run as its compiled parts around the ``torch.cond``
(``passes/split_at_cond.py``): the part before, the ``cond`` dispatched at run time over the
compiled branches, the part after.

Recorded by ``cuda_graph_trees``, the ``cond`` is captured as a conditional node
(``torch/_higher_order_ops/cudagraph_conditional_nodes.py``): a whole step replays as one CUDA
graph with no host read. Outside a capture the ``cond`` reads its predicate on the host.

Invariants: the parts are pure but for ``after``'s writes into the state inputs; both branches
return fresh contiguous tensors of equal shapes (the conditional node copies the false
branch's outputs into the true branch's).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

Part = Callable[..., Sequence[torch.Tensor]]


class CondParts:
    """``(*inputs) -> outputs`` of the split graph, each part a compiled callable taking
    its inputs as positional arguments (``after`` may be the ``CondParts`` of a graph's later
    ``cond``s); ``positions``: ``CondSplit.positions()``."""

    def __init__(self, positions: tuple[int, tuple[int, ...], tuple[int, ...]], before: Part, true_branch: Part,
                 false_branch: Part, after: Part) -> None:
        self.before, self.true_branch, self.false_branch, self.after = before, true_branch, false_branch, after
        self.predicate, self.operands, self.after_inputs = positions

    def __call__(self, *inputs: torch.Tensor) -> Any:
        values = [*inputs, *self.before(*inputs)]
        values.extend(torch.ops.higher_order.cond(values[self.predicate], self.true_branch, self.false_branch,
                                                  [values[k] for k in self.operands]))
        return self.after(*(values[k] for k in self.after_inputs))


def cuda_graph_trees(program: Callable[..., Any], example_inputs: Sequence[Any], static_input_indices: Sequence[int],
                     device_index: int) -> Callable[..., Any]:
    """``program`` recorded and replayed by Inductor's CUDA-graph trees (inputs outside
    ``static_input_indices`` are copied into the graph's own buffers; the static ones, weights
    and the state written in place, are read where they are)."""
    from torch._inductor.cudagraph_trees import cudagraphify_impl

    def boxed(inputs: list[Any]) -> Any:
        arguments = list(inputs)
        inputs.clear()
        return program(*arguments)

    recorded = cudagraphify_impl(boxed, list(example_inputs), tuple(static_input_indices), device_index=device_index,
                                 is_backward=False, is_inference=True)
    return lambda *inputs: recorded(list(inputs))
