"""LoRASC configuration: the method's knobs (METHOD.md) and the PEFT config of the fast expert."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from peft import LoraConfig

from .init import INIT_STRATEGIES
from .noise import NOISE_KINDS
NOISE_TARGETS = ("adapted", "all")
OPTIMIZER_STATE_MODES = ("reset", "keep", "prune")
SLOW_OVERFLOW_MODES = ("stop", "compress")  # quantized.py: when the carried stack outgrows slow_budget
QUANTIZED_MERGES = ("carry", "requantize")
OLORA_NORMS = ("l1", "fro")  # olora.py: the O-LoRA authors' code sums |entries|; their paper squares them (Frobenius)
TASK_ALPHAS = ("constant", "inv-sqrt")  # tasks.py: the merges of task t step by slow_alpha, or slow_alpha/√t (SLAO)
TASK_BOUNDARIES = ("merge", "keep")  # tasks.py: a task's end merges its expert, or the expert goes on (SeqLoRA)  # quantized.py carries S beside 4-bit weights; requantize.py folds it in, as the peers do
EXPERT_INITS = tuple(INIT_STRATEGIES)
# Inits that PEFT's `reset_lora_parameters` redraws without touching the backbone. The others
# (PiSSA, OLoRA, LoftQ, EVA, LoRA-GA, CorDA) rewrite the base weight when applied, so re-running
# them every cycle is not a fresh expert on the same backbone.
RESETTABLE_INITS = (True, "gaussian")
# The LoraConfig fields a LoRASC expert exposes (and writes back into a resolved config), with the type a settings file gives each.
EXPERT_FIELDS = {"r": "int", "lora_alpha": "float", "target_modules": "list", "lora_dropout": "float", "use_dora": "bool", "use_rslora": "bool",
                 "init_lora_weights": "bool | str", "modules_to_save": "list | None", "task_type": "str | None"}
# target_modules and task_type stay None: LoRASC takes the model's (targets.py) when it wraps it.
DEFAULT_EXPERT = {"r": 8, "lora_alpha": 16}


def require(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ValueError(f"{name}={value!r} is not allowed: {allowed}")


def is_number(value: Any) -> bool:
    """An int or a float; not a bool, which Python counts as an int but a settings file means otherwise."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class LoRASCConfig:
    """Everything a LoRASC run needs beyond the optimizer's learning rate.

    Cycle length: one cycle per epoch unless `cycle_steps` (a new expert every N optimizer steps)
    or `num_cycles` (the run split into T equal cycles) is set; at most one of the two.
    """

    slow_alpha: float = 1.0  # the settings study's choice (BENCHMARKS.md); METHOD.md's provisional 0.5 lost fit
    noise_lambda: float = 0.15
    noise_kind: str = "uniform"
    noise_targets: str = "adapted"
    cycle_steps: int | None = None
    num_cycles: int | None = None
    rewarmup_steps: int = 10
    optimizer_state: str = "reset"
    prune_ratio: float = 0.9
    expert_init: str = "kaiming"
    gradient_batches: int = 4
    loraplus_lr_ratio: float = 1.0
    slow_head: bool = False
    slow_budget: float = 0.5  # quantized backbones: the carried stack's float32 bytes / the packed adapted weights' bytes
    slow_overflow: str = "stop"
    quantized_merge: str = "carry"  # "requantize": the re-quantize-every-merge baseline (the qrelora method)
    olora_lambda: float | None = None  # O-LoRA's orthogonality loss weight λ1 (olora.py); None: no such loss
    olora_norm: str = "l1"
    expert_ema: float | None = None  # I-LoRA's EMA shadow decay d (shadow.py): the shadow is merged; None: the fast expert is
    task_alpha: str = "constant"
    task_boundary: str = "merge"
    seed: int = 0
    expert: LoraConfig = field(default_factory=lambda: LoraConfig(**DEFAULT_EXPERT))

    def __post_init__(self) -> None:
        require(0.0 < self.slow_alpha <= 1.0, "slow_alpha", self.slow_alpha, "a float in (0, 1]; 1 gives COLA")
        require(self.noise_lambda >= 0.0, "noise_lambda", self.noise_lambda, "a float >= 0; 0 disables the noise")
        require(self.noise_kind in NOISE_KINDS, "noise_kind", self.noise_kind, f"one of {NOISE_KINDS}")
        require(self.noise_targets in NOISE_TARGETS, "noise_targets", self.noise_targets, f"one of {NOISE_TARGETS}")
        for name in ("cycle_steps", "num_cycles"):
            value = getattr(self, name)
            require(value is None or (isinstance(value, int) and value >= 1), name, value, "None or an integer >= 1")
        require(
            self.cycle_steps is None or self.num_cycles is None,
            "cycle_steps",
            self.cycle_steps,
            f"None when num_cycles is set (num_cycles={self.num_cycles}); choose one way to cut cycles",
        )
        require(self.rewarmup_steps >= 0, "rewarmup_steps", self.rewarmup_steps, "an integer >= 0")
        require(self.optimizer_state in OPTIMIZER_STATE_MODES, "optimizer_state", self.optimizer_state, f"one of {OPTIMIZER_STATE_MODES}")
        require(0.0 < self.prune_ratio < 1.0, "prune_ratio", self.prune_ratio, "a float in (0, 1): the share of Adam moments zeroed at each reset")
        require(self.expert_init in EXPERT_INITS, "expert_init", self.expert_init, f"one of {EXPERT_INITS}")
        require(self.gradient_batches >= 1, "gradient_batches", self.gradient_batches, "an integer >= 1")
        require(
            not (self.expert_init == "gradient" and self.expert.use_dora),
            "expert_init",
            self.expert_init,
            "'kaiming' or 'orthogonal' with a DoRA expert (LoRA-GA's compensation is defined for LoRA and rsLoRA)",
        )
        require(self.slow_budget > 0, "slow_budget", self.slow_budget,
                "a float > 0: the carried stack's bytes as a share of the quantized adapted weights' bytes")
        require(self.quantized_merge in QUANTIZED_MERGES, "quantized_merge", self.quantized_merge, f"one of {QUANTIZED_MERGES}")
        require(self.slow_overflow in SLOW_OVERFLOW_MODES, "slow_overflow", self.slow_overflow, f"one of {SLOW_OVERFLOW_MODES}")
        require(self.loraplus_lr_ratio > 0, "loraplus_lr_ratio", self.loraplus_lr_ratio, "a float > 0; 1 is plain LoRA, 16 is LoRA+")
        self._check_continual()
        require(isinstance(self.expert, LoraConfig), "expert", type(self.expert).__name__, "a peft.LoraConfig")
        require(isinstance(self.expert.r, int) and self.expert.r >= 1, "expert.r", self.expert.r, "an integer >= 1")
        require(self.expert.lora_alpha > 0, "expert.lora_alpha", self.expert.lora_alpha, "a number > 0")
        require(self.expert.target_modules is None or bool(self.expert.target_modules), "expert.target_modules", self.expert.target_modules,
                "a non-empty list of module names, or None for the architecture's default")
        require(
            any(self.expert.init_lora_weights is init or self.expert.init_lora_weights == init for init in RESETTABLE_INITS),
            "expert.init_lora_weights",
            self.expert.init_lora_weights,
            "True (Kaiming A, zero B) or 'gaussian': a fresh expert each cycle must leave the backbone untouched",
        )

    def _check_continual(self) -> None:
        """The continual-learning options (olora.py, shadow.py, tasks.py)."""
        dora = isinstance(self.expert, LoraConfig) and self.expert.use_dora
        require(self.olora_lambda is None or (is_number(self.olora_lambda) and math.isfinite(self.olora_lambda) and self.olora_lambda >= 0),
                "olora_lambda", self.olora_lambda,
                "None (no O-LoRA loss) or a finite float >= 0, e.g. 0.5")
        require(self.olora_lambda is None or not dora, "olora_lambda", self.olora_lambda,
                "None with a DoRA expert (O-LoRA's loss is defined on LoRA's A); set expert.use_dora=False")
        require(self.olora_norm in OLORA_NORMS, "olora_norm", self.olora_norm, f"one of {OLORA_NORMS}")
        require(self.expert_ema is None or (is_number(self.expert_ema) and 0.0 <= self.expert_ema < 1.0),
                "expert_ema", self.expert_ema, "None (merge the fast expert) or a decay in [0, 1), e.g. 0.99")
        require(self.expert_ema is None or not dora, "expert_ema", self.expert_ema,
                "None with a DoRA expert (the shadow averages A and B, not DoRA's magnitude); set expert.use_dora=False")
        require(self.task_alpha in TASK_ALPHAS, "task_alpha", self.task_alpha, f"one of {TASK_ALPHAS}")
        require(self.task_alpha == "constant" or not self.slow_head, "task_alpha", self.task_alpha,
                "'constant' with slow_head=True (the head's slow step is the constant slow_alpha)")
        require(self.task_boundary in TASK_BOUNDARIES, "task_boundary", self.task_boundary, f"one of {TASK_BOUNDARIES}")
        require(self.task_boundary == "merge" or self.noise_lambda == 0, "task_boundary", self.task_boundary,
                f"'merge' with noise_lambda={self.noise_lambda} ('keep' evaluates between tasks on a running expert, "
                "so the backbone must be clean); set noise_lambda=0")

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "expert"}
        out["expert"] = {k: v for k, v in self.expert.to_dict().items() if k in EXPERT_FIELDS}
        if isinstance(out["expert"].get("target_modules"), set):
            out["expert"]["target_modules"] = sorted(out["expert"]["target_modules"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoRASCConfig":
        data = dict(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        require(not unknown, "config keys", unknown, f"keys among {sorted(known)}")
        expert = dict(data.pop("expert", {}))
        bad = sorted(set(expert) - set(EXPERT_FIELDS))
        require(not bad, "expert keys", bad, f"keys among {list(EXPERT_FIELDS)}")
        return cls(**data, expert=LoraConfig(**{**DEFAULT_EXPERT, **expert}))
