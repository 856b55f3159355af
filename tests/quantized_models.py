"""Tiny quantized models for the tests of quantized backbones (a conftest plugin: its fixture is everyone's):
a tiny Llama saved once per module, loaded by bitsandbytes in each quantization type, and a cascade
trained on it with its experts recorded."""

import pytest
import torch
from conftest import expert, tiny_llama, train_cascade, word_tokenizer
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from lorasc import LoRASCConfig
from lorasc.quantized import is_quantized, keep_dequantize_path

QUANTIZATIONS = {
    "nf4": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
    "nf4-double": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "int8": dict(load_in_8bit=True),
}
TARGETS = ["q_proj", "v_proj"]
ALPHA = 0.5


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def load_quantized(folder, kind="nf4"):
    config = BitsAndBytesConfig(**QUANTIZATIONS[kind], bnb_4bit_compute_dtype=torch.float32)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, device_map="cpu", dtype=torch.float32)
    keep_dequantize_path(model)
    return model.train()  # bitsandbytes' int8 layers compute deQ(W)·x on the CPU in training mode only


def quantized_config(**fields):
    fields = {"num_cycles": 3, "slow_alpha": ALPHA, "noise_lambda": 0.0, "slow_budget": 100.0, **fields}
    return LoRASCConfig(**fields, expert=expert(target_modules=TARGETS))


def packed_state(model):
    """Every quantized layer's packed data and quantization state, cloned."""
    import bitsandbytes as bnb

    state = {}
    for name, module in model.named_modules():
        if is_quantized(module):
            weight = module.weight
            # bitsandbytes moves an int8 weight's scales into the layer's state at its first forward
            scales = weight.SCB if getattr(weight, "SCB", None) is not None else getattr(module, "state", None) and module.state.SCB
            quant = {"SCB": scales} if isinstance(module, bnb.nn.Linear8bitLt) else weight.quant_state.as_dict(packed=True)
            state[name.removeprefix("base_model.model.").replace(".base_layer", "")] = {"data": weight.data.clone(), **{k: v.clone() for k, v in quant.items() if torch.is_tensor(v)}}
    return state


def with_deltas(model, deltas):
    """`model` (a float model) with each `deltas` (module name -> S) added to its module's weight."""
    with torch.no_grad():
        for name, delta in deltas.items():
            model.get_submodule(name).weight.add_(delta)
    return model


def run_recording_experts(cascade, batches, lr=1e-2):
    """Train, recording each cycle's expert (A, B) just before the boundary merges it."""
    experts = []

    def record():
        if cascade.steps + 1 in cascade.ends:
            experts.append({n: (l.lora_A["default"].weight.detach().clone(), l.lora_B["default"].weight.detach().clone(),
                                l.scaling["default"]) for n, l in cascade.layers.items()})

    cascade.begin(len(batches))
    train_cascade(cascade, cascade.optimizer(lr=lr), batches, before_step=record)
    return experts


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"]).logits
