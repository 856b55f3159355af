"""A run's model and tokenizer, loaded from a checked model folder, and its classifier head checked against the data."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from ..targets import default_target_modules
from .assets import resolve_model
from .errors import ModelError
from .model_files import read_model_config, weight_shapes
from .quantize import quantization_config
from .run_config import RunConfig


def model_path(run: RunConfig) -> str:
    return resolve_model(run.model)


def load_model(run: RunConfig, labels: tuple[str, ...], device: torch.device):
    """The base model in the run's dtype (a new classifier head seeded by the run's seed), and its tokenizer;
    with --quantize, in 4 or 8 bits, loaded straight onto `device` (bitsandbytes quantizes while it loads)."""
    path = model_path(run)
    weight_shapes(path)  # refuses a damaged folder before transformers reads it
    tokenizer = load_tokenizer(path)
    torch.manual_seed(run.seed)  # the new head's initialisation
    quantized = {} if run.quantize is None else {"quantization_config": quantization_config(run), "device_map": {"": device}}
    if run.task == "causal-lm":
        return from_pretrained(AutoModelForCausalLM, path, dtype=run.torch_dtype, **quantized), tokenizer
    check_head(path, labels)
    note_relabelled_head(path, labels)
    model = from_pretrained(AutoModelForSequenceClassification, path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                            label2id={l: i for i, l in enumerate(labels)}, dtype=run.torch_dtype, **quantized)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def dense_run(run: RunConfig, run_dir: Path) -> RunConfig:
    """The settings that load a finished run's dense model: RUN/model, in float (never quantized)."""
    return dataclasses.replace(run, model=str(run_dir / "model"), quantize=None, quantize_double_quant=False, compute_dtype=None)


def from_pretrained(auto_class, path: str, **settings):
    """A model from a checked folder: from safetensors only (never a pickle), and weights that do not fit its config.json refused in one line."""
    try:
        return auto_class.from_pretrained(path, use_safetensors=True, **settings)
    except RuntimeError as err:
        if "ignore_mismatched_sizes" not in str(err):  # transformers' "size mismatch" report
            raise
        raise ModelError(f"{path} has weights whose shapes do not fit its config.json; copy the model folder again") from None


def load_tokenizer(path: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, AttributeError, RecursionError) as err:  # tokenizer_config.json fields of the wrong type or depth
        raise ModelError(f"{path} has no tokenizer that loads ({' '.join(str(err).split())[:200]}); save it there with tokenizer.save_pretrained") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def trained_labels(path: str) -> list[str] | None:
    """The class names of a folder's trained classifier head; None for a model without one."""
    config = read_model_config(path)
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return None
    return [name for _, name in sorted((config.get("id2label") or {}).items(), key=lambda item: int(item[0]))]


def check_head(path: str, labels: tuple[str, ...]) -> None:
    trained = trained_labels(path)
    if trained is not None and len(trained) != len(labels):
        raise ModelError(f"{path} has a {len(trained)}-class head but the data has {len(labels)} labels {list(labels)}; use a base model or matching data")


def note_relabelled_head(path: str, labels: tuple[str, ...]) -> None:
    """A trained head keeps its rows: the data's labels take them in order, whatever they meant before."""
    trained = trained_labels(path)
    if trained is not None and trained != list(labels):
        print(f"lorasc: note: the {len(labels)}-class head of {path} was trained for {trained}; its classes now mean "
              f"{list(labels)} in that order (rename the data's labels to keep their meaning)", file=sys.stderr)


def default_targets(path: str) -> list[str]:
    """LoRA targets for a model folder (targets.py: every BERT projection, else PEFT's choice)."""
    return default_target_modules(read_model_config(path)["model_type"])
