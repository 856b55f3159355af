"""Exact merges in bfloat16 and float16: every clean weight is one rounding of W0 + S computed exactly,
the noise leaves no trace, end_cycle is atomic, and a checkpointed state rebuilds the same weights."""

import io

import pytest
import torch
from peft.utils.other import transpose

from conftest import EXPERT_KINDS, expert, tiny_llama, token_batches, train_cascade
from lorasc import LoRASC, LoRASCConfig

LOW = [torch.bfloat16, torch.float16]
TARGETS = ["q_proj", "v_proj", "down_proj"]


def make(dtype, kind="lora", **fields):
    fields = {"slow_alpha": 0.5, "noise_lambda": 0.15, "cycle_steps": 3, **fields}
    batches = token_batches(2, seed=9)
    config = LoRASCConfig(expert=expert(kind, r=4, lora_alpha=8, target_modules=TARGETS), **fields)
    return LoRASC(tiny_llama(dtype), config, grad_batches=lambda: batches)


def weights(cascade):
    return {n: layer.get_base_layer().weight.detach().clone() for n, layer in cascade.layers.items()}


def lr_for(dtype):
    return 1e-2 if dtype == torch.bfloat16 else 3e-3


class ExactReference:
    """W0 + Σ α·ΔW_t in float64, from each expert recorded just before its merge (LoRA: s·B·A;
    DoRA: the column-rescaled merge on the reference's own clean weight). Watches every end_cycle
    and measures, right after it, the share of clean weights that are one rounding of that value."""

    def __init__(self, cascade, dtype):
        self.cascade, self.dtype, self.shares = cascade, dtype, []
        self.w = {n: w.double() for n, w in weights(cascade).items()}
        end_cycle = cascade.end_cycle

        def record_end_and_measure():
            self.record()
            end_cycle()
            self.shares.append(self.share_exact())

        cascade.end_cycle = record_end_and_measure

    def record(self):
        alpha, adapter = self.cascade.config.slow_alpha, self.cascade.adapter
        for name, layer in self.cascade.layers.items():
            a, b = (t.detach().double() for t in self.cascade.init.factors(name, layer, adapter))
            delta = transpose(b @ a, layer.fan_in_fan_out) * layer.scaling[adapter]
            merged = self.w[name] + delta
            if layer.use_dora[adapter]:
                merged = merged * (layer.lora_magnitude_vector[adapter].weight.detach().double() / merged.norm(dim=1)).view(-1, 1)
            self.w[name] = self.w[name] + alpha * (merged - self.w[name])

    def share_exact(self):
        got, total = 0, 0
        for name, w in weights(self.cascade).items():
            got += (w == self.w[name].to(self.dtype)).sum().item()
            total += w.numel()
        return got / total


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("kind", EXPERT_KINDS)
def test_clean_weights_are_one_rounding_of_the_exact_sum_after_every_cycle(dtype, kind):
    cascade = make(dtype, kind)
    reference = ExactReference(cascade, dtype)
    cascade.begin(total_steps=9)
    train_cascade(cascade, cascade.optimizer(lr=lr_for(dtype)), token_batches(9))
    assert len(reference.shares) == 3 and min(reference.shares) >= 0.99, reference.shares
    pristine = weights(make(dtype, kind))
    moved = sum((w != reference.w[n].to(dtype)).sum().item() for n, w in pristine.items()) / sum(w.numel() for w in pristine.values())
    assert moved > 0.05  # the experts moved the weights by more than rounding


@pytest.mark.parametrize("dtype", LOW)
def test_merging_into_the_rounded_weight_would_lose_the_update(dtype):
    """Why the backbone is rebuilt from W0: adding a small expert into bf16/fp16 weights rounds most of it away."""
    cascade = make(dtype)
    reference = ExactReference(cascade, dtype)
    cascade.begin(total_steps=9)
    naive = {n: w.clone() for n, w in weights(cascade).items()}

    def merge_naively():
        if cascade.steps + 1 in cascade.ends:
            for name, layer in cascade.layers.items():
                naive[name] += (cascade.config.slow_alpha * layer.get_delta_weight(cascade.adapter)).to(dtype)

    train_cascade(cascade, cascade.optimizer(lr=lr_for(dtype)), token_batches(9), merge_naively)
    exact = sum((naive[n] == reference.w[n].to(dtype)).sum().item() for n in naive) / sum(w.numel() for w in naive.values())
    assert exact < 0.95 <= reference.shares[-1]


@pytest.mark.parametrize("dtype", LOW)
def test_the_noise_leaves_no_trace(dtype):
    """The same expert merged on a noisy and on a noise-free backbone gives the same weights, bit for bit."""
    noisy, quiet = make(dtype, noise_lambda=0.15), make(dtype, noise_lambda=0.0)
    for cycle in range(3):
        for cascade in (noisy, quiet):
            cascade.start_cycle()
            gen = torch.Generator().manual_seed(cycle)
            with torch.no_grad():
                for p in cascade.expert_params:
                    p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        assert any(not torch.equal(w, weights(quiet)[n]) for n, w in weights(noisy).items())  # the noise is on
        noisy.end_cycle()
        quiet.end_cycle()
        for name, w in weights(noisy).items():
            assert torch.equal(w, weights(quiet)[name]), name


def full_state(cascade):
    return {"weights": {n: p.detach().clone() for n, p in cascade.model.named_parameters()}, "cascade": cascade.state_dict()}


@pytest.mark.parametrize("kind", ["lora", "dora"])
def test_end_cycle_is_atomic(kind, monkeypatch):
    cascade = make(torch.bfloat16, kind, slow_head=False)
    cascade.begin(total_steps=6)
    optimizer = cascade.optimizer(lr=1e-2)
    train_cascade(cascade, optimizer, token_batches(5))  # cycle 2 is running, one step from its end
    before = full_state(cascade)
    writes, clean32 = [], cascade.backbone.clean32

    def fail_on_the_third_matrix(name, slow):
        writes.append(name)
        if len(writes) == 3:
            raise RuntimeError("simulated failure mid-merge")
        return clean32(name, slow)

    monkeypatch.setattr(cascade.backbone, "clean32", fail_on_the_third_matrix)
    with pytest.raises(RuntimeError, match="simulated failure"):
        cascade.end_cycle()
    after = full_state(cascade)
    for name, w in before["weights"].items():
        assert torch.equal(w, after["weights"][name]), name
    assert repr(after["cascade"]) == repr(before["cascade"])
    monkeypatch.undo()
    cascade.end_cycle()  # the same call succeeds once the cause is gone
    assert not cascade.in_cycle and cascade.cycle == 2


def round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("kind,expert_init", [("lora", "kaiming"), ("lora", "gradient"), ("rslora", "orthogonal"), ("dora", "kaiming")])
def test_a_checkpointed_state_rebuilds_the_same_weights_mid_cycle(kind, expert_init):
    """Resume = uninterrupted, bitwise, from the cascade state and the trainable parameters alone."""
    batches = token_batches(9)
    full = make(torch.bfloat16, kind, expert_init=expert_init, slow_head=True)
    full.begin(total_steps=9)
    optimizer = full.optimizer(lr=1e-2)
    train_cascade(full, optimizer, batches[:4])  # cycle 2, noise on
    trainable = {n: p.detach().clone() for n, p in full.model.named_parameters() if p.requires_grad}
    saved = round_trip({"cascade": full.state_dict(), "trainable": trainable, "optimizer": optimizer.state_dict()})
    train_cascade(full, optimizer, batches[4:])

    resumed = make(torch.bfloat16, kind, expert_init=expert_init, slow_head=True)  # a fresh, pristine model
    resumed.begin(total_steps=9)
    resumed_optimizer = resumed.optimizer(lr=1e-2)
    resumed.load_state_dict(saved["cascade"])
    resumed.model.load_state_dict(saved["trainable"], strict=False)
    resumed_optimizer.load_state_dict(saved["optimizer"])
    train_cascade(resumed, resumed_optimizer, batches[4:])
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name


def test_experts_and_head_stay_float32_on_a_bfloat16_backbone():
    cascade = make(torch.bfloat16, "dora")
    cascade.start_cycle()
    assert cascade.expert_params and all(p.dtype == torch.float32 for p in cascade.expert_params)
    assert cascade.layers and all(layer.get_base_layer().weight.dtype == torch.bfloat16 for layer in cascade.layers.values())
