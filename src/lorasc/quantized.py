"""A cascade on a bitsandbytes 4-bit or 8-bit backbone: the quantized weights are never rewritten.

A packed NF4/FP4/int8 weight cannot take `round(W0 + S)`, and re-quantizing after a merge erases most
of a small expert (the delta rounds back to the code points). So the slow state S (LowRankSlow's
stacked factors, float32) is carried beside each frozen quantized layer, as a forward hook that
computes, like a frozen PEFT LoRA adapter of rank R,

    y = deQ(W0_q)·x + B_cat·(A_cat·x) + expert(x)

`QuantizedBackbone` has the methods of backbone.Backbone, so the cycle code is the same on both; a
LoRA-GA compensation is low-rank and joins the carried stack while its cycle runs. Cost per layer
(m × n): R·(m+n)/(m·n) extra FLOPs relative to the layer, and R·(m+n)·4 bytes. What cannot be carried
so is refused: noise (it rewrites the weights), DoRA (its slow state is a dense float32 master) and
inits that write into the base weight.

bitsandbytes' CPU inference kernel (used when the CPU has AVX512-BF16, in eval mode without grad)
repacks a 4-bit weight in place on its first call, after which `dequantize_4bit` of it is wrong and
its outputs differ from deQ(W)·x by about 1 % of their scale. `keep_dequantize_path` undoes a repack
and turns that kernel off, so the packed data stays bitwise unchanged and every forward computes
deQ(W)·x. bitsandbytes' int8 layers compute deQ(W)·x on the CPU in training mode only; their
inference path quantizes the activations too (LLM.int8()), on the CPU and on CUDA.
"""

from __future__ import annotations

import math
import sys
from typing import Iterable

import torch
import torch.nn.functional as F
from peft.tuners.lora import LoraLayer
from peft.utils.integrations import dequantize_bnb_weight

from .backbone import Backbone
from .config import LoRASCConfig, require
from .slow import Factors, LowRankSlow

FLOAT32_BYTES = 4


def quantized_layer_types() -> tuple[type, ...]:
    bnb = sys.modules.get("bitsandbytes")  # a model cannot hold its layers before it is imported
    return () if bnb is None else (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)


def is_quantized(module: torch.nn.Module) -> bool:
    return isinstance(module, quantized_layer_types())


def dequantized(module: torch.nn.Module) -> torch.Tensor:
    """deQ(W_q) of a bitsandbytes layer in float32 (out × in), on its device."""
    weight = module.weight
    return dequantize_bnb_weight(weight, getattr(weight, "quant_state", None) or getattr(module, "state", None)).float()


def keep_dequantize_path(model: torch.nn.Module) -> None:
    """Undo bitsandbytes' CPU repack of any 4-bit weight and keep it from repacking again (module docstring)."""
    from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        module.support_avx512bf16_for_cpu = False
        weight = module.weight
        if getattr(weight.quant_state, "packing_format_for_cpu", False):
            weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)


def load_arguments(quantization_config) -> dict | None:
    """The BitsAndBytesConfig arguments that load a backbone as `quantization_config` (one, its dict, or
    None) did: what a model card prints."""
    if quantization_config is None:
        return None
    values = quantization_config if isinstance(quantization_config, dict) else quantization_config.to_dict()
    if values.get("load_in_8bit"):
        keys = ("load_in_8bit", "llm_int8_skip_modules")
    else:
        keys = ("load_in_4bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype", "llm_int8_skip_modules")
    return {key: str(values[key]) if key.endswith("dtype") else values[key] for key in keys if values.get(key) is not None}


def packed_bytes(module: torch.nn.Module) -> int:
    return module.weight.numel() * module.weight.element_size()


class CarriedStack:
    """A forward hook on a frozen quantized layer that adds B·(A·x), in float32 as PEFT computes a LoRA."""

    def __init__(self):
        self.a = self.b = None

    def carry(self, factors: list[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> None:
        self.a = torch.cat([a for a, _ in factors], 0).to(device) if factors else None
        self.b = torch.cat([b for _, b in factors], 1).to(device) if factors else None

    def __call__(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        if self.a is None:
            return output
        return output + F.linear(F.linear(args[0].to(self.a.dtype), self.a), self.b).to(output.dtype)


class QuantizedBackbone:
    """backbone.Backbone's methods on frozen quantized layers: `write` carries S (and an init's offset)
    beside them; `pristine32` is deQ(W0_q). `budget` bounds the stack's bytes as a share of the packed
    adapted weights; past it, `overflow` stops the run or truncates the stack by SVD."""

    def __init__(self, layers: dict[str, LoraLayer], layer_of: dict[str, str], budget: float, overflow: str):
        self.params: dict[str, torch.nn.Parameter] = {}  # nothing is rewritten
        self.layers, self.layer_of = layers, layer_of
        self.param_of = {layer: name for name, layer in layer_of.items()}
        self.budget, self.overflow = budget, overflow
        self.stacks = {name: CarriedStack() for name in layers}
        for name, layer in layers.items():
            layer.get_base_layer().register_forward_hook(self.stacks[name])
        self.packed = sum(packed_bytes(layer.get_base_layer()) for layer in layers.values())
        self.sizes = {name: in_out(layer) for name, layer in layers.items()}
        self.budget_rank = budget_rank(budget, self.packed, self.sizes.values())

    def pristine32(self, name: str) -> torch.Tensor:
        return dequantized(self.layers[self.layer_of[name]].get_base_layer())

    def clean32(self, name: str, slow: LowRankSlow) -> torch.Tensor:
        layer_name = self.layer_of[name]
        return slow.clean(layer_name, self.layers[layer_name], self.pristine32(name))

    @torch.no_grad()
    def write(self, slow: LowRankSlow, noise_cycle: int | None = None, offsets: Factors | None = None) -> None:
        """Carry S (and the offset of each layer, if any) beside the quantized weights; `noise_cycle`
        is ignored (a quantized cascade has no noise)."""
        offsets = offsets or {}
        for name, layer in self.layers.items():
            factors = [f for f in (slow.stack(name), offsets.get(name)) if f is not None]
            self.stacks[name].carry(factors, layer.get_base_layer().weight.device)

    def watched(self) -> dict[str, torch.Tensor]:
        carried = {}
        for name, stack in self.stacks.items():
            if stack.a is not None:
                carried.update({f"{name}.lorasc_stack.A": stack.a, f"{name}.lorasc_stack.B": stack.b})
        return carried

    def stack_ranks(self, slow: LowRankSlow, added: dict[str, int]) -> list[tuple[int, int]]:
        """(rank, m + n) per layer of `slow`'s stack with `added` ranks more."""
        return [(stack_rank(slow, name) + added.get(name, 0), size) for name, size in self.sizes.items()]

    def check_plan(self, slow: LowRankSlow, added: dict[str, int]) -> None:
        """Refuse (overflow 'stop') a plan that adds `added` ranks per layer to `slow`'s stack past the budget."""
        if self.overflow == "stop":
            check_stack_budget(self.stack_ranks(slow, added), self.packed, self.budget)

    def fitted(self, slow: LowRankSlow) -> LowRankSlow:
        """`slow` if it fits the budget; past it, refused (overflow 'stop') or truncated to the budget's rank."""
        stack = self.stack_ranks(slow, {})
        if stack_bytes(stack) <= self.budget * self.packed:
            return slow
        if self.overflow == "stop":
            check_stack_budget(stack, self.packed, self.budget)
        return slow.compressed(self.budget_rank)

    @torch.no_grad()
    def materialized(self, model: torch.nn.Module, slow: LowRankSlow, dtype: torch.dtype | None) -> torch.nn.Module:
        """`model`, a copy of the unloaded cascade model, dequantized (transformers' `dequantize`) with S added
        to each adapted weight in float32 and rounded once to `dtype` (default: the dtype the model was loaded in)."""
        dtype = dtype or model.config.dtype
        model = model.dequantize(dtype=torch.float32)
        for name in self.layers:
            weight = model.get_submodule(name.removeprefix("base_model.model.")).weight
            weight.copy_(self.clean32(self.param_of[name], slow))
        return model.to(dtype)


class RequantizingBackbone(QuantizedBackbone):
    """`quantized_merge="requantize"`: the peers' merge, kept as a baseline (ReLoRA, PEFT's
    `Linear4bit.merge`, axolotl): each finished cycle's α·s·B·A is added to deQ(W_q) and the sum
    re-quantized into the 4-bit weight, so nothing is carried and most of a small expert rounds away.
    A resume folds the finished cycles at once, which re-quantizes differently from one by one."""

    def __init__(self, *args):
        super().__init__(*args)
        self.folded = 0  # finished cycles already in the weights

    def check_plan(self, slow: LowRankSlow, added: dict[str, int]) -> None:
        """Nothing is carried: no budget."""

    def fitted(self, slow: LowRankSlow) -> LowRankSlow:
        return slow

    @torch.no_grad()
    def write(self, slow: LowRankSlow, noise_cycle: int | None = None, offsets: Factors | None = None) -> None:
        for cycle in slow.history[self.folded:]:
            for name, (a, b) in cycle.items():
                requantize_into(self.layers[name].get_base_layer(), b @ a)
        self.folded = max(self.folded, len(slow.history))
        super().write(type(slow)(), noise_cycle, offsets)  # carry an init's offset only


def requantize_into(module: torch.nn.Module, delta: torch.Tensor) -> None:
    """W_q ← Q(deQ(W_q) + delta) for a 4-bit layer, with its own quantization settings."""
    from bitsandbytes.functional import quantize_4bit

    weight, state = module.weight, module.weight.quant_state
    summed = (dequantized(module) + delta.to(weight.device)).to(state.dtype)
    weight.data, weight.quant_state = quantize_4bit(summed, blocksize=state.blocksize, compress_statistics=state.nested,
                                                    quant_type=state.quant_type, quant_storage=weight.quant_storage)


def stack_bytes(stack: Iterable[tuple[int, int]]) -> int:
    """The float32 bytes of a stack given as (rank R, m + n) per m × n layer: Σ R·(m + n)·4."""
    return FLOAT32_BYTES * sum(rank * size for rank, size in stack)


def budget_rank(budget: float, packed: int, sizes: Iterable[int]) -> int:
    """The largest rank, the same for every layer (m + n in `sizes`), whose stack fits in `budget` × the
    `packed` bytes of the quantized adapted weights; at least 1."""
    return max(1, int(budget * packed // stack_bytes((1, size) for size in sizes)))


def check_stack_budget(stack: list[tuple[int, int]], packed: int, budget: float) -> None:
    """Refuse a stack, (rank, m + n) per layer, past `budget` × the `packed` bytes of the quantized adapted weights."""
    needed = stack_bytes(stack)
    if needed > budget * packed:
        raise ValueError(
            f"slow_budget={budget} is not allowed: the planned stack needs {needed / 2**20:.2f} MiB of float32 factors "
            f"(rank up to {max(rank for rank, _ in stack)} per layer), more than {budget:g} × the {packed / 2**20:.2f} MiB of quantized "
            f"adapted weights; raise slow_budget to at least {math.ceil(100 * needed / packed) / 100:.2f}, "
            "or set slow_overflow=compress to truncate the stack by SVD (no longer exact)")


def check_quantizable(config: LoRASCConfig) -> None:
    """Refuse the settings whose slow state a quantized backbone, never rewritten, cannot carry."""
    on = "on a quantized backbone, whose weights are never rewritten"
    require(config.noise_lambda == 0, "noise_lambda", config.noise_lambda, f"0 {on} (the noise would rewrite them); pass noise_lambda=0")
    require(config.noise_targets == "adapted", "noise_targets", config.noise_targets, f"'adapted' {on}; pass noise_targets=adapted")
    require(not config.expert.use_dora, "expert.use_dora", True,
            f"False {on}: a DoRA merge is full-rank, its slow state a float32 master larger than the quantized weights; drop expert.use_dora")
    require(config.expert_init != "gradient", "expert_init", config.expert_init,
            f"'kaiming' or 'orthogonal' {on}: PEFT's LoRA-GA writes into the weight; pass expert_init=kaiming")


def backbone_for(config: LoRASCConfig, model: torch.nn.Module, params: dict[str, torch.nn.Parameter],
                 layers: dict[str, LoraLayer], layer_of: dict[str, str]) -> Backbone | QuantizedBackbone:
    """What carries the cascade's writes in `model`: its float weights, rewritten, or its quantized ones, never rewritten."""
    quantized = sorted(name for name, layer in layers.items() if is_quantized(layer.get_base_layer()))
    if not quantized:
        require(config.quantized_merge == "carry", "quantized_merge", config.quantized_merge,
                "'carry' on a float backbone, whose merges are exact; load the model quantized (BitsAndBytesConfig) to compare")
        return Backbone(params, layers, layer_of, config.noise_lambda, config.noise_kind, config.seed)
    float_layers = sorted(set(layers) - set(quantized))
    require(not float_layers, "expert.target_modules", config.expert.target_modules,
            f"layers that are all quantized or all float; {float_layers[:2]} are float, {quantized[:2]} quantized")
    check_quantizable(config)
    keep_dequantize_path(model)
    if config.quantized_merge == "requantize":
        eight_bit = [name for name in quantized if not hasattr(layers[name].get_base_layer().weight, "quant_state")]
        require(not eight_bit, "quantized_merge", config.quantized_merge, f"'carry' on 8-bit layers such as {eight_bit[0] if eight_bit else ''} "
                "(the re-quantizing baseline is for 4-bit backbones)")
        return RequantizingBackbone(layers, layer_of, config.slow_budget, config.slow_overflow)
    return QuantizedBackbone(layers, layer_of, config.slow_budget, config.slow_overflow)


def stack_rank(slow: LowRankSlow, name: str) -> int:
    stack = slow.stack(name)
    return 0 if stack is None else stack[0].shape[0]


def in_out(layer: LoraLayer) -> int:
    return layer.in_features + layer.out_features
