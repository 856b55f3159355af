"""A re-quantized export of a cascade trained on a quantized backbone, and how much of S survives it.

The exact deliverables of a quantized cascade are the stacked adapter (on the same quantized backbone)
and the dense model deQ(W0_q) + S. Re-quantizing the dense model gives a small model again, but a
slow state smaller than the quantization step rounds back to the code points: the report says, per
adapted layer, the fraction f = ⟨deQ(Q(W0 + S)) − W0, S⟩ / ‖S‖² of S that survived (1 kept, 0 erased),
with W0 = deQ(W0_q).
"""

from __future__ import annotations

import json
import statistics
import warnings
from pathlib import Path

import torch

from .quantized import dequantized, is_quantized

MOSTLY_ERASED = 0.5  # below this median surviving fraction the export warns


def surviving_fraction(before: torch.Tensor, after: torch.Tensor, delta: torch.Tensor) -> float:
    """The share of `delta` that moved `before` to `after` along it (float32 tensors of one shape)."""
    norm = delta.square().sum().item()
    return ((after - before) * delta).sum().item() / norm if norm else 1.0


def adapted_modules(base: torch.nn.Module, dense: torch.nn.Module) -> list[str]:
    """The quantized layers of `base` whose weights `dense` changed: the ones the cascade adapted."""
    return [name for name, module in base.named_modules()
            if is_quantized(module) and not torch.equal(dense.get_submodule(name).weight.float(), dequantized(module))]


@torch.no_grad()
def export_requantized(dense_dir: str | Path, base: torch.nn.Module, quantization_config, out_dir: str | Path,
                       device_map: str = "cpu") -> dict[str, float]:
    """Load the dense export in `dense_dir` quantized by `quantization_config` (a transformers
    BitsAndBytesConfig), save it to `out_dir` with `requantization.json`, and return the surviving
    fraction of S per adapted layer; `base` is the quantized backbone the cascade trained on."""
    auto_class = type(base)
    dense = auto_class.from_pretrained(dense_dir, dtype=torch.float32, device_map=device_map)
    requantized = auto_class.from_pretrained(dense_dir, quantization_config=quantization_config, device_map=device_map)
    fractions = {}
    for name in adapted_modules(base, dense):
        before = dequantized(base.get_submodule(name))
        delta = dense.get_submodule(name).weight.float() - before
        fractions[name] = surviving_fraction(before, dequantized(requantized.get_submodule(name)), delta)
    requantized.save_pretrained(out_dir)
    median = statistics.median(fractions.values()) if fractions else 1.0
    report = {"quantization": quantization_config.to_dict(), "median_surviving_fraction": median, "surviving_fraction": fractions}
    Path(out_dir, "requantization.json").write_text(json.dumps(report, indent=2))
    if median < MOSTLY_ERASED:
        warnings.warn(f"re-quantizing kept a median {median:.1%} of the slow state S per layer: most of what the cascade "
                      "learned is erased; use the stacked adapter on the quantized backbone or the dense model instead",
                      stacklevel=2)
    return fractions
