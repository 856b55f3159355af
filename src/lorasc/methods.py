"""The one registry of training methods, shared by the CLI, the training loop and the benchmark.

Every method is a preset of one engine, behind the same interface (the idea of torchtune's
`AdapterModule` and of PEFT's LoRA variants): `check_inputs` refuses settings the model folder or
the run cannot hold before anything is loaded, `build` sets the method up on a model and returns the
object the loop drives (begin, optimizer, scheduler, step, finish, state_dict), `export` writes what
the method can export, `describe` measures what the method adds to the metrics. The loop calls
these and nothing else, so it has no per-method branch.

    lora        one expert, α = 1, no noise: LoRA, merged at the end
    lora+       LoRA with B's learning rate 16× A's (LoRA+)
    rslora      LoRA scaled by lora_alpha / √r
    dora        LoRA with DoRA's magnitude and direction
    cola        a chain of experts, α = 1, no noise (COLA)
    relora      COLA with a jagged re-warm-up after each merge (ReLoRA); the optimizer is reset as
                by default in ReLoRA's code (its paper prunes: optimizer_state="prune", prune_ratio=0.99)
    qrelora     ReLoRA as QLoRA users run it (axolotl): each merge re-quantized into the 4-bit weights, a
                baseline for the exact quantized cascade (quantized.py); 4-bit backbones only
    noisytune   LoRA on a backbone perturbed once by λ (NoisyTune)
    lorasc      the cascade as configured (LoRASC); with tasks, K cycles per task
    full        every weight trained: the upper reference, not a rival on the same budget

Continual learning (a sequence of tasks, `LoRASC.begin_task`/`end_task`; the runner reads `sequence`):

    seq-lora    one LoRA trained through the whole sequence, merged at the end (task_boundary="keep")
    inc-lora    a fresh LoRA per task, merged (α = 1) at the task's end: one cycle per task
    o-lora      inc-lora with O-LoRA's orthogonality loss (olora_lambda, 0.5 unless set)
    ema         inc-lora merging an EMA shadow of each expert (expert_ema, 0.99 unless set), I-LoRA's idea
    multitask   one LoRA on the union of the tasks' data (sequence="joint": the runner mixes the data)
    single      one LoRA per task from the pretrained model (sequence="separate"): the per-task reference
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .cascade import LoRASC
from .config import LoRASCConfig
from .export import delta_ranks, export_dense, export_stacked
from .full import FullFineTune
from .init import BatchSource
from .noise import perturb_once
from .schedule import check_cycle_plan
from .slow import NoStackedAdapter
from .targets import check_targets

Trained = LoRASC | FullFineTune  # what `build` returns and the loop drives
# The continual-learning options off: a baseline is itself whatever a settings file shared by several methods sets
# (only `lorasc`, as configured, takes them); o-lora and ema set theirs through `defaults`.
PLAIN = {"olora_lambda": None, "expert_ema": None, "task_alpha": "constant", "task_boundary": "merge"}
ONE_EXPERT = {**PLAIN, "slow_alpha": 1.0, "noise_lambda": 0.0, "num_cycles": 1, "cycle_steps": None}
CHAIN = {**PLAIN, "slow_alpha": 1.0, "noise_lambda": 0.0}
PER_TASK = ONE_EXPERT  # with tasks: one fresh expert per task, merged at its end
SEQUENCES = ("sequential", "joint", "separate")  # how a continual runner feeds a method the tasks


@dataclass(frozen=True)
class Method:
    """A preset of the LoRASC engine: the config fields it fixes, the defaults it gives fields the user left
    None, whether it perturbs the backbone once before training (by the configured `noise_lambda`), and
    how a continual runner feeds it a sequence of tasks: "sequential" (one task after the other on the
    same cascade), "joint" (one run on the union of the tasks) or "separate" (one run per task, each from
    the pretrained model)."""

    fields: dict = field(default_factory=dict)  # LoRASCConfig fields
    expert: dict = field(default_factory=dict)  # LoraConfig fields
    perturb_once: bool = False
    defaults: dict = field(default_factory=dict)  # LoRASCConfig fields: the user's value, or this where the user's is None
    sequence: str = "sequential"

    def __post_init__(self) -> None:
        if self.sequence not in SEQUENCES:
            raise ValueError(f"sequence={self.sequence!r} is not allowed: one of {SEQUENCES}")

    def config(self, base: LoRASCConfig) -> LoRASCConfig:
        """`base` with this method's fields; each field of `defaults` is the user's value, or the default where
        `base` leaves it None (O-LoRA's λ1 = 0.5 unless the user set olora_lambda); the others (rank, targets,
        seed, …) stay the user's."""
        expert = dataclasses.replace(base.expert, **self.expert) if self.expert else base.expert
        defaults = {name: value if getattr(base, name) is None else getattr(base, name) for name, value in self.defaults.items()}
        return dataclasses.replace(base, **{**self.fields, **defaults}, expert=expert)

    def check_inputs(self, base: LoRASCConfig, model: torch.nn.Module, steps_per_epoch: int, total_steps: int) -> None:
        """The experts' targets match layers of `model` as PEFT matches them, their rank fits those layers,
        and the cycles fit the run. `model` is wrapped: pass one built on the meta device."""
        check_targets(model, self.config(base).expert)
        check_cycle_plan(self.config(base), total_steps, steps_per_epoch)

    def build(self, model: torch.nn.Module, base: LoRASCConfig, grad_batches: BatchSource | None = None,
              check_replicas: bool = False) -> LoRASC:
        if self.perturb_once and base.noise_lambda > 0:
            perturb_once(model, base.noise_lambda, base.seed)
        return LoRASC(model, self.config(base), grad_batches=grad_batches, check_replicas=check_replicas)

    def export(self, trained: LoRASC, out_dir: Path, tokenizer=None, dtype: torch.dtype | None = None) -> None:
        """The dense model in out_dir/model (in `dtype`), and the exact stacked adapter in out_dir/adapter
        (float32 factors) where one exists (not for DoRA, whose merge is full-rank); each with the
        tokenizer and a minimal model card."""
        with contextlib.suppress(NoStackedAdapter):
            export_stacked(trained, out_dir / "adapter", tokenizer)
        export_dense(trained, out_dir / "model", tokenizer, dtype)

    def describe(self, trained: LoRASC) -> dict:
        """The total delta's mean effective rank; after the slow state was truncated to a quantized
        backbone's budget, that the run is not exact and each truncation's relative error per layer."""
        ranks = delta_ranks(trained)
        compressed = {"exact": False, "slow_compressions": trained.slow.compressions} if trained.slow.compressions else {}
        return {"delta_effective_rank": sum(ranks.values()) / len(ranks), **compressed}


class FullFineTuning:
    """Every weight trained with AdamW; exports the whole model. With tasks, trained on one after the other."""

    sequence = "sequential"

    def config(self, base: LoRASCConfig) -> LoRASCConfig:
        return base  # no cascade: the fields are recorded as given and unused

    def check_inputs(self, base: LoRASCConfig, model: torch.nn.Module, steps_per_epoch: int, total_steps: int) -> None:
        """Nothing to refuse: every weight trains, and there are no experts or cycles."""

    def build(self, model: torch.nn.Module, base: LoRASCConfig, grad_batches: BatchSource | None = None,
              check_replicas: bool = False) -> FullFineTune:
        return FullFineTune(model, base)

    def export(self, trained: FullFineTune, out_dir: Path, tokenizer=None, dtype: torch.dtype | None = None) -> None:
        if dtype is not None:
            trained.model.to(dtype)
        trained.model.save_pretrained(out_dir / "model")
        if tokenizer is not None:
            tokenizer.save_pretrained(out_dir / "model")

    def describe(self, trained: FullFineTune) -> dict:
        return {}


METHODS: dict[str, Method | FullFineTuning] = {
    "lorasc": Method(),
    "lora": Method(ONE_EXPERT),
    "lora+": Method({**ONE_EXPERT, "loraplus_lr_ratio": 16.0}),
    "rslora": Method(ONE_EXPERT, {"use_rslora": True}),
    "dora": Method(ONE_EXPERT, {"use_dora": True}),
    "cola": Method({**CHAIN, "rewarmup_steps": 0}),
    "relora": Method(CHAIN),  # the configured rewarmup_steps
    "qrelora": Method({**CHAIN, "quantized_merge": "requantize"}),
    "noisytune": Method(ONE_EXPERT, perturb_once=True),
    "full": FullFineTuning(),
    "seq-lora": Method({**ONE_EXPERT, "task_boundary": "keep"}),
    "inc-lora": Method(PER_TASK),
    "o-lora": Method(PER_TASK, defaults={"olora_lambda": 0.5}),
    "ema": Method(PER_TASK, defaults={"expert_ema": 0.99}),
    "multitask": Method(ONE_EXPERT, sequence="joint"),
    "single": Method(ONE_EXPERT, sequence="separate"),
}
