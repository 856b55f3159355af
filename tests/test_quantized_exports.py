"""Exports of a cascade on a quantized backbone: the stacked adapter on the same 4-bit backbone, the
dense model rounded once, the re-quantized model and what survives in it, and the adapter's card."""

import copy
import json
import warnings

import pytest
import torch
from conftest import token_batches

pytest.importorskip("bitsandbytes")
from peft import PeftModel  # noqa: E402
from quantized_models import ALPHA, QUANTIZATIONS, load_quantized, logits, quantized_config, run_recording_experts  # noqa: E402
from transformers import AutoModelForCausalLM, BitsAndBytesConfig  # noqa: E402

from lorasc import LoRASC, export_dense, export_stacked  # noqa: E402
from lorasc.quantized import dequantized, is_quantized, keep_dequantize_path  # noqa: E402
from lorasc.requantize import export_requantized  # noqa: E402


def test_exports_from_a_quantized_backbone(llama_folder, tmp_path):
    cascade = LoRASC(load_quantized(llama_folder), quantized_config())
    run_recording_experts(cascade, token_batches(6))
    probe = token_batches(1, seed=7)[0]
    trained = logits(cascade.model, probe)

    export_stacked(cascade, tmp_path / "adapter")  # the QLoRA deliverable, on a freshly loaded 4-bit backbone
    loaded = PeftModel.from_pretrained(load_quantized(llama_folder), tmp_path / "adapter")
    assert (logits(loaded, probe) - trained).abs().max() <= 1e-5

    export_dense(cascade, tmp_path / "model")  # deQ(W0_q) + S, a plain float model
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert not any(is_quantized(m) for m in dense.modules()) and getattr(dense.config, "quantization_config", None) is None
    assert (logits(dense, probe) - trained).abs().max() <= 1e-5


@pytest.mark.parametrize("scale, survives", [(0.005, False), (0.5, True)])
def test_the_requantized_export_reports_what_survives(llama_folder, tmp_path, scale, survives):
    """A delta far below half an NF4 code step (about 0.04 × a block's absmax) rounds back to the
    codes; one of the size of the weights mostly survives."""
    base = load_quantized(llama_folder)
    dense = copy.deepcopy(base).dequantize(dtype=torch.float32)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name in ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"):
            weight = dense.get_submodule(name).weight
            weight.add_(scale * weight.abs().max() * torch.randn(weight.shape, generator=gen).clamp(-1, 1))
    dense.save_pretrained(tmp_path / "model")
    config = BitsAndBytesConfig(**QUANTIZATIONS["nf4"], bnb_4bit_compute_dtype=torch.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fractions = export_requantized(tmp_path / "model", base, config, tmp_path / "requantized")
    assert sorted(fractions) == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    report = json.loads((tmp_path / "requantized" / "requantization.json").read_text())
    assert report["surviving_fraction"] == pytest.approx(fractions)
    if survives:
        assert min(fractions.values()) > 0.5 and not [w for w in caught if "erased" in str(w.message)]
    else:
        assert max(fractions.values()) < 0.1 and [w for w in caught if "most of what the cascade learned is erased" in str(w.message)]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "requantized", device_map="cpu")
    assert is_quantized(reloaded.get_submodule("model.layers.0.self_attn.q_proj"))


def test_the_stacked_adapters_card_loads_it_on_the_quantized_backbone(llama_folder, tmp_path, monkeypatch):
    """The card of an adapter trained on NF4 weights says so, and its code loads it there (with the
    quantization config it prints): the trained logits within 1e-5, once on the dequantize path."""
    from test_cards import read_card, run_loading_code

    cascade = LoRASC(load_quantized(llama_folder), quantized_config())
    run_recording_experts(cascade, token_batches(6))
    probe = token_batches(1, seed=7)[0]
    export_stacked(cascade, tmp_path / "adapter")
    meta, text = read_card(tmp_path / "adapter")
    assert "4-bit nf4" in text and "merge_and_unload() would re-quantize" in text and meta["library_name"] == "peft"
    loaded = run_loading_code(tmp_path / "adapter", monkeypatch)["model"]
    keep_dequantize_path(loaded)  # as the card's comment says, for this CPU
    assert any(is_quantized(m) for m in loaded.modules())
    assert (logits(loaded.train(), probe) - logits(cascade.model, probe)).abs().max() <= 1e-5


def test_the_dense_export_of_a_bfloat16_backbone_rounds_once(llama_folder, tmp_path):
    """With the backbone loaded in bfloat16, each adapted weight of the dense export is exactly
    round_bf16(deQ(W0_q) + S), S summed in float32 from the experts as recorded."""
    config = BitsAndBytesConfig(**QUANTIZATIONS["nf4"], bnb_4bit_compute_dtype=torch.bfloat16)
    model = AutoModelForCausalLM.from_pretrained(llama_folder, quantization_config=config, device_map="cpu", dtype=torch.bfloat16)
    deq = {name: dequantized(module) for name, module in model.named_modules() if is_quantized(module)}
    cascade = LoRASC(model, quantized_config())
    experts = run_recording_experts(cascade, token_batches(6))
    export_dense(cascade, tmp_path / "model")
    dense = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.bfloat16)
    for name in cascade.layers:
        module = name.removeprefix("base_model.model.")
        delta = sum(ALPHA * s * (b.float() @ a.float()) for a, b, s in (e[name] for e in experts))
        assert torch.equal(dense.get_submodule(module).weight, (deq[module] + delta).to(torch.bfloat16)), module
    untouched = "model.layers.0.mlp.up_proj"
    assert torch.equal(dense.get_submodule(untouched).weight, deq[untouched].to(torch.bfloat16))
