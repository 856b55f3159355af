"""The scale benchmark's models and data: Llama presets from a config (random weights) or the
packaged MiniLM, and random batches for them."""

from __future__ import annotations

import dataclasses

import torch

from lorasc.targets import BERT_TARGETS

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MINILM_LABELS = 3


@dataclasses.dataclass(frozen=True)
class Preset:
    batch: int
    seq: int
    steps_per_cycle: int
    dtype: str
    llama: dict | None = None  # LlamaConfig fields; None: the packaged MiniLM


def llama(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> dict:
    return dict(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab)


PRESETS = {
    "tiny": Preset(batch=2, seq=32, steps_per_cycle=3, dtype="bfloat16", llama=llama(128, 344, 2, 4, 2, 512)),
    "125m": Preset(batch=4, seq=256, steps_per_cycle=5, dtype="bfloat16", llama=llama(768, 2048, 12, 12, 4, 32000)),
    "350m": Preset(batch=4, seq=256, steps_per_cycle=8, dtype="bfloat16", llama=llama(1024, 2816, 24, 16, 4, 32000)),
    "1b": Preset(batch=4, seq=512, steps_per_cycle=20, dtype="bfloat16", llama=llama(2048, 5632, 22, 32, 4, 32000)),
    "minilm": Preset(batch=16, seq=64, steps_per_cycle=20, dtype="float32"),
}


def build_model(preset: Preset, dtype: torch.dtype, device: torch.device, seed: int) -> tuple[torch.nn.Module, list[str], str]:
    """The base model on `device` in `dtype`, the LoRA target names and PEFT's task type."""
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    if preset.llama is None:
        from transformers.utils import logging as hf_logging

        from lorasc.run.assets import default_model_path

        hf_logging.disable_progress_bar()
        model = AutoModelForSequenceClassification.from_pretrained(default_model_path(), num_labels=MINILM_LABELS)
        return model.to(device, dtype), list(BERT_TARGETS), "SEQ_CLS"
    with torch.device(device):
        model = LlamaForCausalLM(LlamaConfig(**preset.llama))
    return model.to(dtype), LLAMA_TARGETS, "CAUSAL_LM"


def random_batches(count: int, batch: int, seq: int, vocab: int, task: str, device: torch.device, seed: int) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        ids = torch.randint(0, vocab, (batch, seq), generator=gen)
        labels = ids if task == "CAUSAL_LM" else torch.randint(0, MINILM_LABELS, (batch,), generator=gen)
        batches.append({"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device)})
    return batches
