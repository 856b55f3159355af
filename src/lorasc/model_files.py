"""A model folder checked from its files alone, before anything is loaded or allocated.

The safetensors headers give every weight's name and shape in a few bytes: enough to find a
truncated or random weight file, LoRA targets that match no layer, and ranks no layer can hold.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

from .data import DataError

POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")
HEADER_LIMIT = 100 << 20  # safetensors' own bound on a header


def read_model_config(folder: str | Path) -> dict:
    path = Path(folder, "config.json")
    if not path.is_file():
        raise DataError(f"{folder} is not a model folder (no config.json); pass a folder written by save_pretrained")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); copy the model folder again") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise DataError(f"{path} has no 'model_type'; pass a folder written by save_pretrained")
    return config


def weight_shapes(folder: str | Path, fix: str = "copy it again from where the model came from") -> dict[str, list[int]]:
    """Every weight's shape, from the safetensors headers; {} for a model stored only as .bin.
    Refuses a folder without weights, and a truncated or corrupt .safetensors file."""
    folder = Path(folder)
    read_model_config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files and not any(folder.glob("*.bin")):
        raise DataError(f"{folder} has no weights (model.safetensors or pytorch_model.bin); copy the whole model folder")
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
            raise DataError(damaged)
        try:
            header = json.loads(f.read(length))
            tensors = {name: entry for name, entry in header.items() if name != "__metadata__"}
            end = max((entry["data_offsets"][1] for entry in tensors.values()), default=0)
            shapes = {name: list(entry["shape"]) for name, entry in tensors.items()}
        except (ValueError, TypeError, KeyError, IndexError):
            raise DataError(damaged) from None
    if size != 8 + length + end:
        raise DataError(damaged)
    return shapes


def position_limit(folder: str | Path) -> int | None:
    config = read_model_config(folder)
    limits = [config[key] for key in POSITION_LIMIT_KEYS if isinstance(config.get(key), int)]
    return min(limits) if limits else None


def targeted_shapes(shapes: dict[str, list[int]], targets) -> dict[str, list[int]]:
    """The 2-D weights of the modules that PEFT's `target_modules` selects (a list of name endings, or a regex)."""
    modules = {name.removesuffix(".weight"): shape for name, shape in shapes.items() if name.endswith(".weight") and len(shape) == 2}
    if isinstance(targets, str):
        return {name: shape for name, shape in modules.items() if re.fullmatch(targets, name)}
    return {name: shape for name, shape in modules.items() if any(name == t or name.endswith("." + t) for t in targets)}


def check_targets(folder: str | Path, targets, rank: int) -> None:
    """Refuses LoRA targets that match no layer of the model, and a rank above every targeted layer's."""
    shapes = weight_shapes(folder)
    if not shapes:
        return  # a .bin model: the engine checks its targets when it wraps the model
    targeted = targeted_shapes(shapes, targets)
    if not targeted:
        examples = sorted({name.removesuffix(".weight").rsplit(".", 1)[-1] for name in shapes if name.endswith(".weight")})[:8]
        raise DataError(f"expert.target_modules={targets!r} is not allowed: it matches no layer of {folder} (its layers end in names "
                        f"such as {examples}); pass --expert-target-modules with some of those")
    check_rank(targeted, rank, "--expert-r")


def check_rank(targeted: dict[str, list[int]], rank: int, flag: str) -> None:
    """A LoRA rank above min(out, in) of every targeted layer holds nothing more, and its factors would take
    rank·(out + in) numbers per layer: refused before anything is allocated."""
    full = max((min(shape) for shape in targeted.values()), default=rank)
    if rank > full:
        raise DataError(f"{flag} {rank} is not allowed: the adapted layers have full rank at most {full}; pass {flag} {full} or lower")


def check_max_length(folder: str | Path, max_length: int) -> None:
    limit = position_limit(folder)
    if limit is not None and max_length > limit:
        raise DataError(f"max_length={max_length} is not allowed: at most {limit}, the position limit of {folder}; pass --max-length {limit} or lower")
