"""What an expert adapts on a model: the default target modules per architecture, the PEFT task type of
its head, and targets and rank checked against a model's weight shapes (read from its files before
anything is loaded)."""

from __future__ import annotations

import re

import torch
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
                                                    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
                                                    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES)

BERT_TARGETS = ["query", "key", "value", "dense"]  # every BERT projection: MiniLM's attention and MLP
# PEFT's task type per transformers head class: it trains a new head in full (modules_to_save) and
# names the exported adapter's task, so that AutoPeftModelFor* loads it
HEAD_CLASSES = {"SEQ_CLS": MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES, "TOKEN_CLS": MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
                "QUESTION_ANS": MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES, "CAUSAL_LM": MODEL_FOR_CAUSAL_LM_MAPPING_NAMES}


def default_target_modules(model_type: str | None) -> list[str]:
    """Every BERT projection, else PEFT's choice for the architecture."""
    if model_type == "bert":
        return list(BERT_TARGETS)
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    raise ValueError(f"expert.target_modules=None is not allowed: PEFT has no default LoRA target modules for model type {model_type!r}; "
                     "name the layers to adapt in expert.target_modules")


def task_type_of(model: torch.nn.Module) -> str | None:
    """PEFT's task type for a transformers model (or a subclass of one) by its head; None for any other model."""
    classes = {cls.__name__ for cls in type(model).__mro__}
    return next((task for task, heads in HEAD_CLASSES.items() if classes & set(heads.values())), None)


def targeted_shapes(shapes: dict[str, list[int]], targets) -> dict[str, list[int]]:
    """The 2-D weights of the modules that PEFT's `target_modules` selects (a list of name endings, or a regex)."""
    modules = {name.removesuffix(".weight"): shape for name, shape in shapes.items() if name.endswith(".weight") and len(shape) == 2}
    if isinstance(targets, str):
        return {name: shape for name, shape in modules.items() if re.fullmatch(targets, name)}
    return {name: shape for name, shape in modules.items() if any(name == t or name.endswith("." + t) for t in targets)}


def check_targets(shapes: dict[str, list[int]], targets, rank: int) -> None:
    """Refuses LoRA targets that match no layer of the model, and a rank above every targeted layer's."""
    if targets is None:
        return  # the architecture's default targets: the engine checks them when it wraps the model
    targeted = targeted_shapes(shapes, targets)
    if not targeted:
        examples = sorted({name.removesuffix(".weight").rsplit(".", 1)[-1] for name in shapes if name.endswith(".weight")})[:8]
        raise ValueError(f"expert.target_modules={targets!r} is not allowed: it matches no layer of the model (its layers end in names "
                         f"such as {examples}); pass expert.target_modules with some of those")
    check_rank(targeted, rank, "expert.r")


def check_rank(targeted: dict[str, list[int]], rank: int, field: str) -> None:
    """A LoRA rank above min(out, in) of every targeted layer holds nothing more, and its factors would take
    rank·(out + in) numbers per layer: refused before anything is allocated."""
    full = max((min(shape) for shape in targeted.values()), default=rank)
    if rank > full:
        raise ValueError(f"{field}={rank} is not allowed: the adapted layers have full rank at most {full}; pass {field}={full} or lower")
