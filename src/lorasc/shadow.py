"""Which copy of the running expert a merge takes in (`LoRASCConfig.expert_ema`), one strategy object per setting.

- FastExpert (None): the trained expert itself.
- EMAShadow (d): I-LoRA's slow learner at the scale of one cycle. After every optimizer step the shadow
  (float32 copies of A and B, started as the fresh expert) takes θ_s ← d·θ_s + (1 − d)·θ_f, and the merge
  takes the shadow: an average of the expert over its last ~1/(1 − d) steps, less tied to the last batches.

Both hand the merge its factors (init.py's `factors`, whose first r rows of A and columns of B are the
running expert: the shadow replaces those and keeps what the init appended, e.g. LoRA-GA's −B0·A0).
"""

from __future__ import annotations

import torch
from peft.tuners.lora import Linear as LoraLinear

Layers = dict[str, LoraLinear]
Pair = tuple[torch.Tensor, torch.Tensor]


class FastExpert:
    def start(self, layers: Layers, adapter: str) -> None:
        pass

    def update(self, layers: Layers, adapter: str) -> None:
        pass

    def factors(self, name: str, factors: Pair) -> Pair:
        return factors

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EMAShadow(FastExpert):
    def __init__(self, decay: float):
        self.decay = decay
        self.shadow: dict[str, Pair] = {}  # layer name -> (A, B) in float32 on the expert's device

    @torch.no_grad()
    def start(self, layers: Layers, adapter: str) -> None:
        self.shadow = {name: (layer.lora_A[adapter].weight.float().clone(), layer.lora_B[adapter].weight.float().clone())
                       for name, layer in layers.items()}

    @torch.no_grad()
    def update(self, layers: Layers, adapter: str) -> None:
        """θ_s ← θ_f + d·(θ_s − θ_f): with d = 0 exactly the fast expert. The shadow moves to the expert's
        device (a checkpoint's loads on the host)."""
        for name, pair in self.shadow.items():
            fast = (layers[name].lora_A[adapter].weight, layers[name].lora_B[adapter].weight)
            self.shadow[name] = tuple(torch.lerp(f.float(), s.to(f.device), self.decay) for f, s in zip(fast, pair))

    def factors(self, name: str, factors: Pair) -> Pair:
        a, b = self.shadow[name]
        r = a.shape[0]
        return torch.cat([a, factors[0][r:].float()], 0), torch.cat([b, factors[1][:, r:].float()], 1)

    def state_dict(self) -> dict:
        return {"shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.shadow = {name: tuple(pair) for name, pair in state.get("shadow", {}).items()}


def shadow_for(decay: float | None) -> FastExpert:
    return FastExpert() if decay is None else EMAShadow(decay)
