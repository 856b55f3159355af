"""The LoRASC engine: a chain of fresh LoRA experts on a noisy frozen backbone, merged with a slow step.

Per adapted matrix W (METHOD.md), each cycle t:

    W ← W + ε_t                       noise, seeded per matrix and cycle      (start_cycle)
    A_t ← fresh (seeded), B_t ← 0      fresh expert, fresh optimizer state     (start_cycle)
    train (A_t, B_t)                   the caller's loop or transformers' Trainer
    W ← W − ε_t                        exact removal                           (end_cycle)
    W ← W + α·(Merge(W, expert_t) − W) slow-fast update, then B_t ← 0          (end_cycle)

Merge is PEFT's: W + s·B·A for LoRA and rsLoRA, (m / ‖W + s·B·A‖_c)·(W + s·B·A) for DoRA.
How a fresh expert starts (PEFT's reset, orthogonal, LoRA-GA) is in init.py.
Usage in a plain loop:

    cascade = LoRASC(model, LoRASCConfig(num_cycles=4))
    cascade.begin(total_steps=len(loader))
    optimizer = cascade.optimizer(lr=1e-3)
    scheduler = cascade.scheduler(optimizer, warmup_steps=20)
    for batch in loader:
        cascade.model(**batch).loss.backward()
        optimizer.step(); scheduler.step(); optimizer.zero_grad()
        cascade.step(optimizer)          # at a cycle boundary: remove noise, merge, next expert
"""

from __future__ import annotations

import math

import torch
from peft import PeftModel, get_peft_model
from peft.optimizers import create_loraplus_optimizer
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.utils.other import transpose
from torch.optim import Optimizer

from . import init
from .config import LoRASCConfig
from .distributed import assert_replicas_identical
from .noise import BackboneNoise, matrix_seed
from .schedule import cycle_ends, jagged_scheduler


def merged_weight(layer: LoraLinear, adapter: str) -> torch.Tensor:
    """Merge(W, expert): the weight PEFT's `merge` would write, computed without touching the layer."""
    weight = layer.get_base_layer().weight
    delta = layer.get_delta_weight(adapter)
    if not layer.use_dora.get(adapter, False):
        return weight + delta
    dora = layer.lora_magnitude_vector[adapter]
    norm = dora.get_weight_norm(weight, transpose(delta, layer.fan_in_fan_out), scaling=1)
    factor = transpose((dora.weight / norm).view(-1, 1), layer.fan_in_fan_out)
    return factor * (weight + delta)


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


class LoRASC:
    """Drives the cascade on a PEFT LoRA model. Holds no copy of the backbone."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: LoRASCConfig,
        adapter: str = "default",
        check_replicas: bool = False,
        grad_batches: init.BatchSource | None = None,
    ):
        """`grad_batches()` returns the batches (dicts for `model(**batch)`) that `expert_init="gradient"`
        estimates each cycle's gradient on; `check_replicas` verifies DDP replicas after every merge."""
        if config.expert_init == "gradient" and grad_batches is None:
            raise ValueError("expert_init='gradient' is not allowed without grad_batches: pass a function returning a few training batches")
        self.config, self.adapter, self.check_replicas, self.grad_batches = config, adapter, check_replicas, grad_batches
        self.model = wrap_model(model, config, adapter)
        self.layers = {
            name: m for name, m in self.model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A
        }
        if not self.layers:
            raise ValueError(f"expert.target_modules={config.expert.target_modules!r} is not allowed: no LoRA layer named {adapter!r} in the model")
        unsupported = sorted(n for n, m in self.layers.items() if not isinstance(m, LoraLinear))
        if unsupported:
            raise ValueError(f"expert.target_modules={config.expert.target_modules!r} is not allowed: LoRASC adapts Linear layers only, not {unsupported[:3]}")
        self.expert_params = [p for m in self.layers.values() for p in self._expert_tensors(m)]
        expert_ids = {id(p) for p in self.expert_params}
        self.head_params = {n: p for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in expert_ids}
        self.noise = BackboneNoise(self._noise_targets(), config.noise_lambda, config.noise_kind, config.seed)
        self.cycle = 0  # index of the current (or last finished) cycle, 1-based
        self.steps = 0  # optimizer steps taken
        self.ends: list[int] = []
        self.in_cycle = False
        self.history: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] = []  # c·A_t, c·B_t per finished cycle
        self._head_start: dict[str, torch.Tensor] = {}
        self.basis = init.OrthogonalBasis()
        self.initial: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # (A0, B0) compensated in W (gradient init)

    # ---- the cycle -------------------------------------------------------------------------
    @torch.no_grad()
    def start_cycle(self, optimizer: Optimizer | None = None) -> None:
        """Noise on the backbone, a fresh seeded expert, and (by default) a fresh optimizer state."""
        if self.in_cycle:
            raise RuntimeError(f"cycle {self.cycle} is still running; call end_cycle() first")
        self.cycle += 1
        self.noise.add(self.cycle)
        self._init_experts(seed=matrix_seed(self.config.seed, self.cycle, "expert"))
        if optimizer is not None:
            self.carry_optimizer_state(optimizer)
        if self.config.slow_head:
            self._head_start = {n: p.detach().clone() for n, p in self.head_params.items()}
        self.in_cycle = True

    @torch.no_grad()
    def end_cycle(self) -> None:
        """Remove the noise exactly, apply W ← W + α·(Merge(W, expert) − W), and zero the expert."""
        if not self.in_cycle:
            raise RuntimeError("no cycle is running; call start_cycle() first")
        self.noise.remove()
        alpha = self.config.slow_alpha
        for name, layer in self.layers.items():
            weight = layer.get_base_layer().weight
            start = self._initial_product(name)  # 0, or the LoRA-GA product compensated in W
            weight.add_(start)
            weight.copy_(torch.lerp(weight, merged_weight(layer, self.adapter) - start, alpha))
        if not self.config.expert.use_dora:
            self.history.append(self._scaled_factors())
        if self.config.expert_init == "orthogonal":
            self.basis.extend(self.layers, self.adapter)
        self.initial = {}
        for name, start in self._head_start.items():
            self.head_params[name].lerp_(start, 1 - alpha)  # head ← start + α·(head − start)
        self._head_start = {}
        self._zero_experts()
        self.in_cycle = False
        if self.check_replicas:  # a collective under torch.distributed: every rank ends its cycles together
            assert_replicas_identical(self)

    # ---- step-driven use (plain loop and Trainer callback) --------------------------------
    def begin(self, total_steps: int, steps_per_epoch: int | None = None) -> list[int]:
        """Plan the cycles of a run of `total_steps` optimizer steps and start the first one."""
        self.ends = cycle_ends(self.config, total_steps, steps_per_epoch)
        if self.cycle == 0:
            self.start_cycle()
        return self.ends

    def step(self, optimizer: Optimizer | None = None) -> bool:
        """Call after every optimizer step. Returns True when a cycle ended at this step."""
        if not self.ends:
            raise RuntimeError("call begin(total_steps, steps_per_epoch) before step()")
        self.steps += 1
        if self.steps not in self.ends:
            return False
        self.end_cycle()
        if self.steps < self.ends[-1]:
            self.start_cycle(optimizer)
        return True

    def finish(self) -> None:
        """End a run early (or after the planned steps): remove noise and merge the running expert."""
        if self.in_cycle:
            self.end_cycle()

    @property
    def num_cycles(self) -> int:
        return len(self.ends)

    # ---- optimizer and schedule -----------------------------------------------------------
    def optimizer(self, lr: float, weight_decay: float = 0.0, optimizer_cls: type[Optimizer] = torch.optim.AdamW) -> Optimizer:
        """AdamW over the expert and the head; LoRA+ (B at lr × ratio) when `loraplus_lr_ratio` ≠ 1."""
        if self.config.loraplus_lr_ratio != 1:
            return create_loraplus_optimizer(
                self.model, optimizer_cls, lr=lr, loraplus_lr_ratio=self.config.loraplus_lr_ratio, weight_decay=weight_decay
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
        return optimizer_cls(params, lr=lr, weight_decay=weight_decay)

    def scheduler(self, optimizer: Optimizer, warmup_steps: int = 0):
        """Global warmup + cosine decay, with `rewarmup_steps` of linear re-warmup after each reset."""
        if not self.ends:
            raise RuntimeError("call begin(total_steps, steps_per_epoch) before scheduler()")
        return jagged_scheduler(optimizer, self.ends[-1], warmup_steps, self.ends, self.config.rewarmup_steps)

    def carry_optimizer_state(self, optimizer: Optimizer) -> None:
        """At a new expert: forget its moments (`reset`), keep them, or zero the `prune_ratio` share of
        smallest magnitude (`prune`, ReLoRA's). The head always keeps its state."""
        mode = self.config.optimizer_state
        for p in self.expert_params:
            if mode == "reset":
                optimizer.state.pop(p, None)
            elif mode == "prune" and "exp_avg_sq" in optimizer.state.get(p, {}):
                prune_smallest(optimizer.state[p], self.config.prune_ratio)

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The cascade's own state; the weights (noisy backbone, expert, head) are the model's."""
        return {
            "cycle": self.cycle,
            "steps": self.steps,
            "ends": list(self.ends),
            "in_cycle": self.in_cycle,
            "noise": self.noise.state_dict(),
            "history": self.history,
            "head_start": self._head_start,
            "basis": self.basis.bases,
            "initial": self.initial,
        }

    def load_state_dict(self, state: dict) -> None:
        self.cycle, self.steps, self.ends, self.in_cycle = state["cycle"], state["steps"], list(state["ends"]), state["in_cycle"]
        self.noise.load_state_dict(state["noise"])
        self.history, self._head_start = state["history"], state["head_start"]
        self.basis.bases, self.initial = state["basis"], state["initial"]

    # ---- internals ------------------------------------------------------------------------
    def _expert_tensors(self, layer: LoraLinear) -> list[torch.nn.Parameter]:
        tensors = [layer.lora_A[self.adapter].weight, layer.lora_B[self.adapter].weight]
        if layer.use_dora.get(self.adapter, False):
            tensors.append(layer.lora_magnitude_vector[self.adapter].weight)
        return tensors

    def _noise_targets(self) -> dict[str, torch.nn.Parameter]:
        if self.config.noise_targets == "adapted":
            return {f"{n}.weight": m.get_base_layer().weight for n, m in sorted(self.layers.items())}
        expert_ids = {id(p) for p in self.expert_params}
        return {
            n: p
            for n, p in self.model.named_parameters()
            if not p.requires_grad and p.is_floating_point() and id(p) not in expert_ids and p.numel() > 1
        }

    def _init_experts(self, seed: int) -> None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            init.kaiming(self.layers, self.adapter, self.config.expert.init_lora_weights)
            if self.config.expert_init == "orthogonal":
                self.basis.project(self.layers, self.adapter)
            elif self.config.expert_init == "gradient":
                self.initial = init.gradient(self.model, self.layers, self.adapter, self.grad_batches())
        self._reset_dora_magnitudes()

    def _initial_product(self, name: str) -> torch.Tensor | float:
        """s·B0·A0 of a gradient-initialised expert (as PEFT compensated it), else 0."""
        if name not in self.initial:
            return 0.0
        layer = self.layers[name]
        a0, b0 = self.initial[name]
        return transpose(b0.float() @ a0.float(), layer.fan_in_fan_out).to(layer.get_base_layer().weight.dtype) * layer.scaling[self.adapter]

    def _zero_experts(self) -> None:
        for layer in self.layers.values():
            layer.lora_B[self.adapter].weight.zero_()
        self._reset_dora_magnitudes()

    def _reset_dora_magnitudes(self) -> None:
        """DoRA's magnitude starts as the column norm of the current W (B = 0), updated in place so
        the optimizer keeps pointing at the same Parameter."""
        for layer in self.layers.values():
            if layer.use_dora.get(self.adapter, False):
                weight = layer.get_base_layer().weight
                dora = layer.lora_magnitude_vector[self.adapter]
                dora.weight.copy_(dora.get_weight_norm(weight, torch.zeros_like(transpose(weight, layer.fan_in_fan_out)), scaling=1))

    def _scaled_factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(c·A_t, c·B_t) with c = √(α·s), so Σ_t c·B_t·c·A_t is the total merged delta."""
        factors = {}
        for name, layer in self.layers.items():
            c = math.sqrt(self.config.slow_alpha * layer.scaling[self.adapter])
            a, b = (t.weight.detach().float().cpu() for t in (layer.lora_A[self.adapter], layer.lora_B[self.adapter]))
            if name in self.initial:  # B·A − B0·A0 = [B, −B0]·[A; A0]
                a0, b0 = (t.float().cpu() for t in self.initial[name])
                a, b = torch.cat([a, a0], 0), torch.cat([b, -b0], 1)
            factors[name] = (c * a, c * b)
        return factors


def prune_smallest(state: dict, ratio: float) -> None:
    """Zero Adam's two moments, in place, at the `ratio` share of entries with the smallest second
    moment. One mask for both: pruning each by its own magnitude (as ReLoRA does) leaves entries with
    a first moment but no second, whose step m/(√v + ε) then explodes."""
    second = state["exp_avg_sq"]
    k = int(ratio * second.numel())
    if k > 0:
        pruned = second <= second.flatten().kthvalue(k).values
        state["exp_avg"][pruned] = 0
        second[pruned] = 0
