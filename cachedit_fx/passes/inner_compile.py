"""Compile one graph with the inner backend ("eager", "aot_eager" or Inductor with the
compile's ``mode`` and ``inductor_options``), from the fake example values on its placeholders.

``DynamoInputs`` carries what Dynamo recorded about the whole graph's inputs onto each piece,
so Inductor marks a piece's parameters static as it would for the whole graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch.fx as fx

from cachedit_fx.config import BackendSettings


@dataclass(frozen=True)
class DynamoInputs:
    """What Dynamo records about its graph's inputs for AOTAutograd and Inductor: the graph's
    meta (``dynamo_compile_id``), its parameter sources and each placeholder's source and tensor
    dict. Carried onto every piece (as DDPOptimizer does for its buckets), Inductor finds the
    parameters among a piece's inputs and marks them static, so CUDA graphs never copy weights."""

    meta: dict[str, Any]
    param_name_to_source: dict[str, Any]
    sources: dict[str, Any]
    tensor_dicts: dict[str, dict[str, Any]]
    examples: dict[str, Any]
    """The inputs Dynamo handed the backend, by placeholder name, while the compile runs
    (``release_examples`` drops them): a piece compiled from them rather than from the fake
    values in meta keeps the scalars Dynamo read from them (``.item()`` of a float input under
    ``dynamic=True``) known instead of data-dependent."""

    @staticmethod
    def of(gm: fx.GraphModule, example_inputs: Sequence[Any] = ()) -> "DynamoInputs":
        placeholders = list(gm.graph.find_nodes(op="placeholder"))
        return DynamoInputs(
            meta=dict(gm.meta), param_name_to_source=dict(getattr(gm, "_param_name_to_source", None) or {}),
            sources={n.name: getattr(n, "_dynamo_source", None) for n in placeholders},
            tensor_dicts={n.name: n.meta["tensor_dict"] for n in placeholders if "tensor_dict" in n.meta},
            examples={n.name: value for n, value in zip(placeholders, example_inputs)})

    def release_examples(self) -> None:
        self.examples.clear()

    def carry_onto(self, piece: fx.GraphModule) -> None:
        if "dynamo_compile_id" not in self.meta:
            return
        piece.meta.update({k: v for k, v in self.meta.items() if k not in piece.meta})
        piece._param_name_to_source = self.param_name_to_source
        for node in piece.graph.find_nodes(op="placeholder"):
            node._dynamo_source = self.sources.get(node.name)
            if node.name in self.tensor_dicts:
                node.meta["tensor_dict"] = self.tensor_dicts[node.name]
            elif node.meta.get(STATIC_WEIGHT_META_KEY):
                node.meta["tensor_dict"] = {"_dynamo_static_input_type": "unguarded"}


STATIC_WEIGHT_META_KEY = "cachedit_fx.static_weight"
"""Placeholder meta flag of weights the passes add (tensor-parallel shards): static inputs."""


def uses_cuda_graphs(settings: BackendSettings) -> bool:
    """Inductor captures CUDA graphs for this compile (``mode="reduce-overhead"`` or
    ``"max-autotune"``, or ``triton.cudagraphs`` in ``inductor_options``)."""
    if settings.inner_backend != "inductor":
        return False
    return bool(inductor_patches(settings).get("triton.cudagraphs"))


def inductor_patches(settings: BackendSettings) -> dict[str, Any]:
    """Inductor's config for this compile: the options of ``mode``, then ``inductor_options``."""
    from torch._inductor import list_mode_options

    return {**(list_mode_options(settings.mode) if settings.mode else {}), **settings.inductor_options}


def compile_piece(piece: fx.GraphModule, settings: BackendSettings,
                  dynamo_inputs: Optional[DynamoInputs] = None) -> Callable[..., Any]:
    """Compile one piece with ``settings.inner_backend``, from Dynamo's own inputs where the
    piece takes one (``DynamoInputs.examples``), else from its placeholders' fake values."""
    if settings.inner_backend == "eager":
        return piece
    example_inputs = piece_examples(piece, dynamo_inputs)
    if settings.inner_backend == "aot_eager":
        from torch._dynamo.backends.debugging import aot_eager

        return aot_eager(piece, example_inputs)
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(piece, example_inputs, config_patches=inductor_patches(settings) or None)


def piece_examples(piece: fx.GraphModule, dynamo_inputs: Optional[DynamoInputs]) -> list[Any]:
    """The inputs to compile ``piece`` from: Dynamo's own where the piece takes one, else its
    placeholders' fake values."""
    examples = dynamo_inputs.examples if dynamo_inputs is not None else {}
    return [examples[n.name] if n.name in examples else example_value(n)
            for n in piece.graph.find_nodes(op="placeholder")]


def example_value(node: fx.Node) -> Any:
    value = node.meta.get("example_value", node.meta.get("val"))
    if value is None:
        raise AssertionError(f"piece input {node.name} has no example value")
    return value
