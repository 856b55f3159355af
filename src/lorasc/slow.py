"""The slow state S of a cascade: what the finished experts added to the backbone, exactly, in float32.

One kind per expert variant, chosen by `slow_state_for` as PEFT picks a LoRA variant; every kind
implements `SlowState`, and the cascade, the exports and the methods call nothing else:
- LowRankSlow (LoRA, rsLoRA): S = Σ_t α·s·B_t·A_t kept as stacked factors (c·A_t, c·B_t) with
  c = √(α·s), on the host. The same factors are the exact stacked adapter (export.py).
- FoldedSlow: S folded into quantized weights by re-quantizing at each merge (a baseline, requantize.py).
- DenseSlow (DoRA): the merge W ← W + α·(Merge(W, expert) − W) rescales whole columns, so S is not
  low-rank; the clean weight is kept as a float32 master on the host (4 bytes per adapted weight).

States are immutable: `merged` returns the next state and changes nothing, so a failing merge leaves
the cascade as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
from peft import LoraConfig
from peft.tuners.lora import Linear as LoraLinear
from peft.utils.other import transpose

Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer name -> (A, B), ΔW = s·B·A


class NoStackedAdapter(ValueError):
    """S is not low-rank: no adapter reproduces it exactly; the dense model does."""


@dataclass(frozen=True)
class FinishedExpert:
    """A trained fast expert as a slow state takes it in, per LoRA layer name: `factors(name)` is the
    (A, B) whose s·B·A is the expert's change (init.py), `clean(name)` the clean weight W0 + S it was
    trained on, in float32 on the weight's device."""

    layers: dict[str, LoraLinear]
    adapter: str
    factors: Callable[[str], tuple[torch.Tensor, torch.Tensor]]
    clean: Callable[[str], torch.Tensor]

    def delta(self, name: str, like: torch.Tensor) -> torch.Tensor:
        """s·B·A of one layer in float32, in the weight's orientation, on `like`'s device."""
        layer = self.layers[name]
        a, b = self.factors(name)
        return (transpose(b.float() @ a.float(), layer.fan_in_fan_out) * layer.scaling[self.adapter]).to(like)


class SlowState(Protocol):
    compressions: list[dict[str, float]]  # per truncation of S (a quantized backbone's budget): relative error per layer; empty: exact

    def clean(self, name: str, layer: LoraLinear, pristine: torch.Tensor) -> torch.Tensor:
        """W0 + S of one layer in float32 on `pristine`'s device; `pristine` (W0 in float32, a new
        tensor) may be modified and returned."""

    def delta(self, name: str, layer: LoraLinear, pristine: torch.Tensor) -> torch.Tensor:
        """S of one layer alone, exactly, in float32 and the weight's orientation."""

    def merged(self, expert: FinishedExpert, alpha: float) -> SlowState:
        """The next state, S + α·(Merge(W, expert) − W) on each clean W; changes nothing."""

    def reset_expert(self, layers: dict[str, LoraLinear], adapter: str) -> None:
        """Set a fresh (or zeroed) expert's variant parameters beyond A and B, if any, so that it adds
        nothing to the weights as they are now."""

    def stacked_factors(self) -> Factors:
        """Per layer (A_cat, B_cat) with B_cat·A_cat = S exactly; NoStackedAdapter if none exists."""

    def state_dict(self) -> dict:
        """Plain values and tensors (`torch.load(weights_only=True)` reads them)."""

    @classmethod
    def from_state(cls, state: dict) -> SlowState: ...


def relative_step(before: SlowState, after: SlowState, layers: dict[str, LoraLinear], pristine: Callable[[str], torch.Tensor]) -> float:
    """‖S' − S‖/‖W0 + S‖ over every adapted matrix (S of `before`, S' of `after`); `pristine(name)` is W0 in float32."""
    step = weight = 0.0
    for name, layer in layers.items():
        w0 = pristine(name)
        old = before.delta(name, layer, w0)
        step += (after.delta(name, layer, w0) - old).square().sum().item()
        weight += (w0 + old).square().sum().item()
    return (step / weight) ** 0.5 if weight else 0.0


def slow_state_for(expert: LoraConfig, quantized_merge: str) -> type[SlowState]:
    if quantized_merge == "requantize":
        return FoldedSlow
    return DenseSlow if expert.use_dora else LowRankSlow


class LowRankSlow:
    def __init__(self, history: list[Factors] | None = None, compressions: list[dict[str, float]] | None = None):
        self.history = history or []  # per finished cycle: (c·A_t, c·B_t) per layer
        self.compressions = compressions or []  # per truncation of the stack (`compressed`): relative error per layer

    def clean(self, name: str, layer: LoraLinear, pristine: torch.Tensor) -> torch.Tensor:
        if not self.history:
            return pristine
        a, b = (t.to(pristine.device, non_blocking=True) for t in self._stacked(name))
        return pristine.add_(transpose(b @ a, layer.fan_in_fan_out))

    def delta(self, name: str, layer: LoraLinear, pristine: torch.Tensor) -> torch.Tensor:
        return self.clean(name, layer, torch.zeros_like(pristine))  # 0 + B·A: exact

    def merged(self, expert: FinishedExpert, alpha: float) -> LowRankSlow:
        """S + α·s·B·A: the stacked factors gain (c·A, c·B), c = √(α·s)."""
        cycle = {}
        for name, layer in expert.layers.items():
            c = math.sqrt(alpha * layer.scaling[expert.adapter])
            a, b = expert.factors(name)
            cycle[name] = (c * a.detach().float().cpu(), c * b.detach().float().cpu())
        return type(self)([*self.history, cycle], self.compressions)

    def stack(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(A_cat, B_cat) of one layer, B_cat·A_cat = S exactly; None before the first merge."""
        return self._stacked(name) if self.history else None

    def compressed(self, rank: int) -> LowRankSlow:
        """S truncated by SVD to `rank` per layer: one stacked cycle, and the relative error recorded.
        Not exact any more; `compressions` says by how much."""
        deltas = {name: b @ a for name, (a, b) in self.stacked_factors().items()}
        factors, errors = compress(deltas, rank)
        return LowRankSlow([factors], [*self.compressions, errors])

    def reset_expert(self, layers: dict[str, LoraLinear], adapter: str) -> None:
        pass  # A and B are all there is

    def stacked_factors(self) -> Factors:
        if not self.history:
            raise RuntimeError("no cycle has finished yet: nothing to export")
        return {name: self._stacked(name) for name in self.history[0]}

    def _stacked(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([h[name][0] for h in self.history], 0), torch.cat([h[name][1] for h in self.history], 1)

    def state_dict(self) -> dict:
        return {"history": self.history, "compressions": self.compressions}

    @classmethod
    def from_state(cls, state: dict) -> LowRankSlow:
        return cls(list(state["history"]), list(state.get("compressions", [])))  # absent before quantized backbones


class FoldedSlow(LowRankSlow):
    """`quantized_merge="requantize"`, the peers' way on a quantized backbone (requantize.py): each merge is
    folded into the quantized weights, whose dequantized value then holds what survived of S. The
    factors are kept to say what was learned (`delta`), not to rebuild the weights."""

    def clean(self, name: str, layer: LoraLinear, pristine: torch.Tensor) -> torch.Tensor:
        return pristine

    def delta(self, name: str, layer: LoraLinear, pristine: torch.Tensor) -> torch.Tensor:
        return LowRankSlow.clean(self, name, layer, torch.zeros_like(pristine))

    def stacked_factors(self) -> Factors:
        raise NoStackedAdapter("quantized_merge='requantize' has no exact stacked adapter: each merge was re-quantized into the "
                               "weights; export the dense model")


def compress(deltas: dict[str, torch.Tensor], rank: int) -> tuple[dict, dict[str, float]]:
    """Rank-`rank` factors (A, B) of each delta by truncated SVD, and the relative Frobenius error
    ‖Δ − Δ_k‖ / ‖Δ‖ of each."""
    if rank < 1:
        raise ValueError(f"rank={rank} is not allowed: an integer >= 1")
    factors, errors = {}, {}
    for name, delta in deltas.items():
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        k = min(rank, s.numel())
        root = s[:k].sqrt()
        a = torch.zeros(rank, delta.shape[1])
        b = torch.zeros(delta.shape[0], rank)
        a[:k], b[:, :k] = root[:, None] * vh[:k], u[:, :k] * root
        factors[name] = (a, b)
        total = s.square().sum()
        errors[name] = (s[k:].square().sum() / total).sqrt().item() if total > 0 else 0.0
    return factors, errors


class DenseSlow:
    def __init__(self, masters: dict[str, torch.Tensor] | None = None):
        self.masters = masters or {}  # layer name -> clean weight in float32; absent: still W0
        self.compressions: list[dict[str, float]] = []  # never truncated

    def clean(self, name: str, layer: LoraLinear, pristine: torch.Tensor) -> torch.Tensor:
        master = self.masters.get(name)
        return pristine if master is None else master.to(pristine.device, non_blocking=True, copy=True)

    def delta(self, name: str, layer: LoraLinear, pristine: torch.Tensor) -> torch.Tensor:
        return self.clean(name, layer, pristine.clone()) - pristine

    def merged(self, expert: FinishedExpert, alpha: float) -> DenseSlow:
        """W + α·(Merge(W, expert) − W) on the clean float32 W, with PEFT's DoRA merge."""
        masters = dict(self.masters)
        for name, layer in expert.layers.items():
            w = expert.clean(name)
            masters[name] = torch.lerp(w, dora_merge(layer, expert.adapter, w, expert.delta(name, w)), alpha).cpu()
        return DenseSlow(masters)

    @torch.no_grad()
    def reset_expert(self, layers: dict[str, LoraLinear], adapter: str) -> None:
        """DoRA's magnitude starts as the column norm of the current W (B = 0), updated in place so
        the optimizer keeps pointing at the same Parameter."""
        for layer in layers.values():
            weight = layer.get_base_layer().weight.float()
            dora = layer.lora_magnitude_vector[adapter]
            dora.weight.copy_(dora.get_weight_norm(weight, torch.zeros_like(transpose(weight, layer.fan_in_fan_out)), scaling=1))

    def stacked_factors(self) -> Factors:
        raise NoStackedAdapter("expert.use_dora=True has no exact stacked adapter: a DoRA merge is full-rank; "
                               "export the dense model or a compressed adapter")

    def state_dict(self) -> dict:
        return {"masters": self.masters}

    @classmethod
    def from_state(cls, state: dict) -> DenseSlow:
        return cls(dict(state["masters"]))


def dora_merge(layer: LoraLinear, adapter: str, weight: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """PEFT's DoRA merge of `weight` (float32) with the expert's `delta` = s·B·A: (m / ‖W + ΔW‖_c)·(W + ΔW)."""
    dora = layer.lora_magnitude_vector[adapter]
    norm = dora.get_weight_norm(weight, transpose(delta, layer.fan_in_fan_out), scaling=1)
    factor = transpose((dora.weight.to(weight) / norm).view(-1, 1), layer.fan_in_fan_out)
    return factor * (weight + delta)


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
