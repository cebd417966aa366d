"""Command line entry point ``cachedit-fx`` (also ``python -m cachedit_fx.cli``).

    cachedit-fx inspect [--model NAME | --model-class CLASS --config cfg.json] [--inputs inputs.pt]
                        [--option KEY=VALUE ...] [--json]
    cachedit-fx demo [demo args...]
    cachedit-fx metrics A B [--json]

``main`` never raises for bad arguments: it returns 2 for usage errors, 1 when the command
fails on valid arguments (unreadable files, mismatched images), 0 on success.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from cachedit_fx.example_inputs import SUPPORTED_CLASSES, example_inputs_for
from cachedit_fx.tiny_models import TINY_MODELS

EXIT_OK = 0
EXIT_FAILURE = 1
DEFAULT_TINY_MODEL = "flux"


def parse_option(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` -> (KEY, json.loads(VALUE)), or (KEY, VALUE) when VALUE is not JSON."""
    key, separator, raw_value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(raw_value)
    except json.JSONDecodeError:
        return key, raw_value


def build_parser() -> argparse.ArgumentParser:
    """The ``cachedit-fx`` parser with its ``inspect``, ``demo`` and ``metrics`` subcommands."""
    parser = argparse.ArgumentParser(prog="cachedit-fx", description="cachedit_fx tools: DBCache for DiTs.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    inspect = subparsers.add_parser("inspect", help="show the block chain and caching plan cachedit finds in a model",
                                    description="Capture a model with Dynamo and print what cachedit would cache.")
    source = inspect.add_mutually_exclusive_group()
    source.add_argument("--model", choices=sorted(TINY_MODELS),
                        help=f"a built-in tiny random-weight model (default: {DEFAULT_TINY_MODEL})")
    source.add_argument("--model-class", metavar="NAME", help="a diffusers model class, built with --config")
    inspect.add_argument("--config", type=Path, metavar="CFG.JSON", help="config for --model-class (from_config)")
    inspect.add_argument("--inputs", type=Path, metavar="INPUTS.PT", help="forward kwargs (dict) or positional args "
                         "(tuple) saved with torch.save; default: the tiny model's inputs or synthesised ones")
    inspect.add_argument("--seed", type=int, default=0, help="seed for weights and synthesised inputs")
    inspect.add_argument("--option", type=parse_option, action="append", default=[], metavar="KEY=VALUE",
                         help="backend option, VALUE parsed as JSON when possible (repeatable)")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")
    inspect.set_defaults(run=_run_inspect, command_parser=inspect)

    # listed for --help only: ``main`` hands everything after ``demo`` to the demo's own parser
    demo = subparsers.add_parser("demo", add_help=False, help="run the tiny FLUX demo (arguments of "
                                 "python -m cachedit_fx.demo, see 'cachedit-fx demo --help')")
    demo.add_argument("demo_args", nargs=argparse.REMAINDER)

    metrics = subparsers.add_parser("metrics", help="MSE / PSNR / SSIM of two images or two folders of images",
                                    description="Compare two image files, or the same-named images of two folders.")
    metrics.add_argument("a", type=Path, help="image file or folder")
    metrics.add_argument("b", type=Path, help="image file or folder (same kind as A)")
    metrics.add_argument("--json", action="store_true", help="print the metrics as JSON")
    metrics.set_defaults(run=_run_metrics, command_parser=metrics)
    return parser


def _load_model_and_inputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[Any, Any]:
    """The model to inspect and its example inputs. A dumped ``dict(model.config)`` works as
    ``--config``: its ``_use_default_values`` key (``from_config`` would reset those keys) is dropped."""
    import torch

    inputs = None
    if args.model_class is None:
        if args.config is not None:
            parser.error("--config goes with --model-class")
        model, inputs = TINY_MODELS[args.model or DEFAULT_TINY_MODEL](seed=args.seed)
    else:
        if args.config is None:
            parser.error("--model-class needs --config")
        if args.inputs is None and args.model_class not in SUPPORTED_CLASSES:
            parser.error(f"no example inputs for {args.model_class}: pass --inputs "
                         f"(synthesised for {', '.join(SUPPORTED_CLASSES)})")
        import diffusers

        model_class = getattr(diffusers, args.model_class, None)
        if not (isinstance(model_class, type) and issubclass(model_class, torch.nn.Module)):
            parser.error(f"diffusers has no model class {args.model_class!r}")
        config = json.loads(args.config.read_text())
        config.pop("_use_default_values", None)
        torch.manual_seed(args.seed)
        model = model_class.from_config(config).eval()
    if args.inputs is not None:
        inputs = torch.load(args.inputs, weights_only=True)
        if not isinstance(inputs, (dict, tuple, list)):
            raise ValueError(f"{args.inputs} holds a {type(inputs).__name__}, expected a dict or a tuple")
        inputs = inputs if isinstance(inputs, dict) else tuple(inputs)
    elif inputs is None:
        inputs = example_inputs_for(args.model_class, dict(model.config), seed=args.seed)
    return model, inputs


def _run_inspect(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    import cachedit_fx

    report = cachedit_fx.inspect(*_load_model_and_inputs(args, parser), dict(args.option) or None)
    print(json.dumps(report.to_json(), indent=1) if args.json else str(report))
    return EXIT_OK


def _metrics_text(metrics: Any) -> str:
    return f"MSE {metrics.mse:12.4f}  PSNR {metrics.psnr:8.3f} dB  SSIM {metrics.ssim:.5f}"


def _run_metrics(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from cachedit_fx.metrics import FolderMetrics, compare_folders, compare_images

    if args.a.is_dir() and args.b.is_dir():
        result = compare_folders(args.a, args.b)
    elif args.a.is_file() and args.b.is_file():
        result = compare_images(args.a, args.b)
    else:
        parser.error(f"A and B must be two existing files or two existing folders: {args.a}, {args.b}")
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    elif isinstance(result, FolderMetrics):
        rows = [*result.per_file.items(), ("mean", result.mean)]
        width = max(len(name) for name, _ in rows)
        for name, metrics in rows:
            print(f"{name:<{width}}  {_metrics_text(metrics)}")
    else:
        print(_metrics_text(result))
    return EXIT_OK


def _run_demo(demo_args: Sequence[str]) -> int:
    """``cachedit_fx.demo.main(demo_args)``; its usage lines name ``cachedit-fx demo`` (via sys.argv[0])."""
    from cachedit_fx import demo

    program = sys.argv[:1]
    sys.argv[:1] = ["cachedit-fx demo"] if program else []
    try:
        demo.main(list(demo_args))
    finally:
        sys.argv[:1] = program
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``cachedit-fx`` with ``argv`` (default ``sys.argv[1:]``) and return the exit status:
    argparse exits become return codes, expected failures an error line and 1."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        if arguments[:1] == ["demo"]:
            return _run_demo(arguments[1:])
        args = build_parser().parse_args(arguments)
        return args.run(args, args.command_parser)
    except SystemExit as error:
        if error.code is None:
            return EXIT_OK
        return error.code if isinstance(error.code, int) else EXIT_FAILURE
    except (OSError, ValueError) as error:
        print(f"cachedit-fx: error: {error}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
