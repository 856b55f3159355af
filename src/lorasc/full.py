"""Full fine-tuning, the benchmark's upper reference, behind the part of LoRASC's interface that the loop uses."""

from __future__ import annotations

import torch

from .config import LoRASCConfig
from .schedule import jagged_scheduler


class FullFineTune:
    """Every weight trained, one "cycle", no experts. A checkpoint holds every weight (they are all
    trainable), so there is no backbone to rebuild. `config` is recorded as given and unused."""

    num_cycles = 1

    def __init__(self, model: torch.nn.Module, config: LoRASCConfig):
        self.model, self.config, self.steps, self.cycle, self.ends = model, config, 0, 1, []

    def begin(self, total_steps: int, steps_per_epoch: int | None = None) -> list[int]:
        self.ends = [total_steps]
        return self.ends

    def optimizer(self, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=weight_decay)

    def scheduler(self, optimizer, warmup_steps: int = 0):
        return jagged_scheduler(optimizer, self.ends[-1], warmup_steps, self.ends, rewarmup_steps=0)

    def before_optimizer_step(self) -> None:
        pass  # no experts: no O-LoRA loss

    def step(self, optimizer=None) -> bool:
        self.steps += 1
        return self.steps == self.ends[-1]

    def finish(self) -> None:
        pass

    def cycle_metrics(self) -> dict[str, float]:
        return {"lorasc/cycle": 1, "lorasc/experts_merged": 0}  # no experts: nothing is merged

    def verify_replicas(self) -> None:
        pass  # every weight is trained: DDP keeps the replicas in step

    def state_dict(self) -> dict:
        return {"steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.steps = state["steps"]
