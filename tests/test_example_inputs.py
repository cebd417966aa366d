import diffusers
import pytest
import torch

from cachedit_fx.example_inputs import SUPPORTED_CLASSES, example_inputs_for
from cachedit_fx.tiny_models import TINY_MODELS


def public_config(model: torch.nn.Module) -> dict:
    """The model's config without diffusers' private keys (``_use_default_values`` would make
    ``from_config`` reset overridden keys to their defaults)."""
    return {key: value for key, value in dict(model.config).items() if not key.startswith("_")}


def expected_output_shape(class_name: str, config: dict, hidden_states: torch.Tensor) -> tuple[int, ...]:
    """The denoiser output has the latent layout of ``hidden_states`` with the output channel count."""
    shape = list(hidden_states.shape)
    out_channels = config.get("out_channels") or config["in_channels"]
    if class_name in ("FluxTransformer2DModel", "QwenImageTransformer2DModel"):
        shape[2] = config["patch_size"] ** 2 * out_channels
    elif class_name == "CogVideoXTransformer3DModel":
        shape[2] = out_channels
    else:
        shape[1] = out_channels
    return tuple(shape)


def run_forward(class_name: str, config: dict, **kwargs) -> tuple[dict, torch.Tensor]:
    torch.manual_seed(0)
    model = getattr(diffusers, class_name)(**config).eval()
    inputs = example_inputs_for(class_name, dict(model.config), **kwargs)
    with torch.no_grad():
        output = model(**inputs, return_dict=False)[0]
    return inputs, output


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_tiny_model_runs_on_synthesised_inputs(name):
    model, _ = TINY_MODELS[name]()
    class_name = type(model).__name__
    assert class_name in SUPPORTED_CLASSES
    config = public_config(model)
    inputs, output = run_forward(class_name, config, batch=2)
    assert inputs["hidden_states"].shape[0] == 2
    assert output.shape == expected_output_shape(class_name, config, inputs["hidden_states"])
    assert torch.isfinite(output).all()


OTHER_SIZES = [
    ("flux", dict(num_layers=2, num_single_layers=3, num_attention_heads=3, attention_head_dim=8,
                  axes_dims_rope=[2, 2, 4], in_channels=8, out_channels=2, patch_size=2, joint_attention_dim=12,
                  pooled_projection_dim=6, guidance_embeds=True)),
    ("qwen_image", dict(num_layers=2, num_attention_heads=2, in_channels=8, out_channels=2,
                        joint_attention_dim=24, use_additional_t_cond=True)),
    ("wan", dict(num_layers=2, num_attention_heads=3, patch_size=(2, 2, 2), in_channels=6, out_channels=2,
                 text_dim=20, image_dim=10, added_kv_proj_dim=36)),
    ("sd3", dict(num_layers=3, num_attention_heads=2, caption_projection_dim=16, patch_size=2, in_channels=8,
                 out_channels=3, joint_attention_dim=24, pooled_projection_dim=16, dual_attention_layers=(0,),
                 qk_norm="rms_norm")),
    ("cogvideox", dict(num_layers=2, attention_head_dim=16, time_embed_dim=8, ofs_embed_dim=8, patch_size_t=2,
                       use_rotary_positional_embeddings=True, max_text_seq_length=5, text_embed_dim=12,
                       in_channels=8, patch_bias=False)),
    ("hunyuan_video", dict(num_layers=1, num_single_layers=3, patch_size=2, patch_size_t=2, guidance_embeds=False,
                           image_condition_type="token_replace", text_embed_dim=24, pooled_projection_dim=12)),
    ("pixart", dict(num_layers=2, num_attention_heads=3, attention_head_dim=4, cross_attention_dim=12,
                    caption_channels=10, use_additional_conditions=True, in_channels=3, out_channels=6)),
]


@pytest.mark.parametrize("name, overrides", OTHER_SIZES, ids=[name for name, _ in OTHER_SIZES])
def test_other_configs_derive_their_input_sizes(name, overrides):
    model, _ = TINY_MODELS[name]()
    class_name = type(model).__name__
    config = {**public_config(model), **overrides}
    inputs, output = run_forward(class_name, config)
    assert output.shape == expected_output_shape(class_name, config, inputs["hidden_states"])
    assert torch.isfinite(output).all()


def test_flux_inputs_follow_the_config_widths():
    model, _ = TINY_MODELS["flux"]()
    config = {**public_config(model), "joint_attention_dim": 40, "pooled_projection_dim": 24, "in_channels": 12}
    inputs = example_inputs_for("FluxTransformer2DModel", config, batch=3)
    assert inputs["hidden_states"].shape[::2] == (3, 12)
    assert inputs["encoder_hidden_states"].shape[::2] == (3, 40)
    assert inputs["pooled_projections"].shape == (3, 24)
    assert inputs["img_ids"].shape == (inputs["hidden_states"].shape[1], 3)
    assert "guidance" not in inputs


def test_partial_config_falls_back_to_class_defaults():
    inputs = example_inputs_for("SD3Transformer2DModel", {"in_channels": 4})
    assert inputs["hidden_states"].shape[1] == 4
    assert inputs["encoder_hidden_states"].shape[-1] == 4096
    assert inputs["pooled_projections"].shape[-1] == 2048


def test_same_seed_same_inputs_other_seed_other_inputs():
    model, _ = TINY_MODELS["wan"]()
    config = dict(model.config)
    first = example_inputs_for("WanTransformer3DModel", config, seed=3)
    again = example_inputs_for("WanTransformer3DModel", config, seed=3)
    other = example_inputs_for("WanTransformer3DModel", config, seed=4)
    assert all(torch.equal(first[key], again[key]) for key in first)
    assert not torch.equal(first["hidden_states"], other["hidden_states"])


def test_unknown_class_lists_the_supported_ones():
    with pytest.raises(ValueError, match="UNet2DConditionModel.*FluxTransformer2DModel"):
        example_inputs_for("UNet2DConditionModel", {})
