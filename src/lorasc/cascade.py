"""The LoRASC engine: a chain of fresh LoRA experts on a noisy frozen backbone, merged with a slow step.

Per adapted matrix W (METHOD.md), with W0 its pristine value and S the slow state (slow.py), each cycle t:

    W ← round(W0 + S + ε_t)            noise, seeded per matrix and cycle      (start_cycle)
    A_t ← fresh (seeded), B_t ← 0      fresh expert, fresh optimizer state     (start_cycle)
    train (A_t, B_t)                   the caller's loop or transformers' Trainer
    S ← S + α·(Merge(W, expert_t) − W) slow-fast update on the clean W, exact   (end_cycle)
    W ← round(W0 + S), B_t ← 0          the clean backbone: no trace of ε_t     (end_cycle)

Merge is PEFT's: W + s·B·A for LoRA and rsLoRA, (m / ‖W + s·B·A‖_c)·(W + s·B·A) for DoRA. Each
option has its own strategy object: the slow state per expert type (slow.py), how a fresh expert
starts (init.py), the head's slow step (slow.py); the backbone rewrites (backbone.py); the
continual-learning options: O-LoRA's loss (olora.py), the merged EMA shadow (shadow.py), what a task's
end does and the slow step per task (tasks.py).
Usage in a plain loop:

    cascade = LoRASC(model, LoRASCConfig(num_cycles=4))
    cascade.begin(total_steps=len(loader))
    optimizer = cascade.optimizer(lr=1e-3)
    scheduler = cascade.scheduler(optimizer, warmup_steps=20)
    for batch in loader:
        cascade.model(**batch).loss.backward()
        cascade.before_optimizer_step()  # O-LoRA's gradient, when olora_lambda is set
        optimizer.step(); scheduler.step(); optimizer.zero_grad()
        cascade.step(optimizer)          # at a cycle boundary: merge, clean backbone, next expert
"""

from __future__ import annotations

import contextlib
import functools

import torch
from peft import PeftModel
from peft.optimizers import create_loraplus_optimizer
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from torch.optim import Optimizer

from .config import LoRASCConfig
from .distributed import assert_replicas_identical
from .init import INIT_STRATEGIES, BatchSource
from .noise import matrix_seed
from .olora import penalty_for
from .optimizer_state import carry_state
from .quantized import backbone_for, is_quantized
from .schedule import cycle_ends, jagged_scheduler
from .backbone import backbone_targets
from .shadow import shadow_for
from .slow import FinishedExpert, KeepHead, SlowHead, relative_step, slow_state_for
from .targets import with_model_defaults, wrap_model
from .tasks import TASK_BOUNDARIES, TaskLog, merge_alpha, task_ends


class LoRASC:
    """Drives the cascade on a PEFT LoRA model. Keeps the pristine weights it rewrites on the host."""

    def __init__(
        self,
        model: torch.nn.Module,
        config: LoRASCConfig,
        adapter: str = "default",
        check_replicas: bool = False,
        grad_batches: BatchSource | None = None,
    ):
        """`grad_batches()` returns the batches (dicts for `model(**batch)`) that `expert_init="gradient"`
        estimates each cycle's gradient on; `check_replicas` verifies DDP replicas after every merge."""
        self.init = INIT_STRATEGIES[config.expert_init](grad_batches, config.gradient_batches)
        config = config if isinstance(model, PeftModel) else with_model_defaults(config, model)
        self.config, self.adapter, self.check_replicas = config, adapter, check_replicas
        self.model = wrap_model(model, config, adapter)
        self.layers = {
            name: m for name, m in self.model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A
        }
        if not self.layers:
            raise ValueError(f"expert.target_modules={config.expert.target_modules!r} is not allowed: they match no Linear layer "
                             f"with a LoRA adapter {adapter!r} (LoRASC adapts Linear layers only); name Linear modules, e.g. attention projections")
        unsupported = sorted(n for n, m in self.layers.items() if not (isinstance(m, LoraLinear) or is_quantized(m.get_base_layer())))
        if unsupported:
            raise ValueError(f"expert.target_modules={config.expert.target_modules!r} is not allowed: LoRASC adapts Linear layers only, not {unsupported[:3]}")
        self.expert_params = [p for m in self.layers.values() for p in self._expert_tensors(m)]
        expert_ids = {id(p) for p in self.expert_params}
        self.head_params = {n: p for n, p in self.model.named_parameters() if p.requires_grad and id(p) not in expert_ids}
        targets = backbone_targets(self.model, self.layers, self.expert_params, config.noise_targets)
        self.backbone = backbone_for(config, self.model, *targets)
        self.slow = slow_state_for(config.expert, config.quantized_merge)()
        self.head = SlowHead(config.slow_alpha) if config.slow_head else KeepHead()
        self.penalty = penalty_for(config.olora_lambda, config.olora_norm)
        self.shadow = shadow_for(config.expert_ema)
        self.boundary = TASK_BOUNDARIES[config.task_boundary]()
        self.cycle = 0  # index of the current (or last finished) cycle, 1-based
        self.steps = 0  # optimizer steps taken
        self.ends: list[int] = []  # the optimizer-step count at which each planned cycle ends
        self.in_cycle = False
        self.tasks = TaskLog()
        self.slow_step: float | None = None  # ‖α·ΔW‖/‖W‖ of the last merge, over all adapted matrices

    # ---- the cycle -------------------------------------------------------------------------
    @torch.no_grad()
    def start_cycle(self, optimizer: Optimizer | None = None) -> None:
        """Noise on the backbone, a fresh seeded expert, and (by default) a fresh optimizer state."""
        if self.in_cycle:
            raise RuntimeError(f"cycle {self.cycle} is still running; call end_cycle() first")
        self.backbone.write(self.slow, noise_cycle=self.cycle + 1)
        self.cycle += 1
        with self._seeded(matrix_seed(self.config.seed, self.cycle, "expert")):
            self.init.start(self.model, self.layers, self.adapter, self.config.expert.init_lora_weights)
        offsets = self.init.offsets(self.layers, self.adapter)
        if offsets:  # the init compensated its initial product in the weights: redo it exactly
            self.backbone.write(self.slow, self.cycle, offsets)
        self.slow.reset_expert(self.layers, self.adapter)
        if optimizer is not None:
            carry_state(optimizer, self.expert_params, self.config.optimizer_state, self.config.prune_ratio)
        self.head.begin(self.head_params)
        self.shadow.start(self.layers, self.adapter)
        self.in_cycle = True

    @torch.no_grad()
    def end_cycle(self) -> None:
        """S ← S + α·(Merge(W, expert) − W) on the clean W, then W ← round(W0 + S) (no noise), and a
        zero expert. Atomic: if it fails, the weights and the cascade's state are as before the call."""
        if not self.in_cycle:
            raise RuntimeError("no cycle is running; call start_cycle() first")
        expert = self._finished_expert()
        slow = self.backbone.fitted(self.slow.merged(expert, merge_alpha(self.config, self.tasks)))
        head = self.head.merged(self.head_params)
        step = relative_step(self.slow, slow, self.layers, lambda name: self.backbone.pristine32(self.backbone.param_of[name]))
        try:
            self.backbone.write(slow)
        except BaseException:
            self._write_backbone()  # back to this cycle's noisy weights
            raise
        self.slow, self.slow_step = slow, step
        for name, value in head.items():
            self.head_params[name].copy_(value)
        self.penalty.record(self.layers, expert.factors)
        self.init.end(self.layers, self.adapter)
        self._zero_experts()
        self.in_cycle = False
        self.verify_replicas()

    def verify_replicas(self) -> None:
        """With `check_replicas`, raise unless every rank holds the same weights. A collective under
        torch.distributed: call it on every rank at the same point (every rank ends its cycles together)."""
        if self.check_replicas:
            assert_replicas_identical(self)

    def watched_tensors(self) -> dict[str, torch.Tensor]:
        """What the cascade edits or trains: what the backbone keeps on the device (the rewritten weights, or
        a quantized backbone's carried stack), then the expert and the head in the model's parameter order."""
        trained = {id(p) for p in [*self.expert_params, *self.head_params.values()]}
        return {**self.backbone.watched(), **{name: p for name, p in self.model.named_parameters() if id(p) in trained}}

    # ---- step-driven use (plain loop and Trainer callback) --------------------------------
    def begin(self, total_steps: int, steps_per_epoch: int | None = None) -> list[int]:
        """Plan the cycles of a run of `total_steps` optimizer steps and start the first one."""
        self.ends = cycle_ends(self.config, total_steps, steps_per_epoch)
        self.check_plan(len(self.ends) - (self.cycle - int(self.in_cycle)))
        if self.cycle == 0:
            self.start_cycle()
        return self.ends

    def before_optimizer_step(self) -> None:
        """Call between backward and the optimizer step: adds O-LoRA's gradient to the expert's A (olora.py)."""
        if self.in_cycle:
            self.penalty.add_gradients(self.layers, self.adapter)

    def step(self, optimizer: Optimizer | None = None) -> bool:
        """Call after every optimizer step. Returns True when a cycle ended at this step."""
        if not self.ends:
            raise RuntimeError("call begin(total_steps, steps_per_epoch) before step()")
        self.steps += 1
        self.shadow.update(self.layers, self.adapter)
        if not self.boundary.ends_cycle(self):
            return False
        self.end_cycle()
        if self.steps < self.ends[-1]:
            self.start_cycle(optimizer)
        return True

    def finish(self) -> None:
        """End a run early (or after the planned steps): remove noise and merge the running expert."""
        if self.in_cycle:
            self.end_cycle()

    # ---- tasks (tasks.py) -----------------------------------------------------------------
    def begin_task(self, name: str, total_steps: int, num_cycles: int | None = None, cycle_steps: int | None = None,
                   steps_per_epoch: int | None = None, optimizer: Optimizer | None = None) -> list[int]:
        """Plan task `name`, the next `total_steps` optimizer steps, cut into cycles by `num_cycles` or
        `cycle_steps` (else as the config cuts a run), and start it as `task_boundary` says (tasks.py): its
        first cycle, with `optimizer`'s state carried as at every new expert (`optimizer_state`), or the
        running expert going on. Returns the task's cycle ends."""
        plan = functools.partial(task_ends, self.config, self.steps, total_steps, num_cycles, cycle_steps, steps_per_epoch)
        return self.boundary.begin(self, name, plan, optimizer)

    def end_task(self) -> None:
        """End the running task as `task_boundary` says: "merge" merges its running expert, noise off, and starts
        nothing, so that until the next `begin_task` the backbone holds W0 + S exactly; "keep" merges nothing.
        Ended early, the task's unfinished cycles are dropped."""
        self.tasks.current()  # RuntimeError unless a task is running
        self.boundary.end(self)

    @property
    def num_cycles(self) -> int:
        return len(self.ends)

    def cycle_metrics(self) -> dict[str, float]:
        """For loggers: the cycle of the last optimizer step, the experts merged so far, and (after a merge)
        the last slow step's size ‖α·ΔW‖/‖W‖, Frobenius norms over all adapted matrices on the clean W."""
        trained_in = self.cycle - int(self.in_cycle and self.steps in self.ends[: self.cycle - 1])  # a boundary started this cycle
        metrics = {"lorasc/cycle": trained_in, "lorasc/experts_merged": self.cycle - int(self.in_cycle)}
        if self.slow_step is not None:
            metrics["lorasc/slow_step"] = self.slow_step
        return {**metrics, **self.penalty.metrics()}

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
        """Global warmup + cosine decay, with `rewarmup_steps` of linear re-warmup after each reset; with
        tasks, the running (or last) task's: the schedule restarts at each task."""
        ends = [end - self.tasks.start_step for end in self.ends if end > self.tasks.start_step]
        if not ends:
            raise RuntimeError("call begin(total_steps, steps_per_epoch) or begin_task(...) before scheduler()")
        return jagged_scheduler(optimizer, ends[-1], warmup_steps, ends, self.config.rewarmup_steps)

    # ---- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The cascade's own state: plain values and tensors (`torch.load(weights_only=True)` reads it).
        The expert and the head are the model's trainable parameters; the backbone is rebuilt."""
        return {"cycle": self.cycle, "steps": self.steps, "ends": list(self.ends), "in_cycle": self.in_cycle,
                "slow": self.slow.state_dict(), "init": self.init.state_dict(), "head": self.head.state_dict(),
                "slow_step": self.slow_step, "tasks": self.tasks.state_dict(), "olora": self.penalty.state_dict(),
                "shadow": self.shadow.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the state and rebuild the backbone from W0 (with the noise if a cycle is running).
        The cascade must wrap the same pristine model as the one that wrote `state`."""
        self.cycle, self.steps, self.ends, self.in_cycle = state["cycle"], state["steps"], list(state["ends"]), state["in_cycle"]
        self.slow = type(self.slow).from_state(state["slow"])
        self.init.load_state_dict(state["init"])
        self.head.load_state_dict(state["head"])
        self.slow_step = state.get("slow_step")  # absent from checkpoints written before it was kept
        self.tasks = TaskLog.from_state(state.get("tasks", []))  # absent before tasks
        self.penalty.load_state_dict(state.get("olora", {}))  # absent before O-LoRA
        self.shadow.load_state_dict(state.get("shadow", {}))  # absent before EMA shadows
        self._write_backbone()

    # ---- internals ------------------------------------------------------------------------
    def _expert_tensors(self, layer: LoraLinear) -> list[torch.nn.Parameter]:
        """The adapter's tensors as PEFT lists them: A, B and a variant's own (e.g. DoRA's magnitude)."""
        modules = [getattr(layer, name) for name in layer.adapter_layer_names]
        return [p for m in modules if self.adapter in m for p in m[self.adapter].parameters()]

    def check_plan(self, cycles: int) -> None:
        """Refuse a plan that merges `cycles` more experts than the backbone can carry (a quantized one's budget)."""
        self.backbone.check_plan(self.slow, {name: cycles * layer.r[self.adapter] for name, layer in self.layers.items()})

    def ends_so_far(self) -> list[int]:
        """The ends of the cycles run so far; the last one (ended early, or with its task) at the current step."""
        return [*self.ends[: self.cycle - 1], self.steps] if self.cycle else []

    def _write_backbone(self) -> None:
        """The weights the current state implies: noisy during a cycle, clean between cycles."""
        if self.in_cycle:
            self.backbone.write(self.slow, self.cycle, self.init.offsets(self.layers, self.adapter))
        else:
            self.backbone.write(self.slow)

    def _finished_expert(self) -> FinishedExpert:
        return FinishedExpert(self.layers, self.adapter,
                              factors=lambda name: self.shadow.factors(name, self.init.factors(name, self.layers[name], self.adapter)),
                              clean=lambda name: self.backbone.clean32(self.backbone.param_of[name], self.slow))

    def _seeded(self, seed: int):
        """Fork the CPU RNG and the RNG of every GPU the expert lives on, then seed them all."""
        devices = sorted({p.device.index or 0 for p in self.expert_params if p.is_cuda})
        stack = contextlib.ExitStack()
        stack.enter_context(torch.random.fork_rng(devices=devices))
        torch.manual_seed(seed)
        return stack

    def _zero_experts(self) -> None:
        for layer in self.layers.values():
            layer.lora_B[self.adapter].weight.zero_()
        self.slow.reset_expert(self.layers, self.adapter)
