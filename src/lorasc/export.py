"""Exports of a finished cascade: the dense model, the exact stacked adapter, a compressed adapter.

The stacked and compressed adapters describe the *clean* backbone's change, so they are only
exact once the noise is off the weights: every export refuses a cascade with a cycle still running.
Every export folder gets a model card (README.md, card.py) and, where one is given, the tokenizer.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
from peft.tuners.lora import LoraLayer
from peft.utils.other import transpose
from safetensors.torch import save_file

from .card import LABELLED, Origin, write_card
from .cascade import LoRASC
from .quantized import load_arguments
from .slow import compress


def _require_finished(cascade: LoRASC) -> None:
    if cascade.in_cycle:
        raise RuntimeError(f"cycle {cascade.cycle} is running with noise on the backbone; call cascade.finish() before exporting")


def origin_of(cascade: LoRASC) -> Origin:
    """What a card says about where the cascade's exports came from."""
    expert = cascade.model.peft_config[cascade.adapter]
    model_config = getattr(cascade.model, "config", None)
    labels = getattr(model_config, "id2label", None) if expert.task_type in LABELLED else None
    return Origin(expert.base_model_name_or_path, cycles=cascade.num_cycles, slow_alpha=cascade.config.slow_alpha,
                  noise_lambda=cascade.config.noise_lambda, expert_rank=expert.r, id2label=labels,
                  quantization=load_arguments(getattr(model_config, "quantization_config", None)))


def describe_export(cascade: LoRASC, out_dir: str | Path, tokenizer=None, figures: dict | None = None) -> Path:
    """The tokenizer (if given) and the model card beside an export; `figures` maps a split ("test",
    "ood") to its metrics, for the card."""
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    write_card(out_dir, origin_of(cascade), figures)
    return Path(out_dir)


def export_dense(cascade: LoRASC, out_dir: str | Path, tokenizer=None, dtype: torch.dtype | None = None, figures: dict | None = None) -> Path:
    """The merged model as a plain transformers checkpoint: same architecture and latency as the base;
    every weight in `dtype` if given (e.g. a float32 head on a bfloat16 backbone). From a quantized
    backbone: deQ(W0_q) + S, dequantized, in `dtype` or the dtype it was loaded in, rounded once. With its
    model card (the run's `figures` in it, if given) and the tokenizer, if given."""
    _require_finished(cascade)
    dense = copy.deepcopy(cascade.model).unload()  # the expert is zero between cycles: nothing left to merge
    cascade.backbone.materialized(dense, cascade.slow, dtype).save_pretrained(out_dir)
    return describe_export(cascade, out_dir, tokenizer, figures)


def stacked_factors(cascade: LoRASC) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """A_cat = [c·A_1; …; c·A_T], B_cat = [c·B_1 … c·B_T] per layer, so B_cat·A_cat = Σ_t α·s·B_t·A_t;
    slow.NoStackedAdapter (a ValueError) for an expert whose merge is not low-rank (DoRA)."""
    return cascade.slow.stacked_factors()


def total_deltas(cascade: LoRASC) -> dict[str, torch.Tensor]:
    """W − W0 per adapted layer in float32, in LoRA orientation (out × in): the exact slow state S."""
    _require_finished(cascade)
    deltas = {}
    for name, layer in cascade.layers.items():
        w0 = cascade.backbone.pristine32(cascade.backbone.param_of[name])
        deltas[name] = transpose(cascade.slow.delta(name, layer, w0).cpu(), layer.fan_in_fan_out)
    return deltas


def weight_deltas(layers: dict[str, LoraLayer], base_model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Each PEFT layer's base weight minus the same weight in `base_model`, in LoRA orientation."""
    originals = dict(base_model.named_parameters())
    deltas = {}
    for name, layer in layers.items():
        w0 = originals[name.removeprefix("base_model.model.") + ".weight"]
        delta = (layer.get_base_layer().weight.detach() - w0.detach()).float().cpu()
        deltas[name] = delta.T if layer.fan_in_fan_out else delta
    return deltas


def effective_rank(singular_values: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank: exp of the entropy of the normalised singular values."""
    p = singular_values[singular_values > 0]
    p = p / p.sum()
    return math.exp(-(p * p.log()).sum().item())


def delta_ranks(cascade: LoRASC) -> dict[str, float]:
    """Effective rank of the total delta of each adapted layer."""
    return {name: effective_rank(torch.linalg.svdvals(d)) for name, d in total_deltas(cascade).items()}


def write_adapter(out_dir: str | Path, factors: dict, rank: int, template: LoraConfig, extra_state: dict) -> Path:
    """A standard PEFT adapter folder whose scale is 1 (lora_alpha = r): the factors carry the scale.

    `factors` maps PEFT layer names (`base_model.model.<module>`) to (A, B); `extra_state` holds the
    other adapter tensors (e.g. a trained head in `modules_to_save`), already in PEFT's key format.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = LoraConfig(
        r=rank,
        lora_alpha=rank,
        target_modules=sorted({n.rsplit(".", 1)[-1] for n in factors}),
        fan_in_fan_out=template.fan_in_fan_out,
        modules_to_save=template.modules_to_save,
        task_type=template.task_type,
        base_model_name_or_path=template.base_model_name_or_path,
    )
    config.save_pretrained(out)
    state = dict(extra_state)
    for name, (a, b) in factors.items():
        state[f"{name}.lora_A.weight"] = a
        state[f"{name}.lora_B.weight"] = b
    save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, out / "adapter_model.safetensors")
    return out


def _write_cascade_adapter(cascade: LoRASC, out_dir: str | Path, factors: dict, rank: int) -> Path:
    state = get_peft_model_state_dict(cascade.model, adapter_name=cascade.adapter)
    head = {k: v for k, v in state.items() if ".lora_" not in k}
    return write_adapter(out_dir, factors, rank, cascade.model.peft_config[cascade.adapter], head)


def export_stacked(cascade: LoRASC, out_dir: str | Path, tokenizer=None, figures: dict | None = None) -> Path:
    """The exact rank-T·r adapter that vanilla `PeftModel.from_pretrained` loads on the original base model,
    with its model card and the tokenizer (as in `export_dense`)."""
    _require_finished(cascade)
    factors = stacked_factors(cascade)
    _write_cascade_adapter(cascade, out_dir, factors, rank=next(iter(factors.values()))[0].shape[0])
    return describe_export(cascade, out_dir, tokenizer, figures)


def write_compression_report(out_dir: str | Path, rank: int, errors: dict[str, float]) -> None:
    Path(out_dir, "compression.json").write_text(json.dumps({"rank": rank, "relative_error": errors}, indent=2))


def export_compressed(cascade: LoRASC, out_dir: str | Path, rank: int, tokenizer=None, figures: dict | None = None) -> dict[str, float]:
    """A rank-`rank` adapter from the truncated SVD of each layer's total delta, with its model card and
    the tokenizer (as in `export_dense`).

    Returns (and writes to `compression.json`, summarized in the card) the relative Frobenius error per layer.
    """
    factors, errors = compress(total_deltas(cascade), rank)
    write_compression_report(_write_cascade_adapter(cascade, out_dir, factors, rank), rank, errors)
    describe_export(cascade, out_dir, tokenizer, figures)
    return errors


def export_compressed_between(tuned: torch.nn.Module, base: torch.nn.Module, expert: LoraConfig, out_dir: str | Path, rank: int) -> dict[str, float]:
    """A compressed adapter of `tuned − base` on the layers `expert` targets, from two plain models
    (e.g. a saved dense export and its base): works for every expert type, DoRA included.
    `tuned` is wrapped by PEFT in place to name the layers and collect its trained head."""
    view = get_peft_model(tuned, expert)
    view.peft_config["default"].base_model_name_or_path = base.name_or_path
    layers = {n: m for n, m in view.named_modules() if isinstance(m, LoraLayer)}
    head = {k: v for k, v in get_peft_model_state_dict(view).items() if ".lora_" not in k}
    factors, errors = compress(weight_deltas(layers, base), rank)
    write_compression_report(write_adapter(out_dir, factors, rank, view.peft_config["default"], head), rank, errors)
    return errors
