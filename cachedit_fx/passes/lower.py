"""Compile every piece of the piecewise program with the inner backend.

Assumes: a parent graph whose ``call_module`` targets are pieces (``GraphModule``s whose
placeholders carry Dynamo's fake ``example_value``), possibly wrapped in a branch module
(``CacheBranch``, ``PruneBranch``: its ``piece`` is compiled in place).
Guarantees: each piece is compiled once, from fake inputs in Dynamo's fake mode (nothing runs);
the parent graph and the branch keep their structure.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.fx as fx

from cachedit_fx.config import BackendSettings


class CompiledPiece(torch.nn.Module):
    """A compiled piece callable as a module (the inner backends' results take ``*args``)."""

    def __init__(self, name: str, compiled: Callable[..., Any]) -> None:
        super().__init__()
        self.piece_name = name
        self.compiled = compiled

    def forward(self, *args: Any) -> Any:
        return self.compiled(*args)


def lower(parent: fx.GraphModule, settings: BackendSettings) -> fx.GraphModule:
    for owner, name, piece in _pieces(parent):
        setattr(owner, name, CompiledPiece(name, compile_piece(piece, settings)))
    return parent


def compile_piece(piece: fx.GraphModule, settings: BackendSettings) -> Callable[..., Any]:
    """Compile one piece with ``settings.inner_backend``."""
    if settings.inner_backend == "eager":
        return piece
    example_inputs = [_example(n) for n in piece.graph.nodes if n.op == "placeholder"]
    if settings.inner_backend == "aot_eager":
        from torch._dynamo.backends.debugging import aot_eager

        return aot_eager(piece, example_inputs)
    from torch._inductor import list_mode_options
    from torch._inductor.compile_fx import compile_fx

    patches = {**(list_mode_options(settings.mode) if settings.mode else {}), **settings.inductor_options}
    return compile_fx(piece, example_inputs, config_patches=patches or None)


def _pieces(parent: fx.GraphModule) -> list[tuple[torch.nn.Module, str, fx.GraphModule]]:
    found = []
    for node in parent.graph.nodes:
        if node.op != "call_module":
            continue
        module = parent.get_submodule(node.target)
        if isinstance(module, fx.GraphModule):
            found.append((parent, node.target, module))
        elif isinstance(getattr(module, "piece", None), fx.GraphModule):
            found.append((module, "piece", module.piece))
    return found


def _example(node: fx.Node) -> Any:
    value = node.meta.get("example_value", node.meta.get("val"))
    if value is None:
        raise AssertionError(f"piece input {node.name} has no example value")
    return value
