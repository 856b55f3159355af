"""A model folder checked from its files alone, before anything is loaded or allocated.

The safetensors headers give every weight's name and shape in a few bytes: enough to find a
truncated or random weight file, LoRA targets that match no layer, and ranks no layer can hold.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

from .errors import ModelError

POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
HEADER_LIMIT = 100 << 20  # safetensors' own bound on a header


def read_model_config(folder: str | Path) -> dict:
    path = Path(folder, "config.json")
    if not path.is_file():
        raise ModelError(f"{folder} is not a model folder (no config.json); pass a folder written by save_pretrained")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"{path} is not valid JSON ({err}); copy the model folder again") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelError(f"{path} has no 'model_type'; pass a folder written by save_pretrained")
    return config


def weight_shapes(folder: str | Path, fix: str = "copy it again from where the model came from") -> dict[str, list[int]]:
    """Every weight's shape, from the safetensors headers; {} for a model stored only as .bin.
    Refuses a folder without weights, and a truncated or corrupt .safetensors file."""
    folder = Path(folder)
    read_model_config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files and not any(folder.glob("*.bin")):
        raise ModelError(f"{folder} has no weights (model.safetensors or pytorch_model.bin); copy the whole model folder")
    shapes = {}
    for path in files:
        shapes.update(_header_shapes(path, fix))
    return shapes


def _header_shapes(path: Path, fix: str) -> dict[str, list[int]]:
    damaged = f"{path} is truncated or not a safetensors file; {fix}"
    size = path.stat().st_size
    with open(path, "rb") as f:
        prefix = f.read(8)
        length = struct.unpack("<Q", prefix)[0] if len(prefix) == 8 else -1
        if not 0 < length <= min(HEADER_LIMIT, size - 8):
            raise ModelError(damaged)
        try:
            header = json.loads(f.read(length))
            tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
            end = max((entry["data_offsets"][1] for entry in tensors.values()), default=0)
            shapes = {name: list(entry["shape"]) for name, entry in tensors.items()}
        except (ValueError, TypeError, KeyError, IndexError):
            raise ModelError(damaged) from None
    if size != 8 + length + end:
        raise ModelError(damaged)
    return shapes


def position_limit(folder: str | Path) -> int | None:
    config = read_model_config(folder)
    limits = [config[key] for key in POSITION_LIMIT_KEYS if isinstance(config.get(key), int)]
    return min(limits) if limits else None


def check_max_length(folder: str | Path, max_length: int) -> None:
    limit = position_limit(folder)
    if limit is not None and max_length > limit:
        raise ModelError(f"max_length={max_length} is not allowed: at most {limit}, the position limit of {folder}; pass --max-length {limit} or lower")
