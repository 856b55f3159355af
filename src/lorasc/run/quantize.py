"""`--quantize nf4|fp4|int8`: the backbone loaded in 4 or 8 bits by bitsandbytes (the library's
quantized.py carries the cascade beside it), and the checks that refuse a run before any model loads."""

from __future__ import annotations

import importlib.util
import math

from ..config import LoRASCConfig, require
from ..methods import METHODS
from ..quantized import check_quantizable, check_stack_budget
from ..schedule import check_cycle_plan
from ..targets import adapted_shapes
from .errors import CliError
from .model_files import empty_model
from .run_config import DTYPES, RunConfig

BITS = {"nf4": 4, "fp4": 4, "int8": 8}
# Never quantized: a classifier head trains in full (a 4-bit one crashes bitsandbytes), and the LM head
# may share its weights with the embeddings.
UNQUANTIZED = ["classifier", "score", "lm_head"]


def bitsandbytes_installed() -> bool:
    return importlib.util.find_spec("bitsandbytes") is not None


def require_bitsandbytes(run: RunConfig) -> None:
    if not bitsandbytes_installed():
        raise CliError(f"--quantize {run.quantize} needs bitsandbytes, which is not installed; pip install 'lorasc[qlora]'")


def quantization_config(run: RunConfig):
    """transformers' BitsAndBytesConfig for the run, or None without --quantize."""
    if run.quantize is None:
        return None
    require_bitsandbytes(run)
    from transformers import BitsAndBytesConfig

    if run.quantize == "int8":
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=UNQUANTIZED)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=run.quantize, bnb_4bit_use_double_quant=run.quantize_double_quant,
                              bnb_4bit_compute_dtype=DTYPES[run.compute_dtype or run.dtype], llm_int8_skip_modules=UNQUANTIZED)


def check_quantized_run(run: RunConfig, config: LoRASCConfig, path: str, steps_per_epoch: int, total_steps: int) -> None:
    """Before anything loads: bitsandbytes is there, the method's settings can be carried beside quantized
    weights, and (slow_overflow stop) the planned stack fits slow_budget, on the model of folder `path`
    built on the meta device."""
    method_config = METHODS[run.method].config(config)
    if run.quantize is None:
        require(method_config.quantized_merge == "carry", "quantized_merge", method_config.quantized_merge,
                f"'carry' without --quantize (method {run.method!r} re-quantizes 4-bit weights); pass --quantize nf4 or fp4")
        return
    require_bitsandbytes(run)
    require(run.quantize != "int8" or method_config.quantized_merge == "carry", "quantized_merge", method_config.quantized_merge,
            f"'carry' with --quantize int8 (method {run.method!r} re-quantizes 4-bit weights); pass --quantize nf4 or fp4")
    require(run.method != "full", "method", run.method, "a LoRA method with --quantize: full fine-tuning trains every weight, "
            "and quantized weights do not train; pass --method lorasc")
    check_quantizable(method_config)
    if method_config.slow_overflow != "stop" or method_config.quantized_merge != "carry":
        return  # truncated when it passes the budget, or nothing carried
    shapes = adapted_shapes(empty_model(path, run.task), method_config.expert).values()
    cycles = check_cycle_plan(method_config, total_steps, steps_per_epoch)
    rank = cycles * method_config.expert.r
    packed = sum(math.ceil(out * inp * BITS[run.quantize] / 8) for out, inp in shapes)
    check_stack_budget([(rank, out + inp) for out, inp in shapes], packed, method_config.slow_budget)
