"""The method registry: every method sets itself up, trains and exports through the same calls."""

import json

import pytest
import torch
from accelerate import init_empty_weights
from peft import LoraConfig

from conftest import tiny_llama, token_batches, train_cascade
from lorasc import LoRASCConfig
from lorasc.methods import METHODS

BASE = LoRASCConfig(slow_alpha=0.5, noise_lambda=0.15, num_cycles=2, rewarmup_steps=1,
                    expert=LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))


@pytest.mark.parametrize("name,fields", [
    ("lora", {"num_cycles": 1, "slow_alpha": 1.0, "noise_lambda": 0.0}),
    ("lora+", {"num_cycles": 1, "loraplus_lr_ratio": 16.0}),
    ("cola", {"slow_alpha": 1.0, "noise_lambda": 0.0, "num_cycles": 2, "rewarmup_steps": 0}),
    ("relora", {"slow_alpha": 1.0, "noise_lambda": 0.0, "rewarmup_steps": 1}),
    ("lorasc", {"slow_alpha": 0.5, "noise_lambda": 0.15, "num_cycles": 2}),
    ("qrelora", {"slow_alpha": 1.0, "noise_lambda": 0.0, "quantized_merge": "requantize"}),
])
def test_presets_fix_their_fields_and_keep_the_users_others(name, fields):
    config = METHODS[name].config(BASE)
    assert {k: getattr(config, k) for k in fields} == fields
    assert config.expert.r == 2 and config.seed == BASE.seed


def test_expert_presets():
    assert METHODS["dora"].config(BASE).expert.use_dora and METHODS["rslora"].config(BASE).expert.use_rslora
    assert not METHODS["lora"].config(BASE).expert.use_dora


def test_input_checks_see_each_methods_own_cycle_plan():
    """Ten cycles cannot fit six steps, but LoRA's preset runs one; full fine-tuning has no cycles and no targets."""
    base = LoRASCConfig(num_cycles=10, expert=BASE.expert)
    with pytest.raises(ValueError, match="num_cycles=10 is not allowed"):
        METHODS["lorasc"].check_inputs(base, empty_llama(), steps_per_epoch=3, total_steps=6)
    METHODS["lora"].check_inputs(base, empty_llama(), steps_per_epoch=3, total_steps=6)
    unknown_targets = LoRASCConfig(num_cycles=10, expert=LoraConfig(r=2, target_modules=["nothing"]))
    with pytest.raises(ValueError, match="matches no layer"):
        METHODS["lora"].check_inputs(unknown_targets, empty_llama(), steps_per_epoch=3, total_steps=6)
    METHODS["full"].check_inputs(unknown_targets, empty_llama(), steps_per_epoch=3, total_steps=6)


def empty_llama():
    with init_empty_weights():  # the input checks wrap the model PEFT matches on
        return tiny_llama()


@pytest.mark.parametrize("name", [name for name in METHODS if name != "qrelora"])  # on a 4-bit backbone only: test_quantized.py
def test_every_method_trains_and_exports_through_the_same_calls(name, tmp_path):
    model = tiny_llama()
    pristine = {n: p.detach().clone() for n, p in model.named_parameters()}
    trained = METHODS[name].build(model, BASE)
    trained.begin(total_steps=4)
    train_cascade(trained, trained.optimizer(lr=1e-2), token_batches(4))
    trained.finish()
    METHODS[name].export(trained, tmp_path, tokenizer=None)
    assert (tmp_path / "model" / "config.json").is_file()
    has_adapter = name not in ("dora", "full")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file() == has_adapter
    if has_adapter:
        assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 2 * trained.num_cycles
    assert ("delta_effective_rank" in METHODS[name].describe(trained)) == (name != "full")
    embedding = dict(trained.model.named_parameters())
    embedding = next(p for n, p in embedding.items() if n.endswith("embed_tokens.weight"))
    changed = not torch.equal(embedding, pristine["model.embed_tokens.weight"])
    assert changed == (name in ("noisytune", "full"))  # NoisyTune perturbs every weight once; full FT trains it
