import pytest
import torch
from peft import LoraConfig

from conftest import TinyClassifier
from lorasc import LoRASC, LoRASCConfig
from lorasc.export import effective_rank, stacked_factors

TARGETS = ["q", "v"]


def batches_from(tiny_batches):
    return lambda: [{"x": x, "labels": y} for x, y in tiny_batches[:2]]


def make(tiny_batches, expert_init="kaiming", **fields):
    expert = LoraConfig(r=2, lora_alpha=4, target_modules=TARGETS)
    return LoRASC(TinyClassifier(), LoRASCConfig(expert_init=expert_init, expert=expert, **fields), grad_batches=batches_from(tiny_batches))


def backbone(cascade):
    return {n: l.get_base_layer().weight.detach().clone() for n, l in cascade.layers.items()}


def train_steps(cascade, optimizer, batches):
    for x, y in batches:
        cascade.model(x=x, labels=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        cascade.step(optimizer)


def test_gradient_init_starts_from_the_noisy_merged_model(tiny_batches):
    x = tiny_batches[0][0]
    plain, aligned = make(tiny_batches), make(tiny_batches, "gradient")
    plain.start_cycle()
    aligned.start_cycle()
    assert torch.count_nonzero(aligned.layers["base_model.model.q"].lora_B["default"].weight) > 0  # a non-trivial expert
    with torch.no_grad():
        torch.testing.assert_close(aligned.model(x=x).logits, plain.model(x=x).logits, atol=1e-5, rtol=1e-5)
    assert all(p.grad is None for p in aligned.model.parameters())


def test_gradient_init_noise_and_compensation_are_removed_exactly(tiny_batches):
    cascade = make(tiny_batches, "gradient", noise_lambda=0.15)
    clean = backbone(cascade)
    cascade.start_cycle()
    cascade.end_cycle()  # an untrained expert adds nothing: back to the clean backbone
    for name, w in backbone(cascade).items():
        assert ((w - clean[name]).norm() / clean[name].norm()).item() < 1e-6


def test_gradient_init_merges_the_learned_change_only(tiny_batches):
    alpha = 0.5
    cascade = make(tiny_batches, "gradient", slow_alpha=alpha, noise_lambda=0.15)
    clean = backbone(cascade)
    cascade.start_cycle()
    initial = {n: (a.clone(), b.clone()) for n, (a, b) in cascade.init.initial.items()}
    with torch.no_grad():
        for p in cascade.expert_params:
            p.add_(0.1 * torch.randn_like(p))
    trained = {n: (l.lora_A["default"].weight.detach().clone(), l.lora_B["default"].weight.detach().clone()) for n, l in cascade.layers.items()}
    cascade.end_cycle()
    for name, w in backbone(cascade).items():
        s = cascade.layers[name].scaling["default"]
        (a, b), (a0, b0) = trained[name], initial[name]
        torch.testing.assert_close(w, clean[name] + alpha * s * (b @ a - b0 @ a0), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("expert_init", ["gradient", "orthogonal", "kaiming"])
def test_stacked_factors_equal_the_total_change(tiny_batches, expert_init):
    cascade = make(tiny_batches, expert_init, slow_alpha=0.5, noise_lambda=0.15, cycle_steps=3)
    clean = backbone(cascade)
    cascade.begin(total_steps=9)
    optimizer = cascade.optimizer(lr=1e-2)
    train_steps(cascade, optimizer, tiny_batches[:9])
    rank = {"gradient": 2 * 2 * 3, "orthogonal": 2 * 3, "kaiming": 2 * 3}[expert_init]
    for name, (a, b) in stacked_factors(cascade).items():
        assert a.shape[0] == rank
        torch.testing.assert_close(b @ a, backbone(cascade)[name] - clean[name], atol=1e-6, rtol=1e-4)


def test_orthogonal_experts_add_new_directions(tiny_batches):
    cascade = make(tiny_batches, "orthogonal", cycle_steps=2)
    cascade.begin(total_steps=6)
    optimizer = cascade.optimizer(lr=1e-2)
    train_steps(cascade, optimizer, tiny_batches[:2])  # cycle 1 ends, cycle 2 starts
    first = cascade.slow.history[0]["base_model.model.q"][0]
    second = cascade.layers["base_model.model.q"].lora_A["default"].weight.detach()
    overlap = (second @ torch.linalg.qr(first.T).Q).norm() / second.norm()
    assert overlap < 1e-5


def test_orthogonal_init_grows_the_rank_at_least_as_much(tiny_batches):
    ranks = {}
    for mode in ("kaiming", "orthogonal"):
        cascade = make(tiny_batches, mode, slow_alpha=0.5, noise_lambda=0.0, cycle_steps=2)
        cascade.begin(total_steps=12)
        train_steps(cascade, cascade.optimizer(lr=1e-2), tiny_batches)
        ranks[mode] = sum(effective_rank(torch.linalg.svdvals(b @ a)) for a, b in stacked_factors(cascade).values())
    assert ranks["orthogonal"] >= ranks["kaiming"] - 1e-6


def test_prune_zeroes_the_smallest_moments(tiny_batches):
    cascade = make(tiny_batches, optimizer_state="prune", prune_ratio=0.75, cycle_steps=2)
    cascade.begin(total_steps=4)
    optimizer = cascade.optimizer(lr=1e-2)
    train_steps(cascade, optimizer, tiny_batches[:2])
    for p in cascade.expert_params:
        first, second = optimizer.state[p]["exp_avg"], optimizer.state[p]["exp_avg_sq"]
        assert 0.7 <= (second == 0).float().mean().item() <= 0.8
        assert not (first[second == 0] != 0).any()  # a first moment never outlives its second: the next step stays bounded
    before = [p.detach().clone() for p in cascade.expert_params]
    train_steps(cascade, optimizer, tiny_batches[2:3])
    assert max((p - b).abs().max().item() for p, b in zip(cascade.expert_params, before)) < 10 * 1e-2


def test_gradient_init_needs_batches_and_no_dora():
    with pytest.raises(ValueError, match="expert_init='gradient' is not allowed without grad_batches"):
        LoRASC(TinyClassifier(), LoRASCConfig(expert_init="gradient", expert=LoraConfig(r=2, target_modules=TARGETS)))
    with pytest.raises(ValueError, match="expert_init='gradient' is not allowed: 'kaiming' or 'orthogonal' with a DoRA expert"):
        LoRASCConfig(expert_init="gradient", expert=LoraConfig(r=2, target_modules=TARGETS, use_dora=True))


def test_gradient_init_uses_at_most_gradient_batches_of_the_batches(tiny_batches):
    """Five batches offered, two used: the same expert as from a source of exactly those two, and
    another one than from the first batch alone."""
    drawn = []

    def five_batches():
        for x, y in tiny_batches[:5]:
            drawn.append(x)
            yield {"x": x, "labels": y}

    def expert_from(source, gradient_batches):
        config = LoRASCConfig(expert_init="gradient", gradient_batches=gradient_batches, expert=LoraConfig(r=2, target_modules=TARGETS))
        cascade = LoRASC(TinyClassifier(), config, grad_batches=source)
        cascade.start_cycle()
        return [p.detach().clone() for p in cascade.expert_params]

    offered, exact, one = expert_from(five_batches, 2), expert_from(batches_from(tiny_batches), 2), expert_from(five_batches, 1)
    assert len(offered) == len(exact) > 0 and all(torch.equal(a, b) for a, b in zip(offered, exact))
    assert not torch.equal(offered[1], one[1])  # B from the gradient of one batch differs
    assert len(drawn) == 2 + 1
