"""``cachedit_fx.export``: a cached transformer as one ``torch.export`` program.

The forward is captured by Dynamo, cut by the backend's passes and its middle replaced by the
in-graph DBCache step. Parameters, buffers and the cache state (``in_graph_state.*``) become the
program's state; the call's tensor arguments stay inputs, by name, plus ``RESET_INPUT`` (nonzero:
a new generation). An AOTInductor ``package`` of it runs in a process that imports only torch.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Optional

import torch
import torch.fx as fx

from cachedit_fx.config import CAPTURE_SETTINGS, BackendSettings, parse_options
from cachedit_fx.passes.dump import GraphDumper
from cachedit_fx.passes.errors import UnsupportedGraph
from cachedit_fx.passes.insert_in_graph_step import RESET_INPUT, STATE_MODULE
from cachedit_fx.passes.pass_list import build_pass_list
from cachedit_fx.runtime.dbcache_step import LOGGED_STATE, PRUNE_LOGGED_STATE, logged_summary
from cachedit_fx.runtime.stats import CacheSummary

STATE_PREFIX = f"{STATE_MODULE}."
"""Prefix of the cache-state buffers in the exported program's state dict."""


def export(model: torch.nn.Module, kwargs: dict[str, Any], options: Optional[dict[str, Any]] = None
           ) -> torch.export.ExportedProgram:
    """Export ``model(**kwargs)`` (tensor arguments are inputs, others constants) with DBCache
    decided inside the program. ``options``: the backend's cache options (separate-CFG streams
    included; no calibrator, no DBPrune). Raises ``ValueError`` for an option the
    in-graph step does not implement and ``UnsupportedGraph`` for a forward it cannot cut."""
    settings = parse_options({**(options or {}), "inner_backend": "eager"})
    if settings.parallelism is not None:
        raise ValueError("export: tensor- and context-parallel programs are not exported (drop tp_size / ulysses_size)")
    gm, inputs = _captured_program(model, kwargs, settings)
    example = {name: kwargs[name] for name in inputs}
    example[RESET_INPUT] = torch.zeros(2, dtype=torch.int64, device=next(iter(model.parameters())).device)
    with torch.no_grad():
        return torch.export.export(gm, (), example, strict=False)


def package(program: torch.export.ExportedProgram, path: str) -> str:
    """Compile ``program`` with AOTInductor into the ``.pt2`` package ``path`` (load it with
    ``torch._inductor.aoti_load_package``, in any process). Compiles a copy, so running
    ``program.module()`` before or after never bakes its mutated state into the package."""
    from torch._inductor import aoti_compile_and_package

    return aoti_compile_and_package(copy.deepcopy(program), package_path=path)


def cache_state(program: torch.export.ExportedProgram) -> dict[str, torch.Tensor]:
    """A fresh copy of the program's cache-state buffers, by their names in the program: hand
    it to a loaded package (``load_constants(..., user_managed=True)``) and the package runs on
    it, so its statistics can be read (``exported_summary``) and a reset written."""
    return {name: value.clone() for name, value in program.state_dict.items() if name.startswith(STATE_PREFIX)}


def exported_summary(state: Any, stream: str = "default") -> CacheSummary:
    """The latest generation's statistics of an exported program (of ``stream``: "default", or
    "uncond" with separate CFG): ``state`` is the ``ExportedProgram``, its ``module()``, or the
    cache-state dict a package runs on."""
    if isinstance(state, torch.export.ExportedProgram):
        state = state.state_dict
    elif isinstance(state, torch.nn.Module):
        state = dict(state.named_buffers())
    missing = [STATE_PREFIX + name for name in LOGGED_STATE if STATE_PREFIX + name not in state]
    if missing:
        raise ValueError(f"no cache state of an exported program: {', '.join(missing)} missing")
    return logged_summary({name: state[STATE_PREFIX + name] for name in LOGGED_STATE + PRUNE_LOGGED_STATE
                           if STATE_PREFIX + name in state}, stream)


def _captured_program(model: torch.nn.Module, kwargs: dict[str, Any], settings: BackendSettings
                      ) -> tuple[fx.GraphModule, list[str]]:
    """Dynamo's graph of ``model(**kwargs)``, cut and rewritten while Dynamo's input metadata is
    still on it (it is dropped once the backend returns), and the names of its call inputs."""
    captured: list[tuple[fx.GraphModule, list[str]]] = []

    def capture(gm: fx.GraphModule, example_inputs: list[Any]) -> Any:
        sources = {node.name: (getattr(node, "_dynamo_source", None), example)
                   for node, example in zip(gm.graph.find_nodes(op="placeholder"), example_inputs)}
        passes = build_pass_list(settings, target="export")
        program = passes.run(copy.deepcopy(gm), settings, GraphDumper(settings.dump_dir))
        captured.append((program, _as_program_state(program, sources)))
        return gm.forward

    compiled = torch.compile(model, backend=capture, fullgraph=True, dynamic=False)
    try:
        with torch.no_grad(), torch._dynamo.config.patch(**CAPTURE_SETTINGS):
            compiled(**kwargs)
    except torch._dynamo.exc.BackendCompilerFailed as failed:
        raise failed.inner_exception from None
    return captured[-1]


def _as_program_state(gm: fx.GraphModule, sources: dict[str, tuple[Any, Any]]) -> list[str]:
    """Turn lifted module state into attributes of ``gm`` (parameters and buffers of the
    program) and name the call inputs after the forward's arguments; returns the input names.
    ``sources``: placeholder name -> (Dynamo source, example value)."""
    names = []
    for node in list(gm.graph.find_nodes(op="placeholder")):
        if node.target == RESET_INPUT:
            continue
        source, example = sources[node.name]
        argument = re.fullmatch(r"L(?:\['kwargs'\])?\['(\w+)'\]", source.name) if source is not None else None
        if argument is not None and argument.group(1) != "self":
            node.target = node.name = argument.group(1)
            names.append(argument.group(1))
            continue
        if not isinstance(example, torch.Tensor):
            raise UnsupportedGraph(f"graph input {source.name if source else node.name} is neither a call "
                                   "argument nor a tensor of the module")
        attribute = f"state_{len(names)}_{node.name}"[:200]
        if isinstance(example, torch.nn.Parameter):
            gm.register_parameter(attribute, example)
        else:
            gm.register_buffer(attribute, example)
        with gm.graph.inserting_before(node):
            getter = gm.graph.get_attr(attribute)
        getter.meta.update(node.meta)
        node.replace_all_uses_with(getter)
        gm.graph.erase_node(node)
    gm.recompile()
    return names
