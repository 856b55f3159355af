"""How each cycle's fresh expert starts (`LoRASCConfig.expert_init`).

- kaiming: PEFT's own reset (A Kaiming-uniform or Gaussian, B = 0).
- orthogonal: the same draw, with A's rows projected off the row spaces of the earlier experts'
  trained A (norms kept), while the input dimension leaves room, so every cycle adds new directions.
- gradient: LoRA-GA through PEFT's `lora_ga_init`: A and B from the SVD of the loss gradient of the
  (noisy) backbone weight over a few batches. PEFT subtracts the initial product s·B0·A0 from the
  weight, so the model's outputs at the start of the cycle are unchanged; the cascade adds it back
  before merging, and merges s·(B·A − B0·A0).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from peft import LoraGAConfig
from peft.tuners.lora import Linear as LoraLinear

Layers = dict[str, LoraLinear]


def kaiming(layers: Layers, adapter: str, init_lora_weights) -> None:
    for name in sorted(layers):
        layers[name].reset_lora_parameters(adapter, init_lora_weights)


class OrthogonalBasis:
    """Per layer, an orthonormal basis (in_features × k) of the earlier experts' A row spaces."""

    def __init__(self) -> None:
        self.bases: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def project(self, layers: Layers, adapter: str) -> None:
        for name, layer in layers.items():
            basis, a = self.bases.get(name), layer.lora_A[adapter].weight
            if basis is None or basis.shape[1] + a.shape[0] > a.shape[1]:
                continue  # nothing to avoid yet, or no room left for r new directions
            basis = basis.to(a.device, a.dtype)
            norms = a.norm(dim=1, keepdim=True)
            a.sub_((a @ basis) @ basis.T)
            a.mul_(norms / a.norm(dim=1, keepdim=True))

    @torch.no_grad()
    def extend(self, layers: Layers, adapter: str) -> None:
        for name, layer in layers.items():
            a = layer.lora_A[adapter].weight.detach().float().cpu()
            old = self.bases.get(name)
            span = a.T if old is None else torch.cat([old, a.T], dim=1)
            if span.shape[1] <= span.shape[0]:
                self.bases[name] = torch.linalg.qr(span).Q


def gradient(model: torch.nn.Module, layers: Layers, adapter: str, batches: Iterable[dict]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """LoRA-GA on every layer; returns the initial (A0, B0) that PEFT compensated in the weight."""
    weights = [layer.get_base_layer().weight for layer in layers.values()]
    with torch.enable_grad():
        for w in weights:
            w.requires_grad_(True)
        batches = list(batches)
        for batch in batches:
            (model(**batch).loss / len(batches)).backward()
    initial = {}
    with torch.no_grad():
        for (name, layer), w in zip(layers.items(), weights):
            layer.get_base_layer()._peft_loraga_grad = w.grad
            layer.lora_ga_init(adapter, LoraGAConfig())
            initial[name] = (layer.lora_A[adapter].weight.detach().clone(), layer.lora_B[adapter].weight.detach().clone())
    for w in weights:
        w.requires_grad_(False)
    for p in model.parameters():
        p.grad = None  # the estimate must not leak into the first optimizer step
    return initial


BatchSource = Callable[[], Iterable[dict]]
