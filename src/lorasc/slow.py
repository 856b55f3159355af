"""The slow state S of a cascade: what the finished experts added to the backbone, exactly, in float32.

Two kinds, chosen by the expert type (as PEFT picks a LoRA variant):
- LowRankSlow (LoRA, rsLoRA): S = Σ_t α·s·B_t·A_t kept as stacked factors (c·A_t, c·B_t) with
  c = √(α·s), on the host. The same factors are the exact stacked adapter (export.py).
- DenseSlow (DoRA): the merge W ← W + α·(Merge(W, expert) − W) rescales whole columns, so S is not
  low-rank; the clean weight is kept as a float32 master on the host (4 bytes per adapted weight).

Both are immutable: `merged` returns the next state and changes nothing, so a failing merge leaves
the cascade as it was.
"""

from __future__ import annotations

import math

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.utils.other import transpose

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer name -> (A, B), ΔW = s·B·A


class LowRankSlow:
    def __init__(self, history: list[Factors] | None = None):
        self.history = history or []  # per finished cycle: (c·A_t, c·B_t) per layer

    def clean(self, name: str, layer: LoraLinear, pristine: torch.Tensor) -> torch.Tensor:
        if not self.history:
            return pristine
        a = torch.cat([h[name][0] for h in self.history], 0).to(pristine.device, non_blocking=True)
        b = torch.cat([h[name][1] for h in self.history], 1).to(pristine.device, non_blocking=True)
        return pristine.add_(transpose(b @ a, layer.fan_in_fan_out))

    def merged(self, layers: dict[str, LoraLinear], adapter: str, alpha: float, expert_factors, clean) -> "LowRankSlow":
        """S + α·s·B·A, with (A, B) = `expert_factors(name, layer)`: the expert's change of the weight."""
        cycle = {}
        for name, layer in layers.items():
            c = math.sqrt(alpha * layer.scaling[adapter])
            a, b = expert_factors(name, layer)
            cycle[name] = (c * a.detach().float().cpu(), c * b.detach().float().cpu())
        return LowRankSlow([*self.history, cycle])

    def state_dict(self) -> dict:
        return {"history": self.history}

    @classmethod
    def from_state(cls, state: dict) -> "LowRankSlow":
        return cls(list(state["history"]))


class DenseSlow:
    def __init__(self, masters: dict[str, torch.Tensor] | None = None):
        self.masters = masters or {}  # layer name -> clean weight in float32; absent: still W0

    def clean(self, name: str, layer: LoraLinear, pristine: torch.Tensor) -> torch.Tensor:
        master = self.masters.get(name)
        return pristine if master is None else master.to(pristine.device, non_blocking=True, copy=True)

    def merged(self, layers: dict[str, LoraLinear], adapter: str, alpha: float, expert_factors, clean) -> "DenseSlow":
        """W + α·(Merge(W, expert) − W) on the clean float32 W = `clean(name)`."""
        masters = dict(self.masters)
        for name, layer in layers.items():
            w = clean(name)
            masters[name] = torch.lerp(w, dora_merge(layer, adapter, w), alpha).cpu()
        return DenseSlow(masters)

    def state_dict(self) -> dict:
        return {"masters": self.masters}

    @classmethod
    def from_state(cls, state: dict) -> "DenseSlow":
        return cls(dict(state["masters"]))


def dora_merge(layer: LoraLinear, adapter: str, weight: torch.Tensor) -> torch.Tensor:
    """PEFT's DoRA merge of `weight` (float32): (m / ‖W + s·B·A‖_c)·(W + s·B·A)."""
    delta = layer.get_delta_weight(adapter).to(weight)
    dora = layer.lora_magnitude_vector[adapter]
    norm = dora.get_weight_norm(weight, transpose(delta, layer.fan_in_fan_out), scaling=1)
    factor = transpose((dora.weight.to(weight) / norm).view(-1, 1), layer.fan_in_fan_out)
    return factor * (weight + delta)


def slow_state_for(use_dora: bool):
    return DenseSlow if use_dora else LowRankSlow


class KeepHead:
    """The default: a trained head (modules_to_save) keeps its weights across cycles."""

    def begin(self, params: dict[str, torch.Tensor]) -> None:
        pass

    def merged(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class SlowHead(KeepHead):
    """`slow_head=True`: the head takes the same slow step, head ← start + α·(head − start)."""

    def __init__(self, alpha: float):
        self.alpha, self.start = alpha, {}

    def begin(self, params: dict[str, torch.Tensor]) -> None:
        self.start = {n: p.detach().clone() for n, p in params.items()}

    def merged(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {n: torch.lerp(start.to(params[n]), params[n].detach(), self.alpha) for n, start in self.start.items()}

    def state_dict(self) -> dict:
        return {"start": self.start}

    def load_state_dict(self, state: dict) -> None:
        self.start = dict(state["start"])
