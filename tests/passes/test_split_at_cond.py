"""``split_at_cond`` and the ``CondParts`` that runs its parts: on a small program
with one ``torch.cond`` and a state write, traced by AOTAutograd as the CUDA-graph lowering
traces the in-graph step, the parts run uncompiled give the program's outputs and state
writes for either branch; a graph without exactly one ``cond`` is refused by name."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
from torch._dynamo.backends.common import aot_autograd

from cachedit_fx.passes.split_at_cond import NoCond, holds_cond, split_at_cond
from cachedit_fx.runtime.cond_parts import CondParts


def step(state: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    scale = x.abs().mean()
    out = torch.cond(x.sum() > 0, lambda x, w, s: (x * s).contiguous(), lambda x, w, s: x @ w, (x, w, scale))
    state.add_(out.sum().reshape(1))
    return out + scale


def _compiled_in_parts(splits: list) -> callable:
    def compile_parts(gm: fx.GraphModule, inputs):
        split = split_at_cond(gm)
        splits.append(split)
        return CondParts(split.positions(), split.before, split.true_branch, split.false_branch, split.after)

    backend = aot_autograd(fw_compiler=compile_parts, keep_inference_input_mutations=True)
    return torch.compile(step, backend=backend, fullgraph=True)


def test_parts_around_the_cond_reproduce_the_program_for_either_branch():
    splits: list = []
    program = _compiled_in_parts(splits)
    w = torch.randn(4, 4)
    for sign in (1.0, -1.0, 1.0):
        x = sign * torch.rand(4, 4)
        state, expected_state = torch.zeros(1), torch.zeros(1)
        with torch.no_grad():
            got = program(state, x, w)
            want = step(expected_state, x, w)
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(state, expected_state)
    assert len(splits) == 1
    split = splits[0]
    assert split.predicate in split.crossing
    assert not any(n.target is torch.ops.higher_order.cond for n in split.before.graph.nodes)
    assert any(n.target is torch.ops.aten.copy_.default for n in split.after.graph.nodes), "the state write"


def pair_step(x: torch.Tensor) -> torch.Tensor:
    first, second = torch.cond(x.sum() > 0, lambda x: (x + 1, x * 2), lambda x: (x - 1, x * 3), (x,))
    return second + 1  # the cond's first output is never read


def test_a_cond_output_nobody_reads_leaves_the_others_wired_to_their_own_outputs():
    splits: list = []

    def compile_parts(gm: fx.GraphModule, inputs):
        split = split_at_cond(gm)
        splits.append(split)
        return CondParts(split.positions(), split.before, split.true_branch, split.false_branch, split.after)

    program = torch.compile(pair_step, backend=aot_autograd(fw_compiler=compile_parts), fullgraph=True)
    for sign in (1.0, -1.0):
        x = sign * torch.rand(3)
        with torch.no_grad():
            torch.testing.assert_close(program(x), pair_step(x))
    assert splits[0].cond_results == (1,)


def two_conds(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    h = torch.cond(x.sum() > 0, lambda x, w: (x @ w).contiguous(), lambda x, w: (x + 1).contiguous(), (x, w))
    g = torch.cond(h.abs().amax() > 2, lambda h, x: (h * x).contiguous(), lambda h, x: (h - x).contiguous(), (h, x))
    return g + h


def test_a_program_with_a_cond_per_block_is_cut_at_each_in_turn():
    """DBPrune's layout: the part after the first ``cond`` holds the next one and is cut again;
    the nested parts reproduce the program for every combination of branches."""
    def compile_split(gm: fx.GraphModule):
        split = split_at_cond(gm)
        after = compile_split(split.after) if holds_cond(split.after) else split.after
        return CondParts(split.positions(), split.before, split.true_branch, split.false_branch, after)

    program = torch.compile(two_conds, backend=aot_autograd(fw_compiler=lambda gm, _: compile_split(gm)),
                            fullgraph=True)
    torch.manual_seed(0)
    w = torch.eye(3) * 4
    taken = set()
    for sign, scale in ((1.0, 1.0), (-1.0, 5.0), (1.0, 0.01), (-1.0, 0.01)):
        x = sign * scale * torch.rand(3, 3)
        with torch.no_grad():
            torch.testing.assert_close(program(x, w), two_conds(x, w))
        h = x @ w if x.sum() > 0 else x + 1
        taken.add((bool(x.sum() > 0), bool(h.abs().amax() > 2)))
    assert len(taken) == 4, taken


def test_a_graph_without_a_cond_is_refused():
    gm = fx.symbolic_trace(lambda x: x + 1)
    with pytest.raises(NoCond, match="found none"):
        split_at_cond(gm)
