"""Chain analysis of published architectures on fake tensors (``benchmarks/coverage/real_architectures.py``).

Each case takes a class's published configuration (full width, no weights), sets its block counts,
captures one forward with Dynamo under ``cachedit_fx.compile``'s capture settings and asserts the
chain found is the one the configuration implies: its lists in program order with their depths,
and the side lists (with two or more blocks) outside it. Shapes covered: FLUX's double- then
single-stream lists, Wan's one list, HunyuanVideo's two lists after its token refiner, Latte's
interleaved spatial and temporal lists, WanAnimate's motion encoder and face adapter around the
chain; depths of one block per list, two, and more; side lists of varied size. Published depths
(19 + 38 FLUX blocks take tens of seconds) run in the support matrix (``--real``), not here."""

from __future__ import annotations

import math

import pytest

from benchmarks.coverage.real_architectures import (
    analyze, capture_and_analyze, chain_lists, fake_model, published_config, side_lists,
)

FLUX = "FluxTransformer2DModel"
WAN = "WanTransformer3DModel"
HUNYUAN_VIDEO = "HunyuanVideoTransformer3DModel"
LATTE = "LatteTransformer3DModel"
WAN_ANIMATE = "WanAnimateTransformer3DModel"
HUNYUAN_REFINER = "context_embedder.token_refiner.refiner_blocks"


def _flux(double: int, single: int, **extra):
    return (FLUX, dict(num_layers=double, num_single_layers=single, **extra),
            [("transformer_blocks", double), ("single_transformer_blocks", single)], set())


def _hunyuan_video(double: int, single: int, refiner: int):
    side = {(HUNYUAN_REFINER, refiner, "prologue")} if refiner >= 2 else set()
    return (HUNYUAN_VIDEO, dict(num_layers=double, num_single_layers=single, num_refiner_layers=refiner),
            [("transformer_blocks", double), ("single_transformer_blocks", single)], side)


def _wan_animate(blocks: int, inject_every: int, motion_encoder_size: int):
    """Side lists: the motion encoder's 5 linears and log2(size) - 2 residual blocks (prologue),
    one face adapter per ``inject_every`` main blocks (between them); lists of one block are no
    side lists."""
    residual_blocks = int(math.log2(motion_encoder_size)) - 2
    adapters = blocks // inject_every
    side = {("motion_encoder.motion_network", 5, "prologue")}
    side |= {("motion_encoder.res_blocks", residual_blocks, "prologue")} if residual_blocks >= 2 else set()
    side |= {("face_adapter", adapters, "interleaved")} if adapters >= 2 else set()
    return (WAN_ANIMATE, dict(num_layers=blocks, inject_face_latents_blocks=inject_every,
                              motion_encoder_size=motion_encoder_size), [("blocks", blocks)], side)


CASES = {
    "flux-1+1": _flux(1, 1),
    "flux-2+1": _flux(2, 1),
    "flux-dev-3+4": _flux(3, 4, guidance_embeds=True),
    "wan-2": (WAN, dict(num_layers=2), [("blocks", 2)], set()),
    "wan-5": (WAN, dict(num_layers=5), [("blocks", 5)], set()),
    "hunyuan-video-1+1-refiner-1": _hunyuan_video(1, 1, 1),
    "hunyuan-video-2+3-refiner-3": _hunyuan_video(2, 3, 3),
    "latte-1": (LATTE, dict(num_layers=1), [("transformer_blocks", 1), ("temporal_transformer_blocks", 1)], set()),
    "latte-3": (LATTE, dict(num_layers=3), [("transformer_blocks", 3), ("temporal_transformer_blocks", 3)], set()),
    "wan-animate-4-face-2-motion-16": _wan_animate(4, 2, 16),
    "wan-animate-3-face-3-motion-512": _wan_animate(3, 1, 512),
}
"""id -> (class, block counts over its published configuration, chain lists in program order,
side lists as (path, blocks, role))."""


def _capture(class_name: str, counts: dict):
    _, config = published_config(class_name)
    model, inputs = fake_model(class_name, {**config, **counts})
    return capture_and_analyze(model, inputs)


@pytest.mark.parametrize("case", sorted(CASES))
def test_chain_is_what_the_config_implies(case):
    class_name, counts, want_chain, want_side = CASES[case]
    capture = _capture(class_name, counts)
    assert capture.error is None, capture.error
    assert len(capture.chains) == 1, [graph.reason for graph in capture.graphs]
    chain = capture.chains[0]
    assert chain_lists(chain) == want_chain
    assert set(side_lists(chain)) == want_side
    assert len(chain) == sum(depth for _, depth in want_chain)


def test_latte_blocks_alternate_spatial_and_temporal():
    capture = _capture(LATTE, dict(num_layers=2))
    assert capture.error is None, capture.error
    assert [block.list_path for block in capture.chains[0].blocks] == [
        "transformer_blocks", "temporal_transformer_blocks"] * 2


def test_one_block_is_no_chain():
    capture = _capture(WAN, dict(num_layers=1))
    assert capture.error is None, capture.error
    assert capture.chains == [] and len(capture.graphs) == 1
    assert capture.graphs[0].reason


def test_row_names_the_chain_and_the_graphs():
    _, config = published_config(WAN)
    row = analyze(WAN, {**config, "num_layers": 2})
    assert row["chains"] == ["blocks[2]"] and row["chain_lists"] == [[("blocks", 2)]]
    assert row["graphs"] == 1 and row["source"] == "given config" and "error" not in row
