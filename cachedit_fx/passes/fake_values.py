"""Recompute every node's fake ``example_value`` after a rewrite changed shapes.

Assumes: placeholders carry fake example values from one ``FakeTensorMode`` (Dynamo's).
Guarantees: each call node's ``meta["example_value"]`` is what its op returns on those fakes
(nothing real runs); later passes and the inner backend see the rewritten shapes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx


def fake_mode_of(gm: fx.GraphModule) -> Any:
    """The ``FakeTensorMode`` of the placeholders' example values."""
    for node in gm.graph.nodes:
        mode = getattr(node.meta.get("example_value"), "fake_mode", None)
        if node.op == "placeholder" and mode is not None:
            return mode
    raise AssertionError("graph placeholders carry no fake example values")


def refresh_example_values(gm: fx.GraphModule) -> None:
    mode = fake_mode_of(gm)
    values: dict[fx.Node, Any] = {}
    with mode:
        for node in gm.graph.nodes:
            if node.op == "output":
                continue
            args, kwargs = fx.map_arg((node.args, node.kwargs), lambda n: values[n])
            if node.op == "placeholder":
                result = node.meta["example_value"]
            elif node.op == "call_function":
                result = node.target(*args, **kwargs)
            elif node.op == "call_method":
                result = getattr(args[0], node.target)(*args[1:], **kwargs)
            elif node.op == "get_attr":
                held = getattr(gm, node.target)  # a tensor, or a subgraph (flex attention's score and mask mods)
                result = mode.from_tensor(held, static_shapes=True) if isinstance(held, torch.Tensor) else held
            else:
                raise AssertionError(f"cannot refresh {node.op} {node.name}")
            values[node] = node.meta["example_value"] = result
