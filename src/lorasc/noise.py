"""Cascading noisy tuning: seeded per-matrix noise for the frozen backbone.

NoisyTune's perturbation, per matrix W: ε = (U(0,1) − ½)·λ·std(W), so ε lies in ±λ/2·std(W).
The noise is drawn on the weight's own device from a generator seeded per (seed, cycle, matrix).
It is never subtracted: the cascade rebuilds the clean weight from its pristine value and the slow
state (backbone.py), so removal is exact in every dtype and does not depend on drawing the same
numbers again (CUDA's draws for one seed differ between GPU models).
"""

from __future__ import annotations

import zlib

import torch


def matrix_seed(seed: int, cycle: int, name: str) -> int:
    """A stable 63-bit seed for one matrix in one cycle, identical on every process and after resume."""
    return (seed * 1_000_003 + cycle * 10_007 + zlib.crc32(name.encode())) % (2**63 - 1)


def uniform(shape: torch.Size, gen: torch.Generator, device: torch.device | str) -> torch.Tensor:
    return torch.rand(shape, generator=gen, device=device) - 0.5


def gaussian(shape: torch.Size, gen: torch.Generator, device: torch.device | str) -> torch.Tensor:
    return torch.randn(shape, generator=gen, device=device)


DRAWS = {"uniform": uniform, "gaussian": gaussian}  # unit-scale noise of each `noise_kind`
NOISE_KINDS = tuple(DRAWS)


def draw(shape: torch.Size, scale: float, kind: str, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """The noise of one matrix in float32, drawn on `device`."""
    if kind not in DRAWS:
        raise ValueError(f"noise_kind={kind!r} is not allowed: one of {NOISE_KINDS}")
    return DRAWS[kind](shape, torch.Generator(device=device).manual_seed(seed), device) * scale


def noise_for(clean: torch.Tensor, lam: float, kind: str, seed: int) -> torch.Tensor:
    """ε for the float32 weight `clean`, at the scale λ·std(clean)."""
    return draw(clean.shape, lam * clean.std().item(), kind, seed, clean.device)


@torch.no_grad()
def perturb_once(model: torch.nn.Module, lam: float, seed: int) -> None:
    """NoisyTune: a permanent uniform perturbation of every floating-point matrix and vector, one
    rounding per weight."""
    for name, p in model.named_parameters():
        if p.is_floating_point() and p.numel() > 1:
            clean = p.float()
            p.copy_(clean + noise_for(clean, lam, "uniform", matrix_seed(seed, 0, name)))
