import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from conftest import EXPERT_KINDS, TinyNet, expert
from lorasc import LoRASC, LoRASCConfig


def make(kind="lora", **fields):
    return LoRASC(TinyNet(), LoRASCConfig(expert=expert(kind, target_modules=["q", "v"]), **fields))


def base_weights(cascade):
    return {n: layer.get_base_layer().weight.detach().clone() for n, layer in cascade.layers.items()}


def randomize_expert(cascade, seed=5):
    """Stand-in for training: a non-trivial expert, DoRA magnitude included."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in cascade.expert_params:
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)


def train(model, batches, optimizer, after_step=lambda: None):
    model.eval()  # no dropout: runs compare bit for bit
    for x, y in batches:
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        after_step()


@pytest.mark.parametrize("kind", EXPERT_KINDS)
@pytest.mark.parametrize("lam", [0.0, 0.15])
def test_slow_fast_update_is_alpha_times_the_peft_merge(kind, lam):
    alpha = 0.3
    cascade = make(kind, slow_alpha=alpha, noise_lambda=lam)
    clean = base_weights(cascade)
    cascade.start_cycle()
    randomize_expert(cascade)
    reference = copy.deepcopy(cascade.model)
    with torch.no_grad():
        for name, layer in reference.named_modules():
            if name in clean:
                layer.get_base_layer().weight.copy_(clean[name])
    reference.merge_adapter()  # PEFT's own merge on the clean backbone
    cascade.end_cycle()
    for name, layer in cascade.layers.items():
        merged = dict(reference.named_modules())[name].get_base_layer().weight
        expected = clean[name] + alpha * (merged - clean[name])
        torch.testing.assert_close(layer.get_base_layer().weight, expected, atol=1e-6, rtol=1e-6)
        assert layer.merged_adapters == []
        assert torch.count_nonzero(layer.lora_B["default"].weight) == 0


@pytest.mark.parametrize("kind", EXPERT_KINDS)
def test_model_between_cycles_equals_the_merged_backbone(kind):
    cascade = make(kind, slow_alpha=0.5, noise_lambda=0.1)
    cascade.start_cycle()
    randomize_expert(cascade)
    cascade.end_cycle()
    x = torch.randn(4, 12)
    with torch.no_grad():
        with cascade.model.disable_adapter():
            backbone_only = cascade.model(x)
        torch.testing.assert_close(cascade.model(x), backbone_only, atol=1e-6, rtol=1e-5)


def test_second_expert_is_trained_and_changes_outputs(tiny_batches):
    cascade = make(slow_alpha=1.0, noise_lambda=0.0)
    cascade.begin(total_steps=8, steps_per_epoch=4)
    optimizer = cascade.optimizer(lr=1e-2)
    x = tiny_batches[0][0]
    train(cascade.model, tiny_batches[:4], optimizer, lambda: cascade.step(optimizer))
    assert cascade.cycle == 2 and cascade.in_cycle
    with torch.no_grad():
        at_second_start = cascade.model(x)
    train(cascade.model, tiny_batches[4:8], optimizer, lambda: cascade.step(optimizer))
    with torch.no_grad():
        assert not torch.allclose(cascade.model(x), at_second_start)
    assert len(cascade.slow.history) == 2 and not torch.allclose(cascade.slow.history[0]["base_model.model.q"][1], cascade.slow.history[1]["base_model.model.q"][1])


def test_fresh_experts_are_seeded_per_cycle():
    draws = []
    for seed in (0, 0, 1):
        cascade = make(seed=seed)
        cascade.start_cycle()
        first = cascade.layers["base_model.model.q"].lora_A["default"].weight.detach().clone()
        assert torch.count_nonzero(cascade.layers["base_model.model.q"].lora_B["default"].weight) == 0
        cascade.end_cycle()
        cascade.start_cycle()
        draws.append((first, cascade.layers["base_model.model.q"].lora_A["default"].weight.detach().clone()))
    assert not torch.allclose(draws[0][0], draws[0][1])  # a new expert each cycle
    assert torch.equal(draws[0][0], draws[1][0]) and torch.equal(draws[0][1], draws[1][1])  # same seed, same experts
    assert not torch.allclose(draws[0][0], draws[2][0])


def test_expert_seeding_leaves_the_global_rng_alone():
    cascade = make()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cascade.start_cycle()
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("mode", ["reset", "keep"])
def test_optimizer_state_at_a_new_expert(mode, tiny_batches):
    model = TinyNet()
    cascade = LoRASC(model, LoRASCConfig(optimizer_state=mode, expert=LoraConfig(r=2, target_modules=["q"], modules_to_save=["head"])))
    cascade.begin(total_steps=4, steps_per_epoch=2)
    optimizer = cascade.optimizer(lr=1e-2)
    train(cascade.model, tiny_batches[:2], optimizer)
    assert cascade.expert_params and all(optimizer.state[p] for p in cascade.expert_params)
    cascade.step(optimizer)
    cascade.step(optimizer)  # end of cycle 1, start of cycle 2
    assert cascade.cycle == 2
    for p in cascade.expert_params:
        assert (len(optimizer.state.get(p, {})) == 0) == (mode == "reset")
    assert cascade.head_params and all(optimizer.state[p] for p in cascade.head_params.values())  # the head is not an expert


def test_loraplus_puts_b_at_ratio_times_lr():
    cascade = make(loraplus_lr_ratio=16)
    optimizer = cascade.optimizer(lr=1e-3)
    lr_of = {id(p): g["lr"] for g in optimizer.param_groups for p in g["params"]}
    for layer in cascade.layers.values():
        assert lr_of[id(layer.lora_A["default"].weight)] == pytest.approx(1e-3)
        assert lr_of[id(layer.lora_B["default"].weight)] == pytest.approx(1.6e-2)


def test_slow_head_applies_the_slow_step_to_the_head():
    model = TinyNet()
    cascade = LoRASC(model, LoRASCConfig(slow_alpha=0.25, slow_head=True, expert=LoraConfig(r=2, target_modules=["q"], modules_to_save=["head"])))
    head = cascade.head_params["base_model.model.head.modules_to_save.default.weight"]
    cascade.start_cycle()
    start = head.detach().clone()
    with torch.no_grad():
        head.add_(1.0)
    cascade.end_cycle()
    torch.testing.assert_close(head.detach(), start + 0.25)


def test_lora_reduction_one_cycle_alpha_one_no_noise(tiny_batches):
    """T = 1, α = 1, λ = 0 is plain LoRA, merged."""
    cascade = make(slow_alpha=1.0, noise_lambda=0.0, num_cycles=1)
    cascade.begin(total_steps=len(tiny_batches))
    initial_a = {n: l.lora_A["default"].weight.detach().clone() for n, l in cascade.layers.items()}
    optimizer = cascade.optimizer(lr=1e-2)
    train(cascade.model, tiny_batches, optimizer, lambda: cascade.step(optimizer))

    lora = get_peft_model(TinyNet(), expert(target_modules=["q", "v"]))
    with torch.no_grad():
        for name, module in lora.named_modules():
            if name in initial_a:
                module.lora_A["default"].weight.copy_(initial_a[name])
    train(lora, tiny_batches, torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0))
    merged = lora.merge_and_unload()
    for name, layer in cascade.layers.items():
        short = name.removeprefix("base_model.model.")
        torch.testing.assert_close(layer.get_base_layer().weight, merged.get_submodule(short).weight, atol=1e-6, rtol=1e-5)


def test_cola_reduction_alpha_one_no_noise(tiny_batches):
    """α = 1, λ = 0 is COLA: train a LoRA, merge_and_unload, start a new one, one link per cycle."""
    links, steps = 3, 4
    cascade = make(slow_alpha=1.0, noise_lambda=0.0, cycle_steps=steps)
    cascade.begin(total_steps=links * steps)
    initial_a = []

    def record():
        initial_a.append({n: l.lora_A["default"].weight.detach().clone() for n, l in cascade.layers.items()})

    record()
    optimizer = cascade.optimizer(lr=1e-2)
    train(cascade.model, tiny_batches, optimizer, lambda: cascade.step(optimizer) and cascade.in_cycle and record())
    assert len(initial_a) == links

    base = TinyNet()
    for link in range(links):
        lora = get_peft_model(base, expert(target_modules=["q", "v"]))
        with torch.no_grad():
            for name, module in lora.named_modules():
                if name in initial_a[link]:
                    module.lora_A["default"].weight.copy_(initial_a[link][name])
        train(lora, tiny_batches[link * steps : (link + 1) * steps], torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.0))
        base = lora.merge_and_unload()
    for name, layer in cascade.layers.items():
        torch.testing.assert_close(layer.get_base_layer().weight, base.get_submodule(name.removeprefix("base_model.model.")).weight, atol=1e-6, rtol=1e-5)


def run_to_the_end(tiny_batches, state=None, start=0):
    cascade = make(slow_alpha=0.5, noise_lambda=0.15, cycle_steps=5)
    cascade.begin(total_steps=len(tiny_batches))
    optimizer = cascade.optimizer(lr=1e-2)
    if state is not None:
        cascade.model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        cascade.load_state_dict(state["cascade"])
    train(cascade.model, tiny_batches[start:], optimizer, lambda: cascade.step(optimizer))
    return cascade, optimizer


def test_same_seed_same_numbers(tiny_batches):
    a, _ = run_to_the_end(tiny_batches)
    b, _ = run_to_the_end(tiny_batches)
    for (na, pa), (nb, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert na == nb and torch.equal(pa, pb)


def test_resume_mid_cycle_with_noise_on_reaches_the_same_weights(tiny_batches):
    full, _ = run_to_the_end(tiny_batches)
    partial = make(slow_alpha=0.5, noise_lambda=0.15, cycle_steps=5)
    partial.begin(total_steps=len(tiny_batches))
    optimizer = partial.optimizer(lr=1e-2)
    train(partial.model, tiny_batches[:7], optimizer, lambda: partial.step(optimizer))
    assert partial.in_cycle  # interrupted in cycle 2, noise on
    state = copy.deepcopy({"model": partial.model.state_dict(), "optimizer": optimizer.state_dict(), "cascade": partial.state_dict()})
    resumed, _ = run_to_the_end(tiny_batches, state=state, start=7)
    for (name, p), q in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(p, q, atol=0, rtol=0, msg=name)


def test_exports_and_steps_refuse_misuse():
    cascade = make()
    with pytest.raises(RuntimeError, match="before step"):
        cascade.step()
    with pytest.raises(RuntimeError, match="no cycle is running"):
        cascade.end_cycle()
    cascade.start_cycle()
    with pytest.raises(RuntimeError, match="still running"):
        cascade.start_cycle()


def one_layer_cascade(kind):
    """W0 = [[3, 4], [0, 1]] (out × in), one rank-1 expert with scale 1, α = 0.5, no noise."""
    model = torch.nn.Sequential(torch.nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[3.0, 4.0], [0.0, 1.0]]))
    return LoRASC(model, LoRASCConfig(slow_alpha=0.5, noise_lambda=0.0, expert=expert(kind, r=1, lora_alpha=1, target_modules=["0"])))


# After one expert ΔW = B·A = [[0, 0], [1, 0]]: LoRA adds α·ΔW; DoRA (magnitude set to [5, 2]) merges to
# m/‖W + ΔW‖_row · (W + ΔW) = [[3, 4], [√2, √2]], and α takes half of the way there from W.
HALF_ROOT2 = 2**0.5 / 2
KNOWN_DELTAS = {"lora": [[0.0, 0.0], [0.5, 0.0]], "rslora": [[0.0, 0.0], [0.5, 0.0]], "dora": [[0.0, 0.0], [HALF_ROOT2, HALF_ROOT2 - 0.5]]}


@pytest.mark.parametrize("kind", EXPERT_KINDS)
def test_each_slow_state_takes_in_a_hand_set_expert_exactly(kind):
    from lorasc.export import stacked_factors, total_deltas
    from lorasc.slow import NoStackedAdapter

    cascade = one_layer_cascade(kind)
    layer = cascade.layers["base_model.model.0"]
    cascade.start_cycle()
    if kind == "dora":  # the fresh expert's magnitude is reset to the row norms of W, so that it adds nothing
        assert torch.equal(layer.lora_magnitude_vector["default"].weight, torch.tensor([5.0, 1.0]))
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor([[1.0, 0.0]]))
        layer.lora_B["default"].weight.copy_(torch.tensor([[0.0], [1.0]]))
        if kind == "dora":
            layer.lora_magnitude_vector["default"].weight.copy_(torch.tensor([5.0, 2.0]))
    cascade.end_cycle()
    delta = torch.tensor(KNOWN_DELTAS[kind])
    torch.testing.assert_close(total_deltas(cascade)["base_model.model.0"], delta)
    torch.testing.assert_close(layer.get_base_layer().weight.detach(), torch.tensor([[3.0, 4.0], [0.0, 1.0]]) + delta)
    if kind == "dora":
        with pytest.raises(NoStackedAdapter, match="expert.use_dora=True has no exact stacked adapter"):
            stacked_factors(cascade)
        torch.testing.assert_close(layer.lora_magnitude_vector["default"].weight.detach(), layer.get_base_layer().weight.norm(dim=1))
    else:
        a, b = stacked_factors(cascade)["base_model.model.0"]
        torch.testing.assert_close(b @ a, delta)
    again = type(cascade.slow).from_state(cascade.slow.state_dict())
    assert torch.equal(again.delta("base_model.model.0", layer, torch.tensor([[3.0, 4.0], [0.0, 1.0]])), total_deltas(cascade)["base_model.model.0"])
