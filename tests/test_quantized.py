"""The cascade on bitsandbytes 4-bit and 8-bit backbones (quantized.py), on the CPU with a tiny Llama:
the packed weights are never touched, and the model computes deQ(W0_q)·x + S·x exactly. Exports:
test_quantized_exports.py; the CLI: test_quantized_cli.py."""

import copy

import pytest
import torch
from conftest import expert, tiny_llama, token_batches, train_cascade

pytest.importorskip("bitsandbytes")
from quantized_models import (ALPHA, QUANTIZATIONS, TARGETS, load_quantized, logits, packed_state, quantized_config,  # noqa: E402
                              run_recording_experts, with_deltas)

from lorasc import LoRASC, export_stacked  # noqa: E402
from lorasc.quantized import dequantized  # noqa: E402
from lorasc.requantize import surviving_fraction  # noqa: E402
from lorasc.slow import NoStackedAdapter  # noqa: E402


@pytest.mark.parametrize("kind", list(QUANTIZATIONS))
def test_the_quantized_cascade_is_exact_and_never_rewrites_the_weights(llama_folder, kind):
    model = load_quantized(llama_folder, kind)
    before = packed_state(model)
    reference = copy.deepcopy(model).dequantize(dtype=torch.float32)  # every weight as loaded, dequantized
    cascade = LoRASC(model, quantized_config())
    experts = run_recording_experts(cascade, token_batches(9))
    assert cascade.cycle == 3 and not cascade.in_cycle and len(experts) == 3
    watched = list(cascade.watched_tensors())  # what the DDP replica check compares: the stack, the expert
    assert sum(name.endswith((".lorasc_stack.A", ".lorasc_stack.B")) for name in watched) == 2 * len(cascade.layers)

    after = packed_state(model)
    assert before.keys() == after.keys() and before
    for name in before:
        for key in before[name]:
            assert torch.equal(before[name][key], after[name][key]), (name, key)

    deltas = {name.removeprefix("base_model.model."): sum(ALPHA * s * b @ a for a, b, s in (e[name] for e in experts))
              for name in cascade.layers}
    dense = with_deltas(reference, deltas)
    batch = token_batches(1, seed=7)[0]
    assert (logits(cascade.model, batch) - logits(dense, batch)).abs().max() <= 1e-5


@pytest.mark.parametrize("expert_fields, init", [({"use_rslora": True}, "kaiming"), ({}, "orthogonal")])
def test_rslora_experts_and_the_orthogonal_init_are_carried_exactly(llama_folder, expert_fields, init):
    model = load_quantized(llama_folder)
    reference = copy.deepcopy(model).dequantize(dtype=torch.float32)
    config = quantized_config(expert_init=init)
    config.expert = expert(target_modules=TARGETS, **expert_fields)
    cascade = LoRASC(model, config)
    experts = run_recording_experts(cascade, token_batches(9))
    deltas = {name.removeprefix("base_model.model."): sum(ALPHA * s * b @ a for a, b, s in (e[name] for e in experts))
              for name in cascade.layers}
    batch = token_batches(1, seed=7)[0]
    assert (logits(cascade.model, batch) - logits(with_deltas(reference, deltas), batch)).abs().max() <= 1e-5


def test_the_trainer_callback_runs_a_quantized_cascade(llama_folder, tmp_path):
    from transformers import Trainer, TrainingArguments

    from lorasc import LoRASCCallback

    model = load_quantized(llama_folder)
    before = packed_state(model)
    cascade = LoRASC(model, quantized_config())
    rows = [{"input_ids": ids, "labels": ids} for batch in token_batches(3) for ids in batch["input_ids"]]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6, learning_rate=1e-2, report_to="none",
                             use_cpu=True, save_strategy="no")
    Trainer(model=cascade.model, args=args, train_dataset=rows, callbacks=[LoRASCCallback(cascade)]).train()
    assert cascade.ends == [2, 4, 6] and cascade.cycle == 3 and not cascade.in_cycle
    assert {a.shape[0] for name, a in cascade.backbone.watched().items() if name.endswith(".A")} == {3 * 2}
    after = packed_state(model)
    assert all(torch.equal(before[name][key], after[name][key]) for name in before for key in before[name])


def test_a_boundary_at_alpha_one_does_not_move_the_logits(llama_folder):
    cascade = LoRASC(load_quantized(llama_folder), quantized_config(slow_alpha=1.0))
    batches, probe = token_batches(6), token_batches(1, seed=7)[0]
    cascade.begin(len(batches))
    optimizer = cascade.optimizer(lr=1e-2)
    jumps = []
    for batch in batches:
        cascade.model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        before = logits(cascade.model, probe)
        if cascade.step(optimizer):
            jumps.append((logits(cascade.model, probe) - before).abs().max().item())
    assert len(jumps) == 3 and max(jumps) <= 1e-5


def test_resume_on_a_quantized_backbone_is_bitwise(llama_folder):
    batches = token_batches(9)
    whole = LoRASC(load_quantized(llama_folder), quantized_config())
    run_recording_experts(whole, batches)

    first = LoRASC(load_quantized(llama_folder), quantized_config())
    first.begin(len(batches))
    optimizer = first.optimizer(lr=1e-2)
    train_cascade(first, optimizer, batches[:4])  # stops mid-cycle 2
    state, trained = first.state_dict(), {n: p.detach().clone() for n, p in first.model.named_parameters() if p.requires_grad}
    optimizer_state = copy.deepcopy(optimizer.state_dict())

    resumed = LoRASC(load_quantized(llama_folder), quantized_config())
    resumed.begin(len(batches))
    optimizer = resumed.optimizer(lr=1e-2)
    resumed.load_state_dict(state)
    with torch.no_grad():
        for n, p in resumed.model.named_parameters():
            if p.requires_grad:
                p.copy_(trained[n])
    optimizer.load_state_dict(optimizer_state)
    train_cascade(resumed, optimizer, batches[4:])
    for (name, a), (_, b) in zip(whole.backbone.watched().items(), resumed.backbone.watched().items()):
        assert torch.equal(a, b), name


def test_the_stack_budget_stops_or_compresses(llama_folder):
    with pytest.raises(ValueError, match=r"^slow_budget=0.5 is not allowed: .*slow_overflow=compress"):
        LoRASC(load_quantized(llama_folder), quantized_config(slow_budget=0.5)).begin(9)

    # 1.5 × the 6144 packed bytes of the four adapted layers fit 5 ranks of 1792 float32 bytes each: the stack
    # of rank 2 per cycle is truncated to 5 at the third and fourth boundaries
    budget = 1.5
    cascade = LoRASC(load_quantized(llama_folder), quantized_config(slow_budget=budget, slow_overflow="compress", num_cycles=4))
    run_recording_experts(cascade, token_batches(8))
    assert cascade.backbone.budget_rank == 5
    ranks = {a.shape[0] for name, a in cascade.backbone.watched().items() if name.endswith(".A")}
    assert ranks == {cascade.backbone.budget_rank}
    errors = cascade.slow.compressions
    assert len(errors) == 2 and all(0 < e < 1 for record in errors for e in record.values())


@pytest.mark.parametrize("fields, fragment", [
    (dict(noise_lambda=0.15), "noise_lambda=0.15 is not allowed: 0 on a quantized backbone"),
    (dict(noise_targets="all", noise_lambda=0.0), "noise_targets='all' is not allowed"),
    (dict(expert_init="gradient"), "expert_init='gradient' is not allowed"),
])
def test_what_a_quantized_backbone_cannot_carry_is_refused(llama_folder, fields, fragment):
    with pytest.raises(ValueError, match=fragment):
        LoRASC(load_quantized(llama_folder), quantized_config(**fields))


def test_dora_is_refused_on_a_quantized_backbone(llama_folder):
    config = quantized_config()
    config.expert.use_dora = True
    with pytest.raises(ValueError, match="expert.use_dora=True is not allowed: False on a quantized backbone"):
        LoRASC(load_quantized(llama_folder), config)


def test_the_requantizing_baseline_rounds_most_of_its_experts_away(llama_folder, tmp_path):
    """quantized_merge='requantize' (the qrelora method) merges as the peers do, into the NF4 weights:
    they change, and they keep a small part of the learned S, which has no exact adapter."""
    cascade = LoRASC(load_quantized(llama_folder), quantized_config(quantized_merge="requantize"))
    before = {name: dequantized(layer.get_base_layer()) for name, layer in cascade.layers.items()}
    run_recording_experts(cascade, token_batches(9), lr=3e-4)  # experts of about 1 % of the weights, as in a real run
    assert cascade.slow_step < 0.02
    kept = [surviving_fraction(before[name], dequantized(layer.get_base_layer()), cascade.slow.delta(name, layer, before[name]))
            for name, layer in cascade.layers.items()]
    assert max(kept) < 0.5 and not cascade.backbone.watched()
    with pytest.raises(NoStackedAdapter):
        export_stacked(cascade, tmp_path / "adapter")
    with pytest.raises(ValueError, match="quantized_merge='requantize' is not allowed: 'carry' on a float backbone"):
        LoRASC(tiny_llama(), quantized_config(quantized_merge="requantize"))
