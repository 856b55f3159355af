"""What benchmarks/scale.py measures besides the clock: merge and noise exactness, per-run device memory.

Merge exactness compares every adapted weight after `end_cycle()` with one rounding of the exact
result, `(W0 + Σ_t α·s·B_t·A_t).to(dtype)` computed in float64 from the pristine weight W0 (cloned
before wrapping) and each expert's factors (recorded before its `end_cycle()`). Noise exactness
compares the noisy run with a twin cascade without noise that is handed the same experts.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import torch

INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise bit equality (so -0.0 differs from 0.0, and NaN can equal NaN)."""
    view = INT_VIEW[a.element_size()]
    return a.contiguous().view(view) == b.to(a.dtype).contiguous().view(view)


def ulps_apart(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """How many representable values of a's dtype lie between a and b (same sign; huge across signs)."""
    view, wide = INT_VIEW[a.element_size()], INT_VIEW[2 * a.element_size()]
    return (a.contiguous().view(view).to(wide) - b.to(a.dtype).contiguous().view(view).to(wide)).abs_()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Wall seconds of `fn()`, with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


PEFT_PREFIX = "base_model.model."


def snapshot_linears(model: torch.nn.Module, targets: list[str]) -> dict[str, torch.Tensor]:
    """Host copies of the targeted Linear weights, by module name (PEFT prefixes it with PEFT_PREFIX)."""
    return {
        name: module.weight.detach().to("cpu", copy=True)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in targets
    }


class MergeReference:
    """W0 per adapted layer and the float64 factors (c·A_t, c·B_t), c = √(α·s), of every finished expert."""

    def __init__(self, layers: dict, pristine: dict[str, torch.Tensor], adapter: str = "default"):
        self.layers, self.adapter = layers, adapter
        self.w0 = {name: pristine[name.removeprefix(PEFT_PREFIX)] for name in layers}
        self.w0_norm2 = sum(float(w.double().norm()) ** 2 for w in self.w0.values())
        self.factors: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = defaultdict(list)

    @torch.no_grad()
    def record_experts(self, alpha: float) -> None:
        """Call before `end_cycle()`: the running expert's factors, scaled so that Σ c·B·c·A is the slow delta."""
        for name, layer in self.layers.items():
            c = (alpha * layer.scaling[self.adapter]) ** 0.5
            a, b = (m[self.adapter].weight.detach().to("cpu", torch.float64) for m in (layer.lora_A, layer.lora_B))
            self.factors[name].append((c * a, c * b))

    def exact_delta(self, name: str) -> torch.Tensor:
        a = torch.cat([a for a, _ in self.factors[name]], 0)
        b = torch.cat([b for _, b in self.factors[name]], 1)
        return b @ a

    @torch.no_grad()
    def check(self) -> dict:
        """After `end_cycle()`: the share of adapted elements bitwise equal to one rounding of W0 + Σ α·ΔW
        (and within one unit in the last place of it: float32 runs hold S in float32, whose own rounding
        shows at float32 weights' precision but not at bfloat16's), the relative error of the realised
        delta W − W0 (and its floor: that of the single rounding), and ‖Σ α·ΔW‖ / ‖W0‖."""
        equal = near = total = 0
        err = floor = norm = 0.0
        for name, layer in self.layers.items():
            weight, w0, delta = layer.get_base_layer().weight.detach().cpu(), self.w0[name], self.exact_delta(name)
            target = w0.double().add_(delta)  # W0 + Σ α·ΔW, exact to float64
            rounded = target.to(weight.dtype)
            equal += int(bitwise_equal(weight, rounded).sum())
            near += int((ulps_apart(weight, rounded) <= 1).sum())
            total += weight.numel()
            err += float(torch.dist(weight.double(), target)) ** 2  # (W − W0) − Σ α·ΔW
            floor += float(torch.dist(rounded.double(), target)) ** 2
            norm += float(delta.norm()) ** 2
        relative = (lambda x: (x / norm) ** 0.5 if norm else 0.0)
        return {"exact_fraction": equal / total, "within_one_ulp_fraction": near / total,
                "delta_relative_error": relative(err), "delta_relative_error_floor": relative(floor),
                "delta_norm_ratio": (norm / self.w0_norm2) ** 0.5}

    def stacked_relative_error(self, stacked: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> float:
        """‖B_cat·A_cat − Σ α·s·B_t·A_t‖ / ‖Σ α·s·B_t·A_t‖ over all layers, for lorasc.export.stacked_factors."""
        err = norm = 0.0
        for name, (a_cat, b_cat) in stacked.items():
            delta = self.exact_delta(name)
            err += float(torch.dist(b_cat.double() @ a_cat.double(), delta)) ** 2
            norm += float(delta.norm()) ** 2
        return (err / norm) ** 0.5 if norm else 0.0


@torch.no_grad()
def copy_experts(source: dict, target: dict, adapter: str = "default") -> None:
    """Give the twin cascade's experts the exact values of the noisy run's (same layer names)."""
    for name, layer in source.items():
        for attr in ("lora_A", "lora_B"):
            getattr(target[name], attr)[adapter].weight.copy_(getattr(layer, attr)[adapter].weight)


@torch.no_grad()
def noise_check(noisy: dict, clean: dict) -> dict:
    """The share of adapted elements where the noisy run's clean weights equal the noise-free twin's,
    bitwise, and the largest difference relative to the weight's scale."""
    equal = total = 0
    worst = 0.0
    for name, layer in noisy.items():
        w, twin = layer.get_base_layer().weight, clean[name].get_base_layer().weight
        same = bitwise_equal(w, twin)
        equal += int(same.sum())
        total += w.numel()
        if not bool(same.all()):
            differs = (w[~same].double() - twin[~same].double()).abs().max()
            worst = max(worst, float(differs / twin.double().abs().max()))
    return {"exact_fraction": equal / total, "max_relative_difference": worst}


class DeviceMemory:
    """Each run's peak CUDA memory while several runs share one device and one process.

    A run's resident bytes change only inside its own tracked operations, so its peak is its
    resident bytes before an operation plus that operation's own transient peak. On the CPU
    nothing is measured (`peak` stays empty)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.resident: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def track(self, run: str):
        if not self.cuda:
            yield
            return
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        yield
        torch.cuda.synchronize()
        self.peak[run] = max(self.peak[run], self.resident[run] + torch.cuda.max_memory_allocated() - before)
        self.resident[run] += torch.cuda.memory_allocated() - before

    def ratio(self, run: str, baseline: str) -> float | None:
        return self.peak[run] / self.peak[baseline] if self.cuda and self.peak[baseline] else None
