"""What a new expert inherits of the optimizer (`LoRASCConfig.optimizer_state`).

- reset: the expert's moments are forgotten (its parameters are new).
- keep: the moments carry over.
- prune: ReLoRA's: the `prune_ratio` share of the moments with the smallest magnitude is zeroed.
The head (modules_to_save) is not an expert and always keeps its state.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


def carry_state(optimizer: Optimizer, expert_params: list[torch.nn.Parameter], mode: str, prune_ratio: float) -> None:
    for p in expert_params:
        if mode == "reset":
            optimizer.state.pop(p, None)
        elif mode == "prune" and "exp_avg_sq" in optimizer.state.get(p, {}):
            prune_smallest(optimizer.state[p], prune_ratio)


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
