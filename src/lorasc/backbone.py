"""The frozen matrices a cascade rewrites, and their pristine values W0 on the host.

The clean backbone is a function, not a state: W_clean = round(W0 + S), with S the slow state
(slow.py) in float32. Every write computes, per matrix and in float32 on the weight's device,

    W ← round(W0 + S + ε + offset)

where ε is the running cycle's noise (or nothing) and `offset` an expert init's compensation (or
nothing, given as low-rank factors). Each weight is therefore rounded once per write, never accumulated in its own dtype: the
merges stay exact in bfloat16 and float16, and removing the noise is a rebuild without it.

Host memory: one copy of every rewritten matrix in the model's dtype (pinned when the weights live
on a GPU), i.e. at most the model's size.

A quantized backbone cannot take these writes; quantized.py has its twin, `QuantizedBackbone`, with
the same methods, which carries S beside the weights instead.
"""

from __future__ import annotations

import torch
from peft.tuners.lora import Linear as LoraLinear
from peft.utils.other import transpose

from .noise import matrix_seed, noise_for
from .slow import Factors, SlowState


def host_copy(weight: torch.Tensor) -> torch.Tensor:
    copy = weight.detach().to("cpu", copy=True).contiguous()
    return copy.pin_memory() if weight.is_cuda else copy


def backbone_targets(model: torch.nn.Module, layers: dict[str, LoraLinear], expert_params: list[torch.nn.Parameter],
                     noise_targets: str) -> tuple[dict[str, torch.nn.Parameter], dict[str, LoraLinear], dict[str, str]]:
    """The matrices a cascade rewrites: the adapted ones, plus (noise_targets='all') every other frozen
    matrix and vector; the LoRA layers; and which layer each adapted matrix belongs to."""
    names = {id(p): n for n, p in model.named_parameters()}
    layer_of = {names[id(m.get_base_layer().weight)]: n for n, m in sorted(layers.items())}
    params = {n: p for n, p in model.named_parameters() if n in layer_of}
    if noise_targets == "all":
        expert_ids = {id(p) for p in expert_params}
        params.update({n: p for n, p in model.named_parameters()
                       if not p.requires_grad and p.is_floating_point() and id(p) not in expert_ids and p.numel() > 1})
    return params, layers, layer_of


class Backbone:
    """`params` maps parameter names to the frozen weights; `layer_of` maps the adapted ones to
    their LoRA layer name (the key of the slow state)."""

    def __init__(self, params: dict[str, torch.nn.Parameter], layers: dict[str, LoraLinear], layer_of: dict[str, str],
                 lam: float, kind: str, seed: int):
        self.params, self.layers, self.layer_of = params, layers, layer_of
        self.param_of = {layer: name for name, layer in layer_of.items()}
        self.lam, self.kind, self.seed = lam, kind, seed
        self.pristine = {name: host_copy(p) for name, p in params.items()}

    def pristine32(self, name: str) -> torch.Tensor:
        """W0 of one matrix in float32 on its weight's device (a new tensor: safe to modify)."""
        return self.pristine[name].to(self.params[name].device, torch.float32, non_blocking=True, copy=True)

    def clean32(self, name: str, slow: SlowState) -> torch.Tensor:
        """W0 + S of the matrix `name` (a parameter name), in float32 on its device."""
        w0 = self.pristine32(name)
        layer_name = self.layer_of.get(name)
        return w0 if layer_name is None else slow.clean(layer_name, self.layers[layer_name], w0)

    @torch.no_grad()
    def write(self, slow: SlowState, noise_cycle: int | None = None, offsets: Factors | None = None) -> None:
        """Set every matrix to round(W0 + S [+ ε of `noise_cycle`] [+ B·A of its layer's offset (A, B)])."""
        offsets = offsets or {}
        for name, p in self.params.items():
            w = self.clean32(name, slow)
            if noise_cycle is not None and self.lam > 0:
                w += noise_for(w, self.lam, self.kind, matrix_seed(self.seed, noise_cycle, name))
            layer_name = self.layer_of.get(name, "")
            if layer_name in offsets:
                a, b = (t.to(w.device) for t in offsets[layer_name])
                w += transpose(b @ a, self.layers[layer_name].fan_in_fan_out)
            p.copy_(w)

    def watched(self) -> dict[str, torch.Tensor]:
        """What this backbone edits on the device, by parameter name: every rewritten matrix."""
        return dict(self.params)

    def check_plan(self, slow: SlowState, added: dict[str, int]) -> None:
        """A float backbone takes a slow state of any rank (a quantized one has a budget)."""

    def fitted(self, slow: SlowState) -> SlowState:
        return slow

    def materialized(self, model: torch.nn.Module, slow: SlowState, dtype: torch.dtype | None) -> torch.nn.Module:
        """`model`, a copy of the unloaded cascade model, as a plain model of W0 + S: its weights already are."""
        return model if dtype is None else model.to(dtype)
