"""``python -m benchmarks.coverage.real_architectures [--classes A,B] [--jobs 1]`` (or
``python -m benchmarks.coverage --real``): the chain of every class of the support matrix at its
published configuration, at full depth and width, without weights.

Per class, in a worker process of its own: the model is built under a ``FakeTensorMode`` from
its published configuration (``published_config``: the ``__init__`` defaults, or the released
model named in ``PUBLISHED_CONFIGS``), fed ``cachedit_fx.example_inputs`` for that configuration
(the smallest latent grid the builders make: 4x4 patches, 2 latent frames, 8 text tokens, unless
the configuration fixes a size), and called once through ``torch.compile`` under
``cachedit_fx.compile``'s capture settings with a backend that runs ``analyze_block_chain`` on
every graph Dynamo captures. Nothing is cached or compiled; the graphs run on fake tensors, so no
parameter or activation takes memory and the largest models fit. Like ``cachedit_fx.compile``, a
trace that Dynamo cannot finish on a captured scalar is retried without ``capture_scalar_outputs``.
(Fake CPU tensors rather than the meta device: on meta, complex rotary tables, FlexAttention,
autocast and ``repeat_interleave`` fail, and tensors made in ``__init__`` become meta constants
that Dynamo cannot fakify.)

Results go to ``benchmarks/results/coverage/real_architectures.json`` and ``.md``; the support
matrix (``benchmarks/coverage/matrix.py``) shows them in its "published config: chain" column.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from benchmarks import report

OUT = Path("benchmarks/results/coverage")
RESULTS_JSON = "real_architectures.json"
RESULTS_MD = "real_architectures.md"
DEFAULTS_SOURCE = "__init__ defaults"

_PIXART_ALPHA_1024 = dict(
    num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
    cross_attention_dim=1152, attention_bias=True, sample_size=128, patch_size=2, activation_fn="gelu-approximate",
    num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    caption_channels=4096)
"""PixArt-alpha/PixArt-XL-2-1024-MS, ``transformer/config.json`` (saved as ``Transformer2DModel``)."""

PUBLISHED_CONFIGS: dict[str, tuple] = {
    "ConsisIDTransformer3DModel": ("BestWishYsh/ConsisID-preview", dict(
        num_attention_heads=48, num_layers=42, in_channels=32, use_rotary_positional_embeddings=True,
        is_train_face=True)),
    "CosmosTransformer3DModel": ("Cosmos-1.0-Diffusion-7B-Text2World", dict(concat_padding_mask=False),
                                 "without its padding-mask channel: torchvision, which resizes that mask, is not "
                                 "installed"),
    "DreamLiteTransformer2DModel": ("DreamLiteUNetModel defaults, mid_block.attentions.0", dict(
        num_attention_heads=64, attention_head_dim=20, in_channels=1280, num_layers=1, norm_num_groups=32,
        cross_attention_dim=2048, qk_norm="rms_norm", ff_mult=6),
        "every transformer of that U-Net holds one block; without its one key/value head: only the U-Net's own "
        "attention processor runs grouped heads"),
    "EasyAnimateTransformer3DModel": ("alibaba-pai/EasyAnimateV5.1-12b-zh (text-to-video)", dict(
        in_channels=16, out_channels=16, patch_size=2)),
    "HiDreamImageTransformer2DModel": ("HiDream-ai/HiDream-I1-Full", dict(
        patch_size=2, in_channels=16, out_channels=16, caption_channels=[4096, 4096], axes_dims_rope=(64, 32, 32),
        llama_layers=list(range(32)) + [31] * 16)),
    "HunyuanDiT2DModel": ("Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers", dict(
        in_channels=4, patch_size=2, sample_size=128, hidden_size=1408, num_layers=40, mlp_ratio=4.3637,
        use_style_cond_and_image_meta_size=False)),
    "HunyuanVideoFramepackTransformer3DModel": ("lllyasviel/FramePackI2V_HY", dict(
        has_image_proj=True, has_clean_x_embedder=True)),
    "LatteTransformer3DModel": ("maxin-cn/Latte-1", dict(
        num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
        cross_attention_dim=1152, attention_bias=True, sample_size=64, patch_size=2, activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
        caption_channels=4096, video_length=16)),
    "Lumina2Transformer2DModel": ("Alpha-VLLM/Lumina-Image-2.0", dict(cap_feat_dim=2304)),
    "LuminaNextDiT2DModel": ("Alpha-VLLM/Lumina-Next-SFT-diffusers", dict(num_layers=24, num_kv_heads=8)),
    "OmniGenTransformer2DModel": ("Shitao/OmniGen-v1", dict(
        rope_scaling={"short_factor": [1.0] * 48, "long_factor": [1.0] * 48}),
        "its Phi-3 rope_scaling lists as 48 factors of 1.0: their values change no shape"),
    "PixArtTransformer2DModel": ("PixArt-alpha/PixArt-XL-2-1024-MS", _PIXART_ALPHA_1024),
    "SD3Transformer2DModel": ("stabilityai/stable-diffusion-3-medium-diffusers", dict(
        num_layers=24, num_attention_heads=24, caption_projection_dim=1536, pos_embed_max_size=192)),
    "Transformer2DModel": ("PixArt-alpha/PixArt-XL-2-1024-MS", _PIXART_ALPHA_1024),
}
"""Classes whose ``__init__`` defaults are not a released model (or do not build) -> (the released
model whose ``transformer/config.json`` is meant, the keys where it differs from the defaults[, how
the configuration analysed departs from that model]).
Every other class is analysed at its defaults, which diffusers takes from a released model
(FluxTransformer2DModel: FLUX.1-schnell; WanTransformer3DModel: Wan2.1-T2V-14B). The values were
written down here without access to the hub: block counts and widths are the released ones;
keys that change no block list (positional-embedding details) may differ from the files."""


def published_config(class_name: str) -> tuple[str, dict[str, Any]]:
    """(source, full config) of ``class_name``'s published configuration: the model named in
    ``PUBLISHED_CONFIGS`` over the ``__init__`` defaults, else the defaults themselves."""
    from cachedit_fx.example_inputs import resolved_config

    source, overrides, *_ = PUBLISHED_CONFIGS.get(class_name, (DEFAULTS_SOURCE, {}))
    return source, resolved_config(class_name, overrides)


def departure(class_name: str) -> str:
    """How the configuration analysed for ``class_name`` departs from the published one ("" where
    it does not)."""
    return "".join(PUBLISHED_CONFIGS.get(class_name, ("", {}))[2:])


def fake_model(class_name: str, config: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``diffusers.<class_name>`` built from ``config`` under a ``FakeTensorMode`` (every
    parameter and buffer a ``FakeTensor``: a CPU tensor without storage), and its example inputs
    for ``config`` as real tensors (a few MB at most): what the forward computes from the inputs
    alone (masks, sequence lengths, ``torch.all(image_embeds == 0)``) stays real, so eager code
    between graph breaks branches on it as in a real run; whatever touches a parameter is fake.

    The mode has a ``ShapeEnv``, so sizes that depend on fake values (``nonzero`` of a fake
    tensor) become unbacked symbols. Call the model outside the mode: Dynamo does not trace under
    an active one."""
    import diffusers
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from cachedit_fx.example_inputs import example_inputs_for

    with FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv()):
        model = getattr(diffusers, class_name)(**config).eval()
    return model, example_inputs_for(class_name, dict(model.config))


@dataclass
class GraphAnalysis:
    """One Dynamo graph: the chain ``analyze_block_chain`` found in it, or why it found none
    (``no_blocks``: the graph holds no block list at all); ``outputs_made``: running it on fake
    tensors failed and its outputs were made from their recorded sizes (``_run_on_fake_tensors``)."""

    nodes: int
    chain: Any = None
    reason: Optional[str] = None
    no_blocks: bool = False
    seconds: float = 0.0
    outputs_made: bool = False


@dataclass
class Capture:
    """Every graph of one forward, in capture order; ``error`` is set when the forward raised
    (the graphs captured before the error are kept)."""

    graphs: list[GraphAnalysis] = field(default_factory=list)
    breaks: list[str] = field(default_factory=list)
    settings: dict[str, bool] = field(default_factory=dict)
    error: Optional[str] = None
    seconds: float = 0.0

    @property
    def chains(self) -> list[Any]:
        return [graph.chain for graph in self.graphs if graph.chain is not None]


def _graph_breaks() -> list[str]:
    from torch._dynamo.utils import counters

    reasons = [reason.splitlines()[0][:160] for key in ("graph_break", "unimplemented") for reason in counters[key]]
    return list(dict.fromkeys(reasons))


def _trace_into(capture: Capture, model: torch.nn.Module, inputs: dict[str, Any]) -> None:
    """One forward of ``model`` through Dynamo under ``capture.settings``, each graph analysed
    into ``capture.graphs`` as it is captured (so they survive an error of the forward)."""
    from torch._dynamo.utils import counters

    from cachedit_fx.passes.errors import NoBlocks, UnsupportedGraph
    from cachedit_fx.passes.find_block_chain import analyze_block_chain

    mode = next(model.parameters()).fake_mode

    def analysing_backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graph = GraphAnalysis(nodes=len(gm.graph.nodes))
        start = time.perf_counter()
        try:
            graph.chain = analyze_block_chain(gm)
        except NoBlocks as error:
            graph.reason, graph.no_blocks = str(error), True
        except UnsupportedGraph as error:
            graph.reason = str(error)
        graph.seconds = time.perf_counter() - start
        capture.graphs.append(graph)
        return _run_on_fake_tensors(gm, graph, mode)

    torch._dynamo.reset()
    counters.clear()
    start = time.perf_counter()
    try:
        with torch.no_grad(), torch._dynamo.config.patch(**capture.settings):
            torch.compile(model, backend=analysing_backend)(**inputs, return_dict=False)
    finally:
        capture.seconds += time.perf_counter() - start
        capture.breaks = _graph_breaks()
        torch._dynamo.reset()


def _run_on_fake_tensors(gm: torch.fx.GraphModule, graph: GraphAnalysis, mode: Any) -> Any:
    """``gm`` as a callable for its inputs (fake parameters, real inputs): run with the Python
    dispatcher on, as Dynamo traces, so composite ops take symbolic sizes. Where that fails (an
    op that cannot take an unbacked size, such as a mask a fake tensor indexes), the outputs are
    made as empty fake tensors of ``mode`` with the sizes Dynamo recorded for them, when every
    output is a tensor of known size (``graph.outputs_made`` is then set), else the error is
    raised."""
    from torch._dispatch.python import enable_python_dispatcher

    def run(*args: Any) -> Any:
        try:
            with enable_python_dispatcher():
                return gm.forward(*args)
        except Exception:
            outputs = _recorded_outputs(gm, mode)
            if outputs is None:
                raise
            graph.outputs_made = True
            return outputs

    return run


def _recorded_outputs(gm: torch.fx.GraphModule, mode: Any) -> Optional[list[torch.Tensor]]:
    """Empty fake tensors shaped as the example values Dynamo recorded for ``gm``'s outputs;
    None where an output is no tensor or has a size that is not a plain integer."""
    values = [node.meta.get("example_value") for node in gm.graph.output_node().args[0]]
    if not all(torch.is_tensor(v) and all(isinstance(d, int) for d in (*v.shape, *v.stride())) for v in values):
        return None
    with mode:
        return [torch.empty_strided(v.shape, v.stride(), dtype=v.dtype) for v in values]


def capture_and_analyze(model: torch.nn.Module, inputs: dict[str, Any]) -> Capture:
    """Every graph Dynamo captures from ``model(**inputs)`` under ``CAPTURE_SETTINGS``, each with
    its chain analysis; a trace that raises ``GuardOnDataDependentSymNode`` is retried without
    ``capture_scalar_outputs`` (as ``cachedit_fx.compile`` does). Any other error of the forward
    is recorded in ``Capture.error``, with the graphs captured before it."""
    from torch.fx.experimental.symbolic_shapes import GuardOnDataDependentSymNode

    from cachedit_fx.config import CAPTURE_SETTINGS

    capture = Capture(settings=dict(CAPTURE_SETTINGS))
    try:
        try:
            _trace_into(capture, model, inputs)
        except GuardOnDataDependentSymNode:
            capture.settings["capture_scalar_outputs"] = False
            capture.graphs = []
            _trace_into(capture, model, inputs)
    except Exception as error:  # the row records how the forward failed
        capture.error = f"{type(error).__name__}: {error}"[:600]
    return capture


def chain_lists(chain: Any) -> list[tuple[str, int]]:
    """(path, blocks) of each list of ``chain``'s chain, in program order."""
    return [(info.path, info.count) for info in chain.lists if info.role == "chain"]


def side_lists(chain: Any) -> list[tuple[str, int, str]]:
    """(path, blocks, role) of each block list of the graph outside the chain."""
    return [(info.path, info.count, info.role) for info in chain.lists if info.role != "chain"]


def chain_text(chain: Any) -> str:
    """``transformer_blocks[19] -> single_transformer_blocks[38]`` (``+ ... interleaved`` where
    the lists' blocks alternate), then ``; side lists: path[n] role, ...``."""
    paths = [b.list_path for b in chain.blocks]
    runs = sum(1 for k, path in enumerate(paths) if k == 0 or paths[k - 1] != path)
    parts = [f"{path}[{count}]" for path, count in chain_lists(chain)]
    text = " + ".join(parts) + " interleaved" if runs > len(parts) else " -> ".join(parts)
    side = [f"{path}[{count}] {role}" for path, count, role in side_lists(chain)]
    return text + (f"; side lists: {', '.join(side)}" if side else "")


def caches_main_list(chain: Any, main_list: Optional[str]) -> bool:
    """Whether ``cachedit_fx.compile`` would cache ``chain``: a graph's chain is refused unless
    the model's main block list (``main_block_list``) is one of its graph's lists (Lumina2's
    refiners, alone in the graph before a break, are not cached)."""
    return main_list is None or main_list in {info.path for info in chain.lists}


def analyze(class_name: str, config: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """One row: ``class_name`` at ``config`` (default: its published configuration) built on
    fake tensors, captured and analysed (see the module docstring)."""
    from cachedit_fx.runtime.registry import main_block_list

    start = time.perf_counter()
    source, published = published_config(class_name)
    row: dict[str, Any] = {"class": class_name, "source": source if config is None else "given config",
                           "departure": departure(class_name) if config is None else "",
                           "config_overrides": PUBLISHED_CONFIGS.get(class_name, ("", {}))[1] if config is None
                           else config}
    model, inputs = fake_model(class_name, published if config is None else config)
    row["params_billion"] = round(sum(p.numel() for p in model.parameters()) / 1e9, 3)
    row["build_s"] = round(time.perf_counter() - start, 2)
    capture = capture_and_analyze(model, inputs)
    row["capture_settings"] = capture.settings
    row["graphs"] = len(capture.graphs)
    row["breaks"] = capture.breaks
    row["main_list"] = main_block_list(model)
    cached = [chain for chain in capture.chains if caches_main_list(chain, row["main_list"])]
    row["chains"] = [chain_text(chain) for chain in cached]
    row["chain_lists"] = [chain_lists(chain) for chain in cached]
    row["refused_chains"] = [chain_text(chain) for chain in capture.chains if chain not in cached]
    row["reasons"] = list(dict.fromkeys(g.reason for g in capture.graphs if g.reason and not g.no_blocks))
    row["graphs_with_made_outputs"] = [k + 1 for k, graph in enumerate(capture.graphs) if graph.outputs_made]
    if capture.error:
        row["error"] = capture.error
    row["trace_s"] = round(capture.seconds, 1)
    row["analysis_s"] = round(sum(g.seconds for g in capture.graphs), 1)
    row["seconds"] = round(time.perf_counter() - start, 1)
    return row


def _analyze_safely(class_name: str) -> dict[str, Any]:
    torch.set_num_threads(1)
    start = time.perf_counter()
    try:
        return analyze(class_name)
    except Exception as error:  # a row records any failure; the analysis goes on
        return {"class": class_name, "source": published_config(class_name)[0],
                "error": f"{type(error).__name__}: {error}"[:600], "traceback": traceback.format_exc()[-2000:],
                "graphs": 0, "chains": [], "seconds": round(time.perf_counter() - start, 1)}


def run(classes: list[str], jobs: int = 1) -> list[dict[str, Any]]:
    """A row per class (in the order of ``classes``), each analysed in a fresh worker process;
    each row's summary is printed as it arrives."""
    context = multiprocessing.get_context("spawn")
    rows = []
    with context.Pool(max(jobs, 1), maxtasksperchild=1) as pool:
        for row in pool.imap_unordered(_analyze_safely, classes, chunksize=1):
            print(f"{row['class']}: {published_cell(row)} ({row.get('seconds')} s)", flush=True)
            rows.append(row)
    order = {name: k for k, name in enumerate(classes)}
    return sorted(rows, key=lambda row: order[row["class"]])


def chain_cell(row: dict[str, Any]) -> str:
    """The chain of ``row`` (what ``cachedit_fx.compile`` would cache), or why there is none;
    where the forward raised on fake tensors, the error after it."""
    error = " ".join(row.get("error", "").split())[:200]
    stopped = f"; the forward stopped after graph {row.get('graphs', 0)}: {error}" if error else ""
    if row.get("chains"):
        return "; ".join(row["chains"]) + stopped
    if row.get("refused_chains"):
        reason = (f"chains only without the main block list {row.get('main_list')}: "
                  + "; ".join(row["refused_chains"]))
    else:
        reason = "; ".join(row.get("reasons") or []) or (
            "no chain in the graphs before that" if stopped else "no block list in any graph")
    return f"none: {reason[:300]}{stopped}"


def published_cell(row: Optional[dict[str, Any]]) -> str:
    """The matrix's "published config: chain" cell: ``chain_cell``, then the graph count where it
    is not 1 and the released model where the configuration is not the ``__init__`` defaults."""
    if row is None:
        return "not analysed"
    graphs = "" if row.get("graphs") == 1 else f" ({row.get('graphs', 0)} graphs)"
    named = "" if row.get("source") == DEFAULTS_SOURCE else f" [{row.get('source')}]"
    return chain_cell(row) + graphs + named


def markdown(results: dict[str, Any]) -> str:
    rows = results["rows"]
    found = sum(1 for row in rows if row.get("chains"))
    lines = [f"{found} of {len(rows)} classes hold a chain at their published configuration (full depth and "
             f"width, fake tensors, no weights); diffusers {results['versions'].get('diffusers')}, torch "
             f"{results['versions'].get('torch')}, {results['date']}, CPU, {results['total_s']:.0f} s in all.", "",
             "| class | configuration | params (B) | graphs | chain (side lists) | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        chain = chain_cell(row)
        source = row.get("source", "-") + (f" ({row['departure']})" if row.get("departure") else "")
        lines.append(f"| {row['class']} | {source} | {row.get('params_billion', '-')} | "
                     f"{row.get('graphs', '-')} | {chain.replace('|', '/')[:500]} | {row.get('seconds', '-')} |")
    return "\n".join(lines)


def load(out: Path = OUT) -> Optional[dict[str, Any]]:
    """The stored results, or None where none were written."""
    path = out / RESULTS_JSON
    return json.loads(path.read_text()) if path.exists() else None


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Analyse the classes, write ``real_architectures.json`` and ``.md`` under ``--out``; with
    ``--classes``, the rows of the other classes are kept from the stored results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--classes", default=None, help="comma-separated class names (default: every class "
                        "with a ClassSpec)")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    return run_and_write(args.classes.split(",") if args.classes else None, args.jobs, Path(args.out))


def run_and_write(classes: Optional[list[str]], jobs: int, out: Path) -> dict[str, Any]:
    """Rows for ``classes`` (None: every class with a ``ClassSpec``) merged into the stored
    results under ``out``, written back as JSON and markdown."""
    from cachedit_fx.example_inputs import SPECS

    wanted = classes or sorted(SPECS)
    unknown = sorted(set(wanted) - set(SPECS))
    if unknown:
        raise SystemExit(f"no ClassSpec for {unknown}")
    start = time.perf_counter()
    new_rows = {row["class"]: row for row in run(wanted, jobs)}
    stored = load(out) if classes else None
    rows = {row["class"]: row for row in (stored or {}).get("rows", [])}
    rows.update(new_rows)
    results = {"date": datetime.date.today().isoformat(), "versions": report.versions(),
               "rows": [rows[name] for name in sorted(rows)]}
    results["total_s"] = round(sum(row.get("seconds", 0) for row in results["rows"]), 1)
    results["wall_s"] = round(time.perf_counter() - start, 1) if classes is None else (stored or {}).get("wall_s")
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULTS_JSON).write_text(json.dumps(results, indent=1))
    (out / RESULTS_MD).write_text(markdown(results) + "\n")
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
