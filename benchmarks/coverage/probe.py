"""``python -m benchmarks.coverage.probe CLASS [CLASS ...]``: check a class spec before the
matrix uses it: the tiny model builds, its forward runs eagerly on the synthesised inputs (finite,
deterministic), the forward's required arguments are all given, and what Dynamo captures
(graphs, break reasons). Nothing is cached or compiled by cachedit."""

from __future__ import annotations

import argparse
import inspect
import time
from typing import Any

import torch

from cachedit_fx.example_inputs import SPECS, tiny_model


def block_lists(model: torch.nn.Module) -> dict[str, tuple[str, int]]:
    """``ModuleList`` paths holding two or more modules of one class -> (class, count)."""
    found = {}
    for path, module in model.named_modules():
        if type(module) is torch.nn.ModuleList and len(module) >= 2:
            kinds = {type(child).__name__ for child in module}
            if len(kinds) == 1:
                found[path] = (kinds.pop(), len(module))
    return found


def first_output(result: Any) -> Any:
    return result[0] if isinstance(result, (tuple, list)) else getattr(result, "sample", result)


def probe(class_name: str) -> dict[str, Any]:
    spec = SPECS[class_name]
    start = time.perf_counter()
    model, inputs = tiny_model(class_name)
    report: dict[str, Any] = {"class": class_name, "build_s": round(time.perf_counter() - start, 2),
                              "params": sum(p.numel() for p in model.parameters()),
                              "block_lists": block_lists(model)}
    signature = inspect.signature(model.forward)
    required = [name for name, p in signature.parameters.items()
                if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    report["missing_required"] = [name for name in required if name not in inputs]
    report["unknown_inputs"] = [name for name in inputs if name not in signature.parameters]
    report["latent_given"] = spec.latent in inputs
    report["timestep_given"] = spec.timestep is None or spec.timestep in inputs
    with torch.no_grad():
        start = time.perf_counter()
        first = first_output(model(**inputs, return_dict=False))
        report["forward_s"] = round(time.perf_counter() - start, 3)
        again = first_output(model(**inputs, return_dict=False))
    report["output"] = tuple(first.shape) if torch.is_tensor(first) else type(first).__name__
    report["latent"] = tuple(inputs[spec.latent].shape) if torch.is_tensor(inputs.get(spec.latent)) else None
    report["finite"] = bool(torch.isfinite(first).all()) if torch.is_tensor(first) else None
    report["deterministic"] = bool(torch.equal(first, again)) if torch.is_tensor(first) else None
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(model)(**inputs, return_dict=False)
    report["graphs"] = explained.graph_count
    report["breaks"] = [str(b.reason).splitlines()[0][:200] for b in explained.break_reasons][:4]
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("classes", nargs="*", help="default: every class with a spec")
    args = parser.parse_args(argv)
    for class_name in args.classes or sorted(SPECS):
        try:
            report = probe(class_name)
        except Exception as error:  # a probe reports every failure and goes on with the next class
            report = {"class": class_name, "error": f"{type(error).__name__}: {error}"[:400]}
        print("\n".join(f"  {k}: {v}" if i else f"{v}" for i, (k, v) in enumerate(report.items())), flush=True)


if __name__ == "__main__":
    main()
