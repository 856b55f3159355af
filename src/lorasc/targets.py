"""What an expert adapts on a model: the default target modules per architecture, the PEFT task type of
its head, and the layers that PEFT adapts for an expert's targets, with their rank checked (on a model
built on the meta device, before anything is loaded); a cascade's config completed from its model, and
the model wrapped by PEFT."""

from __future__ import annotations

import dataclasses
import re
import warnings

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from peft.utils.error import NoMatchingPeftModuleError
from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
                                                    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
                                                    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES)
from transformers.pytorch_utils import Conv1D

from .config import LoRASCConfig

MODULE_NAME = re.compile(r"[\w.]+")  # a module name, or the last parts of one: `q_proj`, `self_attn.q_proj`
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


def expert_defaults(expert: LoraConfig, model: torch.nn.Module) -> LoraConfig:
    """A copy of `expert` with the fields left None taken from the model: the target modules of its
    architecture, and the task type of its head (without one, PEFT freezes a classifier's new head, which
    then never learns). Always a copy: PEFT rewrites `all-linear` in the config it is handed."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)  # None: not a transformers model
    targets = default_target_modules(model_type) if expert.target_modules is None else expert.target_modules
    return dataclasses.replace(expert, target_modules=targets, task_type=expert.task_type or task_type_of(model))


def with_model_defaults(config: LoRASCConfig, model: torch.nn.Module) -> LoRASCConfig:
    """The config with the expert's fields left None taken from the model (`targets.expert_defaults`);
    a classifier's task type taken so is said in a warning."""
    expert = expert_defaults(config.expert, model)
    if config.expert.task_type is None and expert.task_type not in (None, "CAUSAL_LM"):
        warnings.warn(f"expert.task_type=None on a {type(model).__name__}: using {expert.task_type!r}, so that PEFT trains its new head; "
                      "pass task_type to choose", stacklevel=3)
    return dataclasses.replace(config, expert=expert)


def wrap_model(model: torch.nn.Module, config: LoRASCConfig, adapter: str) -> PeftModel:
    if isinstance(model, PeftModel):
        return model
    try:
        return get_peft_model(model, config.expert, adapter_name=adapter)
    except ValueError as err:
        if "not found in the base model" in str(err) or "No modules were targeted" in str(err):
            raise ValueError(
                f"expert.target_modules={config.expert.target_modules!r} is not allowed: it matches no layer of "
                f"{type(model).__name__}; name modules that exist, e.g. from model.named_modules()"
            ) from err
        raise


def peft_targets(names: list[str]) -> list[str] | str:
    """Target modules given one by one (on a command line) as PEFT reads them: one value that cannot be a
    module's name, such as `all-linear` or a regular expression, as the string PEFT matches whole names
    against; otherwise the names, each matching the modules whose names end in it."""
    return names[0] if len(names) == 1 and not MODULE_NAME.fullmatch(names[0]) else names


def adapted_shapes(model: torch.nn.Module, expert: LoraConfig) -> dict[str, list[int]]:
    """The weight shapes of the layers that an expert adapts on `model`, by their names in the PEFT model
    (the keys of `LoRASC.layers`). PEFT matches them itself (name endings, a regular expression,
    `all-linear`, `exclude_modules`, the head a task type trains in full), in `get_peft_model` with the
    adapters on the meta device; the targets and the task type left None are the model's (`expert_defaults`).
    `model` is wrapped in place: pass one built on the meta device (`accelerate.init_empty_weights`)."""
    expert = expert_defaults(expert, model)
    try:
        wrapped = get_peft_model(model, expert, low_cpu_mem_usage=True)
    except NoMatchingPeftModuleError:
        raise ValueError(f"expert.target_modules={expert.target_modules!r} is not allowed: it matches no layer of the model (its layers end "
                         f"in names such as {linear_endings(model)}); pass expert.target_modules with some of those") from None
    return {name: list(layer.get_base_layer().weight.shape) for name, layer in wrapped.named_modules() if isinstance(layer, LoraLayer)}


def linear_endings(model: torch.nn.Module) -> list[str]:
    """A few last parts of the names of a model's linear layers: the layers LoRASC can adapt."""
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, (torch.nn.Linear, Conv1D))})[:8]


def check_targets(model: torch.nn.Module, expert: LoraConfig) -> None:
    """Refuses LoRA targets that match no layer of `model` (built on the meta device: it is wrapped), and a
    rank above every adapted layer's."""
    check_rank(adapted_shapes(model, expert), expert.r, "expert.r")


def check_rank(targeted: dict[str, list[int]], rank: int, field: str) -> None:
    """A LoRA rank above min(out, in) of every targeted layer holds nothing more, and its factors would take
    rank·(out + in) numbers per layer: refused before anything is allocated."""
    full = max((min(shape) for shape in targeted.values()), default=rank)
    if rank > full:
        raise ValueError(f"{field}={rank} is not allowed: the adapted layers have full rank at most {full}; pass {field}={full} or lower")
