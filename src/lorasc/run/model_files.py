"""A model folder checked from its files alone, before anything is loaded or allocated.

config.json is checked as transformers will read it: a model type it knows (lorasc never runs a
folder's own code), each field of its type, class names keyed by number. The safetensors headers give
every weight's name and shape in a few bytes, checked by safetensors against the bytes that follow:
enough to find a truncated or random weight file. The model built from config.json on the meta device
(no memory for its weights) is where PEFT finds LoRA targets that match no layer, and ranks no layer
can hold. Pickled weights (.bin) are never loaded: unpickling a file can run any code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import transformers
from accelerate import init_empty_weights
from huggingface_hub.errors import StrictDataclassError
from safetensors import SafetensorError, safe_open
from transformers import CONFIG_MAPPING, AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

from .errors import ModelError, refuse_special_file

POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
COPY_AGAIN = "copy it again from where the model came from"


def read_model_config(folder: str | Path) -> dict:
    path = Path(folder, "config.json")
    refuse_special_file(path, ModelError, COPY_AGAIN)
    if not path.is_file():
        raise ModelError(f"{folder} is not a model folder (no config.json); pass a folder written by save_pretrained")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise ModelError(f"{path} is not JSON that lorasc can read ({err}); {COPY_AGAIN}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ModelError(f"{path} has no 'model_type'; pass a folder written by save_pretrained")
    check_model_config(path, config)
    return config


def check_model_config(path: Path, config: dict) -> None:
    """Refuses what transformers would load only by running the folder's code, or fail on with a traceback."""
    model_type = config["model_type"]
    if model_type not in CONFIG_MAPPING:
        own_code = " and names its own code (auto_map): lorasc never runs a model folder's code" if "auto_map" in config else ""
        raise ModelError(f"{path} has model_type {model_type!r}, which transformers {transformers.__version__} does not know{own_code}; "
                         "use a model of a type that transformers knows")
    id2label = config.get("id2label")
    if id2label is not None and not (isinstance(id2label, dict) and all(key.isdecimal() and isinstance(name, str) for key, name in id2label.items())):
        raise ModelError(f'{path} has an id2label that does not map class numbers to names (like {{"0": "neg", "1": "pos"}}); fix it, or {COPY_AGAIN}')
    try:
        CONFIG_MAPPING[model_type].from_dict(config)  # transformers' own check of each field's type
    except (StrictDataclassError, TypeError, ValueError) as err:
        raise ModelError(f"{path} is not a valid {model_type} config ({str(err).splitlines()[-1].strip()}); fix it, or {COPY_AGAIN}") from None


def weight_shapes(folder: str | Path, fix: str = COPY_AGAIN) -> dict[str, list[int]]:
    """Every weight's shape, from the safetensors headers. Refuses a folder without safetensors weights,
    a file that is not a regular file (reading a pipe blocks for ever), and a damaged .safetensors file."""
    folder = Path(folder)
    read_model_config(folder)
    for path in folder.iterdir():
        refuse_special_file(path, ModelError, fix)
    files = sorted(folder.glob("*.safetensors"))
    if not files and any(folder.glob("*.bin")):
        raise ModelError(f"{folder} holds its weights only as pickled .bin files, and lorasc loads safetensors only (unpickling can run code); "
                         "convert them where you trust their source: from_pretrained, then save_pretrained writes model.safetensors")
    if not files:
        raise ModelError(f"{folder} has no weights (model.safetensors); copy the whole model folder")
    shapes = {}
    for path in files:
        shapes.update(_header_shapes(path, fix))
    return shapes


def _header_shapes(path: Path, fix: str) -> dict[str, list[int]]:
    """safetensors refuses a header whose shapes and data types do not fill each tensor's byte range exactly."""
    try:
        with safe_open(path, "pt") as weights:
            return {name: weights.get_slice(name).get_shape() for name in weights.keys()}
    except SafetensorError as err:
        raise ModelError(f"{path} is truncated or not a safetensors file ({err}); {fix}") from None


def empty_model(folder: str | Path, task: str) -> torch.nn.Module:
    """The model that `task` loads from `folder`, built from its config.json on the meta device: every
    module with its name and shape, and no memory for the weights (PEFT matches LoRA targets on it)."""
    read_model_config(folder)
    auto_class = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    with init_empty_weights():
        return auto_class.from_config(AutoConfig.from_pretrained(folder))


def position_limit(folder: str | Path) -> int | None:
    config = read_model_config(folder)
    limits = [config[key] for key in POSITION_LIMIT_KEYS if isinstance(config.get(key), int)]
    return min(limits) if limits else None


def check_max_length(folder: str | Path, max_length: int) -> None:
    limit = position_limit(folder)
    if limit is not None and max_length > limit:
        raise ModelError(f"max_length={max_length} is not allowed: at most {limit}, the position limit of {folder}; pass --max-length {limit} or lower")
