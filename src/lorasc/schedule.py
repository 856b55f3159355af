"""Where cycles end, and the jagged learning-rate schedule (ReLoRA's) that goes with them."""

from __future__ import annotations

import math
import warnings

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from .config import LoRASCConfig, require

MAX_CYCLES = 1_000_000  # a plan beyond this is a typo, and its list of cycle ends alone could fill the memory


def check_cycle_plan(config: LoRASCConfig, total_steps: int, steps_per_epoch: int | None = None) -> int:
    """The number of cycles of a run of `total_steps` optimizer steps; refuses, before any model is
    loaded (and before a list of cycle ends is allocated), a plan the run cannot hold."""
    require(total_steps >= 1, "total_steps", total_steps, "an integer >= 1")
    if config.num_cycles is not None:
        require(config.num_cycles <= total_steps, "num_cycles", config.num_cycles,
                f"at most the run's {total_steps} optimizer steps; lower num_cycles, or raise total_steps")
        cycles = config.num_cycles
    else:
        length = config.cycle_steps or steps_per_epoch
        require(length is not None and length >= 1, "steps_per_epoch", steps_per_epoch, "an integer >= 1 (or set cycle_steps or num_cycles)")
        cycles = math.ceil(total_steps / length)
    require(cycles <= MAX_CYCLES, "cycles", cycles, f"at most {MAX_CYCLES:,}; raise cycle_steps or lower num_cycles")
    return cycles


def cycle_ends(config: LoRASCConfig, total_steps: int, steps_per_epoch: int | None = None, one_of_many: bool = False) -> list[int]:
    """Optimizer-step counts after which each cycle ends; the last one is `total_steps`. `one_of_many`: the
    plan of one task of a sequence, where a single cycle is not plain LoRA (the tasks chain the merges)."""
    cycles = check_cycle_plan(config, total_steps, steps_per_epoch)
    if config.num_cycles is not None:
        ends = [round(total_steps * t / cycles) for t in range(1, cycles + 1)]
    else:
        length = config.cycle_steps or steps_per_epoch
        ends = [min(t * length, total_steps) for t in range(1, cycles + 1)]
    if len(ends) == 1 and config.slow_alpha < 1 and not one_of_many:
        warnings.warn(
            f"LoRASC with a single cycle is plain LoRA scaled by slow_alpha={config.slow_alpha}; "
            "set num_cycles or cycle_steps, or train for several epochs",
            stacklevel=2,
        )
    return ends


def jagged_lr_lambda(total_steps: int, warmup_steps: int, ends: list[int], rewarmup_steps: int, min_ratio: float = 0.1):
    """LR multiplier: linear warmup, cosine decay to `min_ratio`, and after each expert reset a
    linear re-warmup from 0 to the value the global schedule reaches at the end of the ramp."""
    starts = [0] + ends[:-1]

    def global_multiplier(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def multiplier(step: int) -> float:
        start = max(s for s in starts if s <= step)
        since_reset = step - start
        if start == 0 or since_reset >= rewarmup_steps:
            return global_multiplier(step)
        return global_multiplier(start + rewarmup_steps) * (since_reset + 1) / (rewarmup_steps + 1)

    return multiplier


def jagged_scheduler(optimizer: Optimizer, total_steps: int, warmup_steps: int, ends: list[int], rewarmup_steps: int) -> LambdaLR:
    return LambdaLR(optimizer, jagged_lr_lambda(total_steps, warmup_steps, ends, rewarmup_steps))
