"""transformers' TrainingArguments names in lorasc: the one table that flags and config files read.

A TrainingArguments name means what it means to `Trainer`. Most are another spelling of a lorasc
setting (RENAMED, SAME); three set one by a rule (bf16 / fp16 set the dtype; the global batch is
per_device_train_batch_size × gradient_accumulation_steps × the processes); the ones lorasc does not
implement are refused unless they ask for what lorasc does (REFUSED). config.yaml records lorasc's names.
"""

from __future__ import annotations

import os

from ..config import require
from .run_config import RunConfig

RENAMED = {"learning_rate": "lr", "num_train_epochs": "epochs", "gradient_accumulation_steps": "grad_accum", "logging_steps": "log_every",
           "eval_steps": "eval_every", "save_steps": "checkpoint_every"}
SAME = ("max_steps", "warmup_steps", "warmup_ratio", "weight_decay", "max_grad_norm", "gradient_checkpointing", "save_total_limit", "seed",
        "report_to", "output_dir")
PER_DEVICE = "per_device_train_batch_size"
PRECISIONS = {"bf16": "bfloat16", "fp16": "float16"}
DERIVED = {PER_DEVICE: "int", **{name: "bool" for name in PRECISIONS}}  # their kinds, as RunConfig's fields
# name: (the values that ask for what lorasc does, what lorasc does)
REFUSED = {"lr_scheduler_type": (("cosine",), "lorasc's schedule is a linear warmup, then cosine decay with a re-warmup after each cycle "
                                              "(--warmup-steps, --rewarmup-steps)"),
           "optim": (("adamw_torch", "adamw_torch_fused"), "lorasc trains with torch's AdamW (--weight-decay; LoRA+ with --loraplus-lr-ratio)"),
           "label_smoothing_factor": (("0", "0.0"), "lorasc trains on the plain cross-entropy"),
           "torch_compile": (("false",), "lorasc runs the model eagerly")}


def flag_spellings(field: str) -> list[str]:
    """The flags of the TrainingArguments names that mean `field`, both `--learning_rate` and `--learning-rate`, beside `--field`."""
    names = [name for name, native in RENAMED.items() if native == field] + [field] * (field in (*SAME, *DERIVED, *REFUSED))
    own = "--" + field.replace("_", "-")
    return [flag for name in names for flag in dict.fromkeys(("--" + name.replace("_", "-"), "--" + name)) if flag != own]


def refuse_unimplemented(values: dict) -> None:
    """A TrainingArguments name lorasc does not implement, unless its value asks for what lorasc does."""
    for name, (accepted, instead) in REFUSED.items():
        if name in values:
            require(str(values[name]).lower() in accepted, name, values[name], f"{' or '.join(accepted)} ({instead})")


def renamed(values: dict) -> dict:
    """`values` (a config file's section) with TrainingArguments' renamed names in lorasc's spelling."""
    refuse_unimplemented(values)
    native = {}
    for name, value in values.items():
        field = RENAMED.get(name, name)
        require(field not in native, name, value, f"absent beside {field}, which names the same setting; keep one of them")
        if name not in REFUSED:
            native[field] = value
    return native


def layered(values: dict, layer: dict) -> dict:
    """The run's typed `values` with a later `layer` over them (a file over defaults, flags over a file):
    bf16 / fp16 set the dtype; per_device_train_batch_size waits for the global batch (global_batch),
    and a later batch_size replaces it, or it a batch_size."""
    layer = dict(layer)
    asked = [name for name in PRECISIONS if layer.pop(name, False)]
    require(len(asked) <= 1, asked[-1] if asked else "fp16", True, "absent beside bf16=True: one precision; pass bf16 or fp16")
    for name in asked:
        require(layer.get("dtype", PRECISIONS[name]) == PRECISIONS[name], name, True, f"absent beside dtype={layer.get('dtype')!r}; keep one of them")
        layer["dtype"] = PRECISIONS[name]
    require(not {PER_DEVICE, "batch_size"} <= set(layer), PER_DEVICE, layer.get(PER_DEVICE),
            "absent beside batch_size, the global batch (per_device_train_batch_size × gradient_accumulation_steps × processes); keep one of them")
    if layer.keys() & {PER_DEVICE, "batch_size"}:
        values = {k: v for k, v in values.items() if k not in (PER_DEVICE, "batch_size")}
    return {**values, **layer}


def global_batch(values: dict) -> dict:
    """The resolved `values` with per_device_train_batch_size turned into lorasc's batch_size, the global
    batch of one optimizer step: per device × grad_accum × the processes of the launch (WORLD_SIZE)."""
    if PER_DEVICE not in values:
        return values
    values = dict(values)
    per_device = values.pop(PER_DEVICE)
    require(per_device >= 1, PER_DEVICE, per_device, "an integer >= 1")
    values["batch_size"] = per_device * values.get("grad_accum", RunConfig.grad_accum) * int(os.environ.get("WORLD_SIZE", "1"))
    return values
