"""Which layers an expert adapts: the default per architecture, and targets and rank checked against a
model's weight shapes (read from its files before anything is loaded)."""

from __future__ import annotations

import re

from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

BERT_TARGETS = ["query", "key", "value", "dense"]  # every BERT projection: MiniLM's attention and MLP


def default_target_modules(model_type: str) -> list[str]:
    """Every BERT projection, else PEFT's choice for the architecture."""
    if model_type == "bert":
        return list(BERT_TARGETS)
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    raise ValueError(f"expert.target_modules=None is not allowed: no default LoRA target modules for model type {model_type!r}; pass --expert-target-modules")


def targeted_shapes(shapes: dict[str, list[int]], targets) -> dict[str, list[int]]:
    """The 2-D weights of the modules that PEFT's `target_modules` selects (a list of name endings, or a regex)."""
    modules = {name.removesuffix(".weight"): shape for name, shape in shapes.items() if name.endswith(".weight") and len(shape) == 2}
    if isinstance(targets, str):
        return {name: shape for name, shape in modules.items() if re.fullmatch(targets, name)}
    return {name: shape for name, shape in modules.items() if any(name == t or name.endswith("." + t) for t in targets)}


def check_targets(shapes: dict[str, list[int]], targets, rank: int) -> None:
    """Refuses LoRA targets that match no layer of the model, and a rank above every targeted layer's."""
    if not shapes:
        return  # a .bin model: the engine checks its targets when it wraps the model
    targeted = targeted_shapes(shapes, targets)
    if not targeted:
        examples = sorted({name.removesuffix(".weight").rsplit(".", 1)[-1] for name in shapes if name.endswith(".weight")})[:8]
        raise ValueError(f"expert.target_modules={targets!r} is not allowed: it matches no layer of the model (its layers end in names "
                         f"such as {examples}); pass --expert-target-modules with some of those")
    check_rank(targeted, rank, "--expert-r")


def check_rank(targeted: dict[str, list[int]], rank: int, flag: str) -> None:
    """A LoRA rank above min(out, in) of every targeted layer holds nothing more, and its factors would take
    rank·(out + in) numbers per layer: refused before anything is allocated."""
    full = max((min(shape) for shape in targeted.values()), default=rank)
    if rank > full:
        raise ValueError(f"{flag} {rank} is not allowed: the adapted layers have full rank at most {full}; pass {flag} {full} or lower")
