"""Architecture adapters on tiny random models of all five supported families."""

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config

from sponlib.errors import UnsupportedArchitectureError
from sponlib.models import INPUT_GROUPS, ROLES, Adapter, block_projections, iter_projections, register_adapter
from sponlib.models.tiny import TINY_ARCHITECTURES, tiny_config, tiny_model


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_every_block_lists_seven_projections_with_the_right_shapes(arch):
    model = tiny_model(arch)
    cfg = model.config
    blocks = block_projections(model)
    assert len(blocks) == cfg.num_hidden_layers
    q_out, kv_out = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    expected = {
        "q": (cfg.hidden_size, q_out),
        "k": (cfg.hidden_size, kv_out),
        "v": (cfg.hidden_size, kv_out),
        "o": (q_out, cfg.hidden_size),
        "gate": (cfg.hidden_size, cfg.intermediate_size),
        "up": (cfg.hidden_size, cfg.intermediate_size),
        "down": (cfg.intermediate_size, cfg.hidden_size),
    }
    modules = dict(model.named_modules())
    for index, block in enumerate(blocks):
        assert tuple(block) == ROLES
        for role, proj in block.items():
            assert (proj.block, proj.role) == (index, role)
            assert modules[proj.name] is proj.module
            assert (proj.in_features, proj.out_features) == expected[role]
        for group in INPUT_GROUPS:  # projections that share an input have the same input width
            assert len({block[r].in_features for r in group}) == 1


@pytest.mark.parametrize("arch", TINY_ARCHITECTURES)
def test_projections_cover_every_linear_layer_of_the_blocks(arch):
    model = tiny_model(arch)
    linear_in_blocks = {n for n, m in model.named_modules() if isinstance(m, nn.Linear) and ".layers." in n}
    listed = [p.name for p in iter_projections(model)]
    assert len(listed) == len(set(listed)) == 7 * model.config.num_hidden_layers
    assert set(listed) == linear_in_blocks


def test_unsupported_architecture_names_the_supported_ones():
    gpt2 = AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedArchitectureError, match=r"model_type='gpt2'.*Supported: .*llama.*qwen3"):
        block_projections(gpt2)


def test_an_adapter_that_does_not_fit_says_which_module_is_missing():
    model = tiny_model("llama")
    register_adapter(
        Adapter(
            "llama",
            "model.layers",
            {
                **dict(
                    zip(
                        ROLES,
                        [
                            "self_attn.q_proj",
                            "self_attn.k_proj",
                            "self_attn.v_proj",
                            "self_attn.o_proj",
                            "mlp.gate",
                            "mlp.up_proj",
                            "mlp.down_proj",
                        ],
                    )
                )
            },
        )
    )
    try:
        with pytest.raises(UnsupportedArchitectureError, match=r"no 'mlp.gate' \(role 'gate'\)"):
            block_projections(model)
    finally:
        register_adapter(Adapter("llama", "model.layers"))
    assert len(block_projections(model)) == 2


def test_adapter_must_cover_all_roles():
    with pytest.raises(ValueError, match="lacks roles"):
        register_adapter(Adapter("partial", "model.layers", {"q": "self_attn.q_proj"}))


def test_tiny_models_run_and_are_seeded():
    a, b = tiny_model("qwen3", seed=1), tiny_model("qwen3", seed=1)
    ids = torch.randint(0, 256, (2, 9))
    assert torch.equal(a(ids).logits, b(ids).logits)
    assert a(ids).logits.shape == (2, 9, tiny_config("qwen3").vocab_size)


def test_multimodal_gemma3_uses_its_language_model_blocks():
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = Gemma3Config(
        text_config=tiny_config("gemma3_text").to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4
    )
    blocks = block_projections(Gemma3ForConditionalGeneration(config))
    assert len(blocks) == 2
    assert blocks[1]["down"].name == "model.language_model.layers.1.mlp.down_proj"  # not the vision tower
