"""Checkpoints that hold only what cannot be rebuilt, written atomically, read without running code.

A checkpoint folder holds
- trainable.safetensors: the trainable parameters (the running expert and the head; every weight
  for full fine-tuning);
- state.pt: the cascade's state (cycle, plan, slow factors, expert-init state), the optimizer, the
  scheduler, float16's loss scaler and the RNG states: tensors in plain containers, read with
  `torch.load(weights_only=True)`;
- progress.json: the step, the log rows, the timers and the fingerprint of the base model files.
The backbone is not in it: on resume the engine rebuilds it (noisy mid-cycle) from the pristine
base model and the slow state, so the base model files must not change; the fingerprint checks that.
"""

from __future__ import annotations

import errno
import hashlib
import json
import pickle
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .metrics import LOG_FIELDS
from .run_files import remove, replacing, write_file

TRAINABLE, STATE, PROGRESS = "trainable.safetensors", "state.pt", "progress.json"
STATE_KEYS = {"cascade", "optimizer", "scheduler", "scaler", "rng"}
PROGRESS_TYPES = {"step": int, "rows": list, "elapsed": (int, float), "step_seconds": (int, float), "fingerprint": str}
MODEL_FILE_ENDINGS = (".safetensors", ".bin", ".index.json")  # weights, and the index of sharded ones
CHUNK = 1 << 24
LOW_SPACE = 1 << 20


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed; the message says why and what to do."""


@dataclass
class Checkpoint:
    trainable: dict[str, torch.Tensor]
    state: dict
    progress: dict


def model_fingerprint(folder: str | Path) -> str:
    """sha256 over the names and contents of config.json and the weight files of a model folder."""
    digest = hashlib.sha256()
    for path in sorted(Path(folder).iterdir()):
        if path.is_file() and (path.name == "config.json" or path.name.endswith(MODEL_FILE_ENDINGS)):
            digest.update(path.name.encode() + b"\0")
            with open(path, "rb") as f:
                while chunk := f.read(CHUNK):
                    digest.update(chunk)
    return digest.hexdigest()


def trainable_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def set_trainable_dtype(model: torch.nn.Module, dtype: torch.dtype) -> None:
    for p in trainable_parameters(model).values():
        p.data = p.data.to(dtype)


def rng_states() -> dict:
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None}


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["cpu"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])


def save_checkpoint(run_dir: Path, step: int, trainable: dict[str, torch.Tensor], state: dict, progress: dict, kept: int = 2) -> None:
    """Write checkpoint-<step>, then point LATEST at it with an atomic rename: a crash mid-write
    leaves the previous checkpoint as the latest good one. Keeps the `kept` newest (--save-total-limit)."""
    final = run_dir / f"checkpoint-{step}"
    try:
        with replacing(final) as folder:
            folder.mkdir()
            save_file({name: t.detach().to("cpu", copy=True).contiguous() for name, t in trainable.items()}, folder / TRAINABLE)
            torch.save(state, folder / STATE)
            (folder / PROGRESS).write_text(json.dumps({"step": step, **progress}))
    except (OSError, RuntimeError, SafetensorError) as err:
        raise disk_full(err, run_dir) or err
    write_file(run_dir / "LATEST", final.name)
    for old in checkpoint_folders(run_dir)[kept:]:
        remove(old)


def remove_checkpoints(run_dir: Path) -> None:
    """A finished run's outputs replace its checkpoints."""
    for folder in checkpoint_folders(run_dir):
        remove(folder)
    remove(run_dir / "LATEST")


def disk_full(err: Exception, folder: Path) -> OSError | None:
    """The OSError behind a write into `folder` that failed on a full disk, naming a path: torch.save and
    safetensors report it as RuntimeError or SafetensorError, torch.save without naming the cause."""
    if isinstance(err, OSError) and err.errno != errno.ENOSPC:
        return None
    if isinstance(err, OSError) or "os error 28" in str(err) or (folder.exists() and shutil.disk_usage(folder).free < LOW_SPACE):
        return err if getattr(err, "filename", None) else OSError(errno.ENOSPC, "No space left on device", str(folder))
    return None


def load_checkpoint(run_dir: Path, fingerprint: str, restore: Callable[[Checkpoint], None]) -> Checkpoint | None:
    """Restore the run's newest usable checkpoint with `restore` and return it; None if the run has none.
    One that is damaged (truncated, emptied) or well-formed but wrong (`restore` fails on it) is skipped
    for the one before it, with a note. Refuses (CheckpointError) a checkpoint written for other base
    model files, and any state file that would need unpickling objects."""
    unusable = []
    for folder in checkpoint_folders(run_dir):
        try:
            checkpoint = read_checkpoint(folder)
            check_fingerprint(checkpoint, folder, fingerprint)
            _restore(restore, checkpoint)
        except DamagedCheckpoint as err:
            unusable.append(f"{folder.name} is unreadable ({err})")
            continue
        if unusable:
            print(f"lorasc: note: {'; '.join(unusable)}; resuming from {folder.name}, the newest readable checkpoint", file=sys.stderr)
        return checkpoint
    if unusable:
        raise CheckpointError(f"{run_dir} has no readable checkpoint: {'; '.join(unusable)}; start a new run (--output-dir NEW)")
    return None


def check_fingerprint(checkpoint: Checkpoint, folder: Path, fingerprint: str) -> None:
    if checkpoint.progress["fingerprint"] != fingerprint:
        raise CheckpointError(
            f"the base model files changed since {folder} was written (their sha256 fingerprint differs): the checkpoint "
            "holds no backbone, so it resumes only on the exact files the run started from; restore them or start a new run"
        )


def _restore(restore: Callable[[Checkpoint], None], checkpoint: Checkpoint) -> None:
    """`restore`, with the errors that a well-formed but wrong state raises (`cascade: {}`, a list where a
    tensor belongs) turned into DamagedCheckpoint. Each restore sets every part of the run's state, so a
    later one undoes whatever a failed one set."""
    try:
        restore(checkpoint)
    except torch.OutOfMemoryError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError) as err:
        raise DamagedCheckpoint(f"its state does not fit this run: {type(err).__name__} {' '.join(str(err).split())[:100]}") from None


def checkpoint_folders(run_dir: Path) -> list[Path]:
    """checkpoint-<step> folders, newest first. Each was renamed into place only once complete, so
    the newest is the latest good one even when a crash came before LATEST was updated."""
    folders = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-", 1)[1].isdigit()]
    return sorted(folders, key=lambda p: int(p.name.split("-", 1)[1]), reverse=True)


class DamagedCheckpoint(Exception):
    """A checkpoint file that is missing, truncated or not what lorasc writes."""


def _damaged(name: str, err: Exception) -> str:
    return f"{name} is missing" if isinstance(err, FileNotFoundError) else f"{name} is truncated or damaged"


def read_checkpoint(folder: Path) -> Checkpoint:
    progress = read_progress(folder)
    try:
        trainable = load_file(folder / TRAINABLE)
    except (OSError, SafetensorError) as err:
        raise DamagedCheckpoint(_damaged(TRAINABLE, err)) from None
    state = load_state(folder / STATE)
    if not STATE_KEYS <= state.keys():
        raise DamagedCheckpoint(f"{STATE} lacks entries that lorasc writes")
    return Checkpoint(trainable, state, progress)


def read_progress(folder: Path) -> dict:
    """progress.json, with each entry of the type lorasc writes: log.csv is rewritten from its rows."""
    try:
        progress = json.loads((folder / PROGRESS).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DamagedCheckpoint(_damaged(PROGRESS, err)) from None
    if not isinstance(progress, dict):
        raise DamagedCheckpoint(f"{PROGRESS} is not a JSON object")
    for key, kind in PROGRESS_TYPES.items():
        if not isinstance(progress.get(key), kind):
            raise DamagedCheckpoint(f"{PROGRESS} has {key}={progress.get(key)!r:.40}, not what lorasc writes")
    if not all(isinstance(row, dict) and row.keys() <= set(LOG_FIELDS) for row in progress["rows"]):
        raise DamagedCheckpoint(f"{PROGRESS} has rows that are not rows of log.csv")
    return progress


def load_state(path: Path) -> dict:
    """torch.load with weights_only=True: tensors and plain containers only, so nothing in the file can run."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path} holds pickled objects other than tensors and plain containers; refused without loading it, since "
            "unpickling them could run code: resume only checkpoints written by lorasc, or start a new run"
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise DamagedCheckpoint(_damaged(STATE, err)) from None
    if not isinstance(state, dict):
        raise DamagedCheckpoint(f"{STATE} is not a dictionary")
    return state
