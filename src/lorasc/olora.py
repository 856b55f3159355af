"""O-LoRA's orthogonality loss (Wang et al. 2023, `LoRASCConfig.olora_lambda`), one strategy object per setting.

While expert t trains, λ1·Σ_layers Σ_{k<t} N(A_k·A_tᵀ) pushes its A's rows off the row spaces of the
earlier experts' A, so a new task writes into input directions the earlier tasks did not use. N is the
sum of |entries| ("l1", as the authors' code) or the squared Frobenius norm ("fro", as their paper).

The loop's loss stays the model's: `before_optimizer_step` adds the penalty's gradient to A's `.grad`
just before the optimizer step (after the Trainer's gradient clipping; before the plain loop's).

The earlier A's are the penalty's own record, taken from each merged expert's factors (shadow.py's when
an EMA shadow is merged), not rebuilt from the slow history: the history scales them by √(α_t·s) with α_t
varying per task (`task_alpha`), and a quantized backbone may truncate it. They are stacked once per
cycle on the expert's device, so a step adds two small matmuls per layer.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import Linear as LoraLinear

Layers = dict[str, LoraLinear]
NORMS = {"l1": lambda m: m.abs().sum(), "fro": lambda m: m.square().sum()}


def olora_penalty(earlier: dict[str, torch.Tensor], current: dict[str, torch.Tensor], lam: float, norm: str) -> torch.Tensor:
    """λ1·Σ_layers N(A_earlier·A_tᵀ), A_earlier the earlier experts' A stacked by rows, computed in their dtype
    (float32 as recorded), whatever the expert's."""
    terms = [NORMS[norm](a_k @ current[name].to(a_k.dtype).T) for name, a_k in earlier.items()]
    return lam * torch.stack(terms).sum()


class NoPenalty:
    """`olora_lambda=None`: the loss is the model's alone."""

    def add_gradients(self, layers: Layers, adapter: str) -> None:
        pass

    def record(self, layers: Layers, factors) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class OLoRAPenalty(NoPenalty):
    def __init__(self, lam: float, norm: str):
        self.lam, self.norm = lam, norm
        self.earlier: dict[str, list[torch.Tensor]] = {}  # layer name -> the merged experts' A (float32, host), in order
        self.stacked: dict[str, torch.Tensor] = {}  # the same, concatenated on A's device: rebuilt after each record
        self.value = None  # the last step's penalty

    @torch.no_grad()
    def record(self, layers: Layers, factors) -> None:
        """After a merge: keep the merged expert's A (`factors(name)[0]`) per layer."""
        for name in layers:
            self.earlier.setdefault(name, []).append(factors(name)[0].detach().float().cpu().clone())
        self.stacked = {}

    def add_gradients(self, layers: Layers, adapter: str) -> None:
        """A.grad += ∂penalty/∂A for the running expert; nothing before the first merge."""
        if not self.earlier:
            return
        params = {name: layer.lora_A[adapter].weight for name, layer in layers.items()}
        if not self.stacked:
            self.stacked = {name: torch.cat(self.earlier[name]).to(p.device) for name, p in params.items()}
        with torch.enable_grad():
            penalty = olora_penalty(self.stacked, params, self.lam, self.norm)
            grads = torch.autograd.grad(penalty, list(params.values()))
        for p, grad in zip(params.values(), grads):
            if p.grad is None:
                p.grad = grad.to(p.dtype)
            else:
                p.grad.add_(grad.to(p.grad.dtype))
        self.value = penalty.detach()

    def metrics(self) -> dict[str, float]:
        return {} if self.value is None else {"lorasc/olora_penalty": self.value.item()}

    def state_dict(self) -> dict:
        return {"earlier": self.earlier}

    def load_state_dict(self, state: dict) -> None:
        self.earlier, self.stacked = {name: list(a) for name, a in state.get("earlier", {}).items()}, {}


def penalty_for(lam: float | None, norm: str) -> NoPenalty:
    return NoPenalty() if lam is None else OLoRAPenalty(lam, norm)
