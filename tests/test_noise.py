import pytest
import torch
from peft import LoraConfig

from lorasc import LoRASC, LoRASCConfig
from lorasc.noise import matrix_seed, noise_for


def big_weight(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(256, 512, generator=gen) * 0.05 + 0.01


def test_uniform_noise_has_the_stated_distribution():
    clean, lam = big_weight(), 0.15
    eps = noise_for(clean, lam, "uniform", seed=3)
    half_range = lam / 2 * clean.std().item()
    assert eps.abs().max().item() <= half_range * (1 + 1e-5)
    assert eps.abs().max().item() > 0.99 * half_range  # the range is used, not just bounded
    assert abs(eps.mean().item()) < 0.01 * half_range
    assert eps.std().item() == pytest.approx(lam * clean.std().item() / 12**0.5, rel=0.01)


def test_gaussian_noise_std():
    clean = big_weight()
    assert noise_for(clean, 0.1, "gaussian", seed=3).std().item() == pytest.approx(0.1 * clean.std().item(), rel=0.01)


def test_an_unknown_kind_of_noise_is_refused():
    with pytest.raises(ValueError, match=r"^noise_kind='laplace' is not allowed: one of \('uniform', 'gaussian'\)"):
        noise_for(big_weight(), 0.1, "laplace", seed=3)


def test_fresh_noise_each_cycle_and_same_noise_for_same_seed():
    clean = big_weight()
    draws = [noise_for(clean, 0.15, "uniform", matrix_seed(seed, cycle, "w")) for seed, cycle in [(0, 1), (0, 2), (0, 1), (1, 1)]]
    assert not torch.allclose(draws[0], draws[1])
    assert torch.equal(draws[0], draws[2])
    assert not torch.allclose(draws[0], draws[3])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_removing_the_noise_restores_the_pristine_weights_bitwise(tiny, dtype):
    tiny.to(dtype)
    pristine = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    cascade = LoRASC(tiny, LoRASCConfig(noise_lambda=0.15, noise_targets="all", expert=LoraConfig(r=2, target_modules=["q"])))
    weights = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p for n, p in cascade.model.named_parameters()}
    for _ in range(5):  # untrained experts add nothing: each cycle must end exactly where it began
        cascade.start_cycle()
        assert not torch.equal(weights["q.weight"], pristine["q.weight"])
        cascade.end_cycle()
        for name, p in pristine.items():
            assert torch.equal(weights[name], p), name


def test_only_adapted_weights_get_noise(tiny):
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    cascade = LoRASC(tiny, LoRASCConfig(noise_lambda=0.15, expert=LoraConfig(r=2, target_modules=["q"])))
    cascade.start_cycle()
    after = {n.removeprefix("base_model.model.").replace(".base_layer", ""): p for n, p in cascade.model.named_parameters()}
    changed = {n for n, p in before.items() if not torch.equal(after[n].detach(), p)}
    assert changed == {"q.weight"}


def test_noise_targets_all_perturbs_every_frozen_matrix(tiny):
    cascade = LoRASC(tiny, LoRASCConfig(noise_targets="all", expert=LoraConfig(r=2, target_modules=["q"])))
    assert set(cascade.backbone.params) == {"base_model.model.q.base_layer.weight", "base_model.model.q.base_layer.bias",
                                             "base_model.model.v.weight", "base_model.model.v.bias",
                                             "base_model.model.head.weight", "base_model.model.head.bias"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_noise_is_drawn_on_the_weights_device():
    eps = noise_for(big_weight().cuda(), 0.15, "uniform", seed=0)
    assert eps.is_cuda
