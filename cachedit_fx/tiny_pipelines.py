"""Tiny random-weight diffusers pipelines, built fully offline (nothing is downloaded).

Every component is built from a config with seeded random weights; tokenizers are small
WordPiece vocabularies built in memory. ``default_call_kwargs(name)`` gives a small call; add
``generator`` and ``output_type``::

    pipe = TINY_PIPELINES["wan"](seed=0)
    out = pipe(**default_call_kwargs("wan"), generator=torch.Generator().manual_seed(0), output_type="latent")
"""

from __future__ import annotations

import string
from typing import Any, Callable

import torch

from cachedit_fx.tiny_models import FLUX_CONFIG, WAN_CONFIG

_WORDS = (
    "a an the of in on at with and by photo picture painting video portrait close up view cat cats dog man woman "
    "child astronaut horse bird car tree flower house city street forest mountain river sea beach sky sun moon "
    "night day rain snow red blue green yellow black white golden big small old young cute beautiful detailed "
    "realistic high low quality blurry bad ugly dancing running walking sitting riding flying playing"
).split()


def _word_tokenizer(specials: list[str], bos: str | None, eos: str, pad: str, unk: str,
                    model_max_length: int) -> Any:
    """A lowercasing WordPiece tokenizer: common prompt words are one token, other ASCII words are
    spelt in characters (non-ASCII -> ``unk``); appends ``eos`` (and prepends ``bos`` if given)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    pieces = specials + _WORDS + [c for c in chars if c not in _WORDS] + ["##" + c for c in chars]
    vocab = {piece: i for i, piece in enumerate(pieces)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=unk, max_input_chars_per_word=64))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    wrapped = [bos, "$A", eos] if bos is not None else ["$A", eos]
    tok.post_processor = processors.TemplateProcessing(
        single=" ".join(wrapped), pair=" ".join(wrapped + ["$B", eos]),
        special_tokens=[(t, vocab[t]) for t in (bos, eos) if t is not None])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length, bos_token=bos,
                                   eos_token=eos, pad_token=pad, unk_token=unk)


def _t5_tokenizer(model_max_length: int = 32) -> Any:
    """T5-style ids: <pad>=0, </s>=1, <unk>=2; appends </s>."""
    return _word_tokenizer(["<pad>", "</s>", "<unk>"], None, "</s>", "<pad>", "<unk>", model_max_length)


def _clip_tokenizer(model_max_length: int) -> Any:
    """CLIP-style ids: bos=0, eos=1 (also the pad token), <unk>=2; wraps the prompt in bos/eos."""
    bos, eos = "<|startoftext|>", "<|endoftext|>"
    return _word_tokenizer([bos, eos, "<unk>"], bos, eos, eos, "<unk>", model_max_length)


def tiny_flux_pipeline(seed: int = 0) -> Any:
    """A tiny random ``diffusers.FluxPipeline`` (4+4 blocks, 16x16 latents for 32x32 images)."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_len, dim = 16, FLUX_CONFIG["joint_attention_dim"]
    tokenizer, tokenizer_2 = _clip_tokenizer(clip_len), _t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(**{**FLUX_CONFIG, "in_channels": 16, "guidance_embeds": True})
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(4, 8), layers_per_block=1,
            latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=1.5035, shift_factor=0.0609,
            use_quant_conv=False, use_post_quant_conv=False)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=clip_len, projection_dim=dim, hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
        text_encoder_2 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_2), d_model=dim, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
            relative_attention_num_buckets=8, pad_token_id=tokenizer_2.pad_token_id,
            eos_token_id=tokenizer_2.eos_token_id, decoder_start_token_id=tokenizer_2.pad_token_id))
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
        max_image_seq_len=4096)
    return FluxPipeline(
        scheduler=scheduler, vae=vae.eval(), text_encoder=text_encoder.eval(), tokenizer=tokenizer,
        text_encoder_2=text_encoder_2.eval(), tokenizer_2=tokenizer_2, transformer=transformer.eval())


def _wan_transformer(seed: int) -> Any:
    from diffusers import WanTransformer3DModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return WanTransformer3DModel(**WAN_CONFIG).eval()


def tiny_wan_pipeline(seed: int = 0, two_experts: bool = False) -> Any:
    """A tiny random ``diffusers.WanPipeline`` (4 blocks; 9 frames of 32x32 -> 3x4x4 latents, 12 tokens).
    ``two_experts``: Wan 2.2 layout, ``transformer`` (seed) for timesteps >= 875 and
    ``transformer_2`` (seed + 1) below, so both experts run within one generation."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    z_dim, text_dim = WAN_CONFIG["in_channels"], WAN_CONFIG["text_dim"]
    tokenizer = _t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(
            base_dim=3, z_dim=z_dim, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
            latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
        text_encoder = UMT5EncoderModel(UMT5Config(
            vocab_size=len(tokenizer), d_model=text_dim, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
            relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id))
    scheduler = UniPCMultistepScheduler(
        prediction_type="flow_prediction", use_flow_sigmas=True, num_train_timesteps=1000, flow_shift=3.0)
    experts: dict[str, Any] = {"transformer": _wan_transformer(seed)}
    if two_experts:
        experts.update(transformer_2=_wan_transformer(seed + 1), boundary_ratio=0.875)
    return WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder.eval(), vae=vae.eval(), scheduler=scheduler,
                       **experts)


TINY_PIPELINES: dict[str, Callable[..., Any]] = {"flux": tiny_flux_pipeline, "wan": tiny_wan_pipeline}


def default_call_kwargs(name: str) -> dict[str, Any]:
    """Kwargs of a small deterministic call of ``TINY_PIPELINES[name]()`` (without ``generator`` /
    ``output_type``). Flux: one transformer call per step; Wan: CFG, two unbatched calls per step."""
    if name == "flux":
        return dict(prompt="a photo of a cat", height=32, width=32, guidance_scale=3.5, num_inference_steps=8,
                    max_sequence_length=16)
    if name == "wan":
        return dict(prompt="a cat dancing", negative_prompt="blurry", height=32, width=32, num_frames=9,
                    guidance_scale=5.0, num_inference_steps=8, max_sequence_length=16)
    raise KeyError(f"unknown tiny pipeline {name!r}; choose from {sorted(TINY_PIPELINES)}")
