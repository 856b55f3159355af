"""Cascading noisy tuning: seeded per-matrix noise on the frozen backbone, removed exactly.

NoisyTune's perturbation, per matrix W: ε = (U(0,1) − ½)·λ·std(W), so ε lies in ±λ/2·std(W).
Only the noise *recipe* is kept (one seed per matrix and the scalar λ·std(W) measured on the clean
weights), never a copy of the weights: removal regenerates the same ε and subtracts it.
"""

from __future__ import annotations

import zlib

import torch


def matrix_seed(seed: int, cycle: int, name: str) -> int:
    """A stable 63-bit seed for one matrix in one cycle, identical on every process and after resume."""
    return (seed * 1_000_003 + cycle * 10_007 + zlib.crc32(name.encode())) % (2**63 - 1)


def draw(shape: torch.Size, scale: float, kind: str, seed: int) -> torch.Tensor:
    """The noise of one matrix, in fp32 on the CPU (so every device draws the same numbers)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "uniform":
        return (torch.rand(shape, generator=gen) - 0.5) * scale
    return torch.randn(shape, generator=gen) * scale


class BackboneNoise:
    """Adds and removes one cycle's noise on a fixed set of named parameters."""

    def __init__(self, params: dict[str, torch.nn.Parameter], lam: float, kind: str, seed: int):
        self.params, self.lam, self.kind, self.seed = params, lam, kind, seed
        self.cycle: int | None = None  # the cycle whose noise is on the weights, if any
        self.scales: dict[str, float] = {}

    @property
    def active(self) -> bool:
        return self.cycle is not None

    @torch.no_grad()
    def add(self, cycle: int) -> None:
        if self.active:
            raise RuntimeError(f"noise of cycle {self.cycle} is still on the backbone; remove it first")
        self.cycle = cycle
        if self.lam == 0:
            return
        for name, p in self.params.items():
            self.scales[name] = self.lam * p.float().std().item()
            p.add_(self._noise(name, p))

    @torch.no_grad()
    def remove(self) -> None:
        if not self.active:
            raise RuntimeError("no noise is on the backbone")
        for name, p in self.params.items():
            if name in self.scales:
                p.sub_(self._noise(name, p))
        self.cycle, self.scales = None, {}

    def _noise(self, name: str, p: torch.Tensor) -> torch.Tensor:
        eps = draw(p.shape, self.scales[name], self.kind, matrix_seed(self.seed, self.cycle, name))
        return eps.to(device=p.device, dtype=p.dtype)

    def state_dict(self) -> dict:
        return {"cycle": self.cycle, "scales": dict(self.scales)}

    def load_state_dict(self, state: dict) -> None:
        self.cycle, self.scales = state["cycle"], dict(state["scales"])


def perturb_once(model: torch.nn.Module, lam: float, seed: int) -> None:
    """NoisyTune: a permanent uniform perturbation of every floating-point matrix and vector."""
    params = {n: p for n, p in model.named_parameters() if p.is_floating_point() and p.numel() > 1}
    BackboneNoise(params, lam, "uniform", seed).add(cycle=0)  # never removed
