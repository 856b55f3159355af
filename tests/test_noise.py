import pytest
import torch
from peft import LoraConfig

from lorasc import LoRASC, LoRASCConfig
from lorasc.noise import BackboneNoise


def big_param(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.nn.Parameter(torch.randn(256, 512, generator=gen) * 0.05 + 0.01, requires_grad=False)


def test_uniform_noise_has_the_stated_distribution():
    p = big_param()
    clean = p.detach().clone()
    lam = 0.15
    noise = BackboneNoise({"w": p}, lam, "uniform", seed=3)
    noise.add(cycle=1)
    eps = p.detach() - clean
    half_range = lam / 2 * clean.std().item()
    assert eps.abs().max().item() <= half_range * (1 + 1e-5)
    assert eps.abs().max().item() > 0.99 * half_range  # the range is used, not just bounded
    assert abs(eps.mean().item()) < 0.01 * half_range
    assert eps.std().item() == pytest.approx(lam * clean.std().item() / 12**0.5, rel=0.01)


def test_gaussian_noise_std():
    p = big_param()
    clean = p.detach().clone()
    BackboneNoise({"w": p}, 0.1, "gaussian", seed=3).add(cycle=1)
    assert (p.detach() - clean).std().item() == pytest.approx(0.1 * clean.std().item(), rel=0.01)


def test_removal_restores_the_clean_weights():
    p = big_param()
    clean = p.detach().clone()
    noise = BackboneNoise({"w": p}, 0.15, "uniform", seed=0)
    for cycle in range(1, 6):
        noise.add(cycle)
        assert not torch.equal(p.detach(), clean)
        noise.remove()
    relative = ((p.detach() - clean).norm() / clean.norm()).item()
    assert relative < 1e-6


def test_fresh_noise_each_cycle_and_same_noise_for_same_seed():
    draws = []
    for seed, cycle in [(0, 1), (0, 2), (0, 1), (1, 1)]:
        p = big_param()
        clean = p.detach().clone()
        BackboneNoise({"w": p}, 0.15, "uniform", seed=seed).add(cycle)
        draws.append(p.detach() - clean)
    assert not torch.allclose(draws[0], draws[1])
    assert torch.equal(draws[0], draws[2])
    assert not torch.allclose(draws[0], draws[3])


def test_noise_state_survives_a_round_trip():
    p = big_param()
    clean = p.detach().clone()
    noise = BackboneNoise({"w": p}, 0.15, "uniform", seed=0)
    noise.add(cycle=4)
    resumed = BackboneNoise({"w": p}, 0.15, "uniform", seed=0)
    resumed.load_state_dict(noise.state_dict())
    resumed.remove()
    assert torch.allclose(p.detach(), clean, atol=1e-7)


def test_double_add_is_refused():
    noise = BackboneNoise({"w": big_param()}, 0.15, "uniform", seed=0)
    noise.add(1)
    with pytest.raises(RuntimeError, match="still on the backbone"):
        noise.add(2)


def test_only_adapted_weights_get_noise(tiny):
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    cascade = LoRASC(tiny, LoRASCConfig(noise_lambda=0.15, expert=LoraConfig(r=2, target_modules=["q"])))
    cascade.start_cycle()
    after = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p for n, p in cascade.model.named_parameters()}
    changed = {n for n, p in before.items() if not torch.equal(after[n].detach(), p)}
    assert changed == {"q.weight"}


def test_noise_targets_all_perturbs_every_frozen_matrix(tiny):
    cascade = LoRASC(tiny, LoRASCConfig(noise_targets="all", expert=LoraConfig(r=2, target_modules=["q"])))
    assert set(cascade.noise.params) == {"base_model.model.q.base_layer.weight", "base_model.model.q.base_layer.bias",
                                          "base_model.model.v.weight", "base_model.model.v.bias",
                                          "base_model.model.head.weight", "base_model.model.head.bias"}
