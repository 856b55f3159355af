"""Cascades on a 4-bit backbone (SmolLM2-135M in NF4, bitsandbytes, on the CPU): how much of each expert
a merge keeps, and what carrying the slow state beside the quantized layers costs.

    python -m benchmarks --quantized            # measure (a few minutes on 2 cores), then its section of BENCHMARKS.md
    python -m benchmarks --quantized --report   # no runs: rewrite the section from results/quantized.json

Kept: the same random rank-r experts, of a set size relative to each weight, merged cycle after cycle
(a) by PEFT into the NF4 layers (`merge()`, which dequantizes, adds and re-quantizes, then `unload()`:
what `merge_and_unload` does) and (b) by LoRASC at α = 1, which carries them as float32 factors beside the
untouched NF4 layers. Cost: training steps of plain QLoRA (PEFT LoRA on the NF4 model) interleaved with
LoRASC's steps at carried stack ranks R, on the same batches; bytes of the stack and of what autograd
saves for the backward pass.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
import types
import warnings
from pathlib import Path

import bitsandbytes as bnb
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora import LoraLayer

from lorasc import LoRASC, LoRASCConfig
from lorasc.quantized import dequantized, is_quantized, keep_dequantize_path, packed_bytes

from .scale import Run, device_name, environment, train_interleaved
from .scale_checks import PEFT_PREFIX, DeviceMemory
from .scale_models import LLAMA_TARGETS, random_batches

CPU = torch.device("cpu")
UNBOUNDED = 1e6  # slow_budget: the stack's size is what is measured here, not refused
QUANTIZATION = dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)


@dataclasses.dataclass(frozen=True)
class Setting:
    cycles: int = 8  # merges per expert size
    rank: int = 16  # r of every expert, and of plain QLoRA's adapter
    lora_alpha: int = 32
    sizes: tuple[float, ...] = (0.003, 0.01)  # ‖s·B·A‖ / ‖deQ(W0)‖ of every expert, per layer
    stack_ranks: tuple[int, ...] = (0, 64, 256)  # R of the carried stack in the cost runs (multiples of rank)
    batch: int = 2
    seq: int = 64
    steps: int = 12  # interleaved training steps per variant
    warmup: int = 2  # of which untimed
    lr: float = 1e-4
    seed: int = 0
    threads: int = 1  # torch threads: one step at a time on a shared machine


def load_nf4(folder: str) -> torch.nn.Module:
    """The float model in `folder`, quantized to NF4 on load (compute in float32), kept on the dequantize path."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    config = BitsAndBytesConfig(**QUANTIZATION)
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=config, device_map="cpu", dtype=torch.float32)
    keep_dequantize_path(model)
    return model.train()


def expert_config(s: Setting) -> LoraConfig:
    return LoraConfig(r=s.rank, lora_alpha=s.lora_alpha, lora_dropout=0.0, target_modules=LLAMA_TARGETS, task_type="CAUSAL_LM")


def quantized_targets(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """The NF4 layers the experts adapt, by module name without PEFT's prefix."""
    return {name.removeprefix(PEFT_PREFIX).replace(".base_layer", ""): m for name, m in model.named_modules()
            if is_quantized(m) and name.replace(".base_layer", "").rsplit(".", 1)[-1] in LLAMA_TARGETS}


def adapted(model: torch.nn.Module) -> dict[str, LoraLayer]:
    return {name.removeprefix(PEFT_PREFIX): m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


# ---- experts -----------------------------------------------------------------------------------------
def random_experts(norms: dict[str, tuple[int, int, float]], s: Setting, size: float, count: int, seed: int) -> list[dict]:
    """`count` experts: per layer (A, B) of rank r, Gaussian, scaled so ‖s·B·A‖ = size·‖deQ(W0)‖."""
    gen, scaling, experts = torch.Generator().manual_seed(seed), s.lora_alpha / s.rank, []
    for _ in range(count):
        expert = {}
        for name, (out_features, in_features, norm) in sorted(norms.items()):
            a, b = torch.randn(s.rank, in_features, generator=gen), torch.randn(out_features, s.rank, generator=gen)
            f = (size * norm / (scaling * torch.linalg.matrix_norm(b @ a).item())) ** 0.5
            expert[name] = (f * a, f * b)
        experts.append(expert)
    return experts


def weight_norms(model: torch.nn.Module) -> dict[str, tuple[int, int, float]]:
    """(m, n, ‖deQ(W0)‖) of every adapted NF4 layer."""
    return {name: (m.out_features, m.in_features, torch.linalg.matrix_norm(dequantized(m)).item()) for name, m in quantized_targets(model).items()}


@torch.no_grad()
def set_expert(layers: dict[str, LoraLayer], expert: dict) -> None:
    for name, layer in layers.items():
        a, b = expert[name]
        layer.lora_A["default"].weight.copy_(a)
        layer.lora_B["default"].weight.copy_(b)


def expert_delta(layer: LoraLayer, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return layer.scaling["default"] * (b.double() @ a.double())


def overlap(change: torch.Tensor, delta: torch.Tensor) -> tuple[float, float]:
    """(⟨change, ΔW⟩, ‖ΔW‖²) in float64."""
    return (change * delta).sum().item(), (delta * delta).sum().item()


def kept(overlaps: list[tuple[float, float]]) -> dict:
    """The fraction of the expert kept over all layers (Σ⟨·,ΔW⟩ / Σ‖ΔW‖²) and its range over layers."""
    per_layer = [dot / norm2 for dot, norm2 in overlaps]
    return {"kept": sum(d for d, _ in overlaps) / sum(n for _, n in overlaps), "layer_min": min(per_layer), "layer_max": max(per_layer)}


# ---- (a) PEFT's merge into NF4, (b) the carried stack ---------------------------------------------------
@torch.no_grad()
def peft_merge_kept(folder: str, experts: list[dict], s: Setting) -> list[dict]:
    """Per cycle: a fresh PEFT LoRA on the model, the cycle's expert set, merged layer by layer into NF4, unloaded."""
    model, cycles = load_nf4(folder), []
    for expert in experts:
        peft_model = get_peft_model(model, expert_config(s))
        layers = adapted(peft_model)
        set_expert(layers, expert)
        overlaps = []
        for name, layer in layers.items():
            before = dequantized(layer.get_base_layer()).double()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Merge lora module to 4-bit linear may get different generations …"
                layer.merge()
            overlaps.append(overlap(dequantized(layer.get_base_layer()).double() - before, expert_delta(layer, *expert[name])))
        model = peft_model.unload()
        cycles.append(kept(overlaps))
    return cycles


def carried_cascade(model: torch.nn.Module, s: Setting, cycles: int) -> LoRASC:
    """A LoRASC cascade at α = 1 (a merge adds the whole expert, as PEFT's does) in its first cycle."""
    config = LoRASCConfig(num_cycles=cycles + 1, noise_lambda=0.0, slow_alpha=1.0, slow_budget=UNBOUNDED, seed=s.seed, expert=expert_config(s))
    cascade = LoRASC(model, config)
    cascade.start_cycle()
    return cascade


def merge_expert(cascade: LoRASC, expert: dict) -> None:
    set_expert(adapted(cascade.model), expert)
    cascade.end_cycle()
    cascade.start_cycle()


def carried_delta(slow, name: str, like: torch.Tensor) -> torch.Tensor:
    stack = slow.stack(name)
    return torch.zeros_like(like) if stack is None else stack[1].double() @ stack[0].double()


@torch.no_grad()
def carried_kept(folder: str, experts: list[dict], s: Setting) -> tuple[list[dict], bool]:
    """Per cycle, from the stacks before and after the merge; and whether every packed NF4 weight is bitwise unchanged
    (then deQ(W0_q) is too, and W_after − W_before is the change of the stack)."""
    cascade = carried_cascade(load_nf4(folder), s, len(experts))
    layers = adapted(cascade.model)
    packed = {name: layer.get_base_layer().weight.data.clone() for name, layer in layers.items()}
    cycles = []
    for expert in experts:
        before = cascade.slow
        merge_expert(cascade, expert)
        overlaps = []
        for name, layer in layers.items():
            delta = expert_delta(layer, *expert[name])
            full = PEFT_PREFIX + name
            overlaps.append(overlap(carried_delta(cascade.slow, full, delta) - carried_delta(before, full, delta), delta))
        cycles.append(kept(overlaps))
    unchanged = all(torch.equal(layer.get_base_layer().weight.data, packed[name]) for name, layer in layers.items())
    return cycles, unchanged


def kept_by_size(folder: str, norms: dict, s: Setting) -> list[dict]:
    results = []
    for k, size in enumerate(s.sizes):
        experts = random_experts(norms, s, size, s.cycles, s.seed + k)
        peft = peft_merge_kept(folder, experts, s)
        carried, unchanged = carried_kept(folder, experts, s)
        results.append({"size": size, "peft_merge": peft, "carried": carried, "carried_packed_unchanged": unchanged,
                        "peft_merge_median": statistics.median(c["kept"] for c in peft),
                        "carried_median": statistics.median(c["kept"] for c in carried)})
    return results


# ---- cost ---------------------------------------------------------------------------------------------
def saved_bytes(model: torch.nn.Module, batch: dict, resident: list[torch.Tensor]) -> int:
    """Bytes autograd saves for the backward pass of one step (each storage once), beyond the `resident`
    tensors (the weights and the stack, which it saves by reference)."""
    skip = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers(), *resident]}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in skip:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(**batch).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def stacked_run(folder: str, norms: dict, s: Setting, stack_rank: int) -> Run:
    """LoRASC with a carried stack of rank `stack_rank` (stack_rank / r merged experts of the larger size)."""
    count = stack_rank // s.rank
    cascade = carried_cascade(load_nf4(folder), s, count)
    for expert in random_experts(norms, s, max(s.sizes), count, s.seed + 100):
        merge_expert(cascade, expert)
    return Run(f"R={stack_rank}", cascade, cascade.optimizer(lr=s.lr))


def qlora_run(folder: str, s: Setting) -> Run:
    model = get_peft_model(load_nf4(folder), expert_config(s))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s.lr)
    return Run("qlora", types.SimpleNamespace(model=model), optimizer)


def layer_sums(model: torch.nn.Module) -> tuple[int, int, int]:
    """Σ(m+n) and Σ m·n over the adapted NF4 layers, and their packed bytes."""
    layers = quantized_targets(model)
    return (sum(m.in_features + m.out_features for m in layers.values()), sum(m.in_features * m.out_features for m in layers.values()),
            sum(packed_bytes(m) for m in layers.values()))


def cost(folder: str, norms: dict, s: Setting) -> dict:
    """Interleaved steps of plain QLoRA and of LoRASC at each stack rank; then, per rank, the step-time ratio
    (median over the interleaved pairs), the analytic FLOP ratio R·Σ(m+n)/Σ m·n and the bytes."""
    qlora = qlora_run(folder, s)
    runs = [qlora, *(stacked_run(folder, norms, s, r) for r in s.stack_ranks)]
    model = qlora.cascade.model
    batches = random_batches(4, s.batch, s.seq, model.config.vocab_size, "CAUSAL_LM", CPU, s.seed)
    train_interleaved(runs, batches, s.steps, s.warmup, DeviceMemory(CPU), CPU)
    in_out, weights, packed = layer_sums(model)
    footprint, qlora_saved = model.get_memory_footprint(), saved_bytes(model, batches[0], [])
    ranks = {}
    for stack_rank, run in zip(s.stack_ranks, runs[1:]):
        stack = list(run.cascade.backbone.watched().values())
        stack_bytes = sum(t.nbytes for t in stack)
        pairs = [mine / theirs for mine, theirs in zip(run.step_s, qlora.step_s)]
        ranks[str(stack_rank)] = {
            "step_ratio": statistics.median(pairs), "pair_ratios": pairs, "analytic_flop_ratio": stack_rank * in_out / weights,
            "stack_bytes": stack_bytes, "stack_bytes_formula": stack_rank * in_out * 4, "stack_over_packed": stack_bytes / packed,
            "stack_over_footprint": stack_bytes / footprint, "saved_bytes_ratio": saved_bytes(run.cascade.model, batches[0], stack) / qlora_saved}
    return {"timed_steps": s.steps - s.warmup, "sum_in_out": in_out, "sum_weights": weights, "packed_bytes": packed,
            "footprint_bytes": footprint, "ranks": ranks}


def describe(layer: torch.nn.Module) -> str:
    state = layer.weight.quant_state
    return (f"{state.quant_type.upper()}, blocks of {state.blocksize}, double quantization {'on' if state.nested else 'off'}, "
            f"compute in {str(layer.compute_dtype).removeprefix('torch.')}")


def measure(folder: str, s: Setting, model_name: str) -> dict:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.set_num_threads(s.threads)
    started = time.perf_counter()
    probe = load_nf4(folder)
    norms, layers = weight_norms(probe), quantized_targets(probe)
    quantization = describe(next(iter(layers.values())))
    del probe, layers
    kept_sizes = kept_by_size(folder, norms, s)
    print(f"[{time.perf_counter() - started:.0f} s] kept: " + ", ".join(f"{k['size']:g}: PEFT {k['peft_merge_median']:.4f}, "
          f"carried {k['carried_median']:.7f}" for k in kept_sizes), file=sys.stderr, flush=True)
    return {"benchmark": "quantized", "model": model_name, "quantization": quantization,
            "device_name": device_name(CPU), "setting": dataclasses.asdict(s), "adapted_layers": len(norms),
            "kept": kept_sizes, "cost": cost(folder, norms, s), "wall_s": time.perf_counter() - started, "environment": {**environment(), "bitsandbytes": bnb.__version__}}


MODEL_NAME = "SmolLM2-135M-Instruct (the packaged GGUF, dequantized to float32)"
RESULT, COMMAND = "quantized.json", "python -m benchmarks --quantized"


def main(results_dir: Path, report_only: bool = False) -> Path:
    """Measure SmolLM2-135M in NF4 into results_dir/quantized.json (unless `report_only`); write quantized.md."""
    from lorasc.run.assets import smollm2_path

    from .quantized_report import write_report

    if not report_only:
        result = {**measure(smollm2_path(), Setting(), MODEL_NAME), "command": COMMAND}
        (results_dir / RESULT).write_text(json.dumps(result, indent=2) + "\n")
    return write_report(results_dir)
