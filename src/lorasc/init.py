"""How each cycle's fresh expert starts (`LoRASCConfig.expert_init`), one strategy object per mode.

- kaiming: PEFT's own reset (A Kaiming-uniform or Gaussian, B = 0).
- orthogonal: the same draw, with A's rows projected off the row spaces of the earlier experts'
  trained A (norms kept), while the input dimension leaves room, so every cycle adds new directions.
- gradient: LoRA-GA through PEFT's `lora_ga_init`: A and B from the SVD of the loss gradient of the
  (noisy) backbone weight over the first `gradient_batches` batches that `grad_batches()` yields.
  The initial product s·B0·A0 is compensated in the weight (an `offset` the backbone adds while the
  cycle runs), so the model's outputs at the start of the cycle are unchanged, and the merged
  change is s·(B·A − B0·A0) = s·[B, −B0]·[A; A0].

Every strategy offers: `start` (after PEFT's reset, under the cycle's seed), `offsets` (additions to
the weights during the cycle, as float32 low-rank factors (A, B) of B·A, so that a quantized backbone
carries them beside its weights as it carries the slow state), `factors` (the (A, B) whose s·B·A is the expert's
change), `end` (after the merge), and a state for checkpoints.
"""

from __future__ import annotations

import itertools
from typing import Callable, Iterable

import torch
from peft import LoraGAConfig
from peft.tuners.lora import Linear as LoraLinear

Layers = dict[str, LoraLinear]
Factors = dict[str, tuple[torch.Tensor, torch.Tensor]]  # layer name -> (A, B) of the change B·A
BatchSource = Callable[[], Iterable[dict]]


def expert_weights(layer: LoraLinear, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
    return layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach()


class KaimingInit:
    """Every strategy is built from the same two arguments: a source of training batches and how many
    of them it may use (`LoRASCConfig.gradient_batches`); only LoRA-GA reads batches."""

    def __init__(self, batches: BatchSource | None = None, max_batches: int = 1):
        self.batches, self.max_batches = batches, max_batches

    def start(self, model: torch.nn.Module, layers: Layers, adapter: str, init_lora_weights) -> None:
        for name in sorted(layers):
            layers[name].reset_lora_parameters(adapter, init_lora_weights)

    def offsets(self, layers: Layers, adapter: str) -> Factors:
        return {}

    def factors(self, name: str, layer: LoraLinear, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        return expert_weights(layer, adapter)

    def end(self, layers: Layers, adapter: str) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class OrthogonalInit(KaimingInit):
    """Keeps, per layer, an orthonormal basis (in_features × k) of the earlier experts' A row spaces."""

    def __init__(self, batches: BatchSource | None = None, max_batches: int = 1):
        super().__init__(batches, max_batches)
        self.bases: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def start(self, model: torch.nn.Module, layers: Layers, adapter: str, init_lora_weights) -> None:
        super().start(model, layers, adapter, init_lora_weights)
        for name, layer in layers.items():
            basis, a = self.bases.get(name), layer.lora_A[adapter].weight
            if basis is None or basis.shape[1] + a.shape[0] > a.shape[1]:
                continue  # nothing to avoid yet, or no room left for r new directions
            basis = basis.to(a.device, a.dtype)
            norms = a.norm(dim=1, keepdim=True)
            a.sub_((a @ basis) @ basis.T)
            a.mul_(norms / a.norm(dim=1, keepdim=True))

    def end(self, layers: Layers, adapter: str) -> None:
        for name, layer in layers.items():
            a = layer.lora_A[adapter].weight.detach().float().cpu()
            old = self.bases.get(name)
            span = a.T if old is None else torch.cat([old, a.T], dim=1)
            if span.shape[1] <= span.shape[0]:
                self.bases[name] = torch.linalg.qr(span).Q

    def state_dict(self) -> dict:
        return {"bases": self.bases}

    def load_state_dict(self, state: dict) -> None:
        self.bases = dict(state["bases"])


class GradientInit(KaimingInit):
    """LoRA-GA; remembers the initial (A0, B0) of the running cycle."""

    def __init__(self, batches: BatchSource | None = None, max_batches: int = 1):
        if batches is None:
            raise ValueError("expert_init='gradient' is not allowed without grad_batches: pass a function returning a few training batches")
        super().__init__(batches, max_batches)
        self.initial: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def start(self, model: torch.nn.Module, layers: Layers, adapter: str, init_lora_weights) -> None:
        super().start(model, layers, adapter, init_lora_weights)
        grads = weight_gradients(model, layers, itertools.islice(self.batches(), self.max_batches))
        with torch.no_grad():
            for name, layer in layers.items():
                expert = [layer.lora_A[adapter].weight, layer.lora_B[adapter].weight]
                dtype = expert[0].dtype
                layer.get_base_layer()._peft_loraga_grad = grads[name]
                layer.lora_ga_init(adapter, LoraGAConfig())
                # PEFT casts the expert to the weight's dtype and compensates in the weight, rounded;
                # the expert keeps its own dtype, and the cascade rewrites the weight with `offsets`
                for p in expert:
                    p.data = p.data.to(dtype)
                self.initial[name] = tuple(t.clone() for t in expert_weights(layer, adapter))

    def offsets(self, layers: Layers, adapter: str) -> Factors:
        """−s·B0·A0 per layer, as the float32 factors (A0, −s·B0)."""
        return {name: (a0.float(), -layers[name].scaling[adapter] * b0.float()) for name, (a0, b0) in self.initial.items()}

    def factors(self, name: str, layer: LoraLinear, adapter: str) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = expert_weights(layer, adapter)
        a0, b0 = self.initial[name]
        return torch.cat([a, a0.to(a)], 0), torch.cat([b, -b0.to(b)], 1)

    def end(self, layers: Layers, adapter: str) -> None:
        self.initial = {}

    def state_dict(self) -> dict:
        return {"initial": self.initial}

    def load_state_dict(self, state: dict) -> None:
        self.initial = {name: tuple(pair) for name, pair in state["initial"].items()}


def weight_gradients(model: torch.nn.Module, layers: Layers, batches: Iterable[dict]) -> dict[str, torch.Tensor]:
    """The loss gradient of each layer's base weight, averaged over `batches`; no gradient is left behind."""
    weights = {name: layer.get_base_layer().weight for name, layer in layers.items()}
    with torch.enable_grad():
        for w in weights.values():
            w.requires_grad_(True)
        batches = list(batches)
        for batch in batches:
            (model(**batch).loss / len(batches)).backward()
    grads = {name: w.grad for name, w in weights.items()}
    for w in weights.values():
        w.requires_grad_(False)
    for p in model.parameters():
        p.grad = None  # the estimate must not leak into the first optimizer step
    return grads


INIT_STRATEGIES = {"kaiming": KaimingInit, "orthogonal": OrthogonalInit, "gradient": GradientInit}
