"""Continual-learning methods as presets of the one engine (methods.py): SeqLoRA, IncLoRA, O-LoRA, an EMA
shadow, SLAO's α/√t, each checked against the method it must reduce to, bit for bit, and on its own effect."""

import math

import pytest
import torch
from conftest import expert, tiny_llama, token_batches, train_cascade
from test_tasks import assert_merged, assert_same_parameters, round_trip, rows, task_records, trainer_for, weights

from lorasc import LoRASC, LoRASCCallback, LoRASCConfig
from lorasc.methods import METHODS, FullFineTuning, Method
from lorasc.olora import olora_penalty
from lorasc.schedule import jagged_lr_lambda

LR = 1e-2
PARTS = {"a": token_batches(4, seed=1), "b": token_batches(4, seed=2)}


def base(kind="lora", **fields):
    """The user's settings: a cascade of 2 noisy cycles per task, which the presets override."""
    fields = {"slow_alpha": 0.5, "noise_lambda": 0.15, "num_cycles": 2, "rewarmup_steps": 1, **fields}
    return LoRASCConfig(**fields, expert=expert(kind, target_modules=["q_proj", "v_proj"]))


def cascade_for(config):
    return LoRASC(tiny_llama(), config)


def optimizer_for(cascade, lr=LR):
    """A fresh AdamW for a task, with the cascade's O-LoRA gradient added before each of its steps."""
    optimizer = cascade.optimizer(lr=lr)
    optimizer.register_step_pre_hook(lambda *_: cascade.before_optimizer_step())
    return optimizer


def run_tasks(config, parts=PARTS, lr=LR, before_step=lambda cascade: None, end=True):
    """The continual loop: per task, begin_task, a fresh optimizer and schedule, the plain loop, end_task."""
    cascade = cascade_for(config)
    for name, batches in parts.items():
        cascade.begin_task(name, len(batches))
        optimizer = optimizer_for(cascade, lr)
        train_cascade(cascade, optimizer, batches, lambda: before_step(cascade), cascade.scheduler(optimizer, warmup_steps=1))
        if end or name != list(parts)[-1]:
            cascade.end_task()
    return cascade


@pytest.mark.parametrize("method,fields", [("lorasc", {"slow_alpha": 1.0, "noise_lambda": 0.0, "num_cycles": 1}),
                                           ("o-lora", {"olora_lambda": 0.0}), ("ema", {"expert_ema": 0.0})])
def test_inc_lora_is_what_lorasc_o_lora_and_ema_reduce_to_bitwise(method, fields):
    """lorasc with α = 1, no noise, one cycle per task; o-lora with λ1 = 0 (its penalty runs in task b and adds
    exact zeros); ema with d = 0 (the shadow is the fast expert)."""
    inc, other = run_tasks(METHODS["inc-lora"].config(base())), run_tasks(METHODS[method].config(base(**fields)))
    assert {name: getattr(other.config, name) for name in fields} == fields
    assert task_records(inc) == task_records(other) == [("a", 1, 1), ("b", 2, 2)] and len(other.slow.history) == 2
    assert other.cycle_metrics().get("lorasc/olora_penalty", 0.0) == 0.0
    assert ("lorasc/olora_penalty" in other.cycle_metrics()) == (method == "o-lora")
    assert_same_parameters(inc, other)


def test_ema_merges_the_shadow_of_the_fast_expert():
    """Each merge takes θ_s, θ_s ← d·θ_s + (1 − d)·θ_f after every optimizer step from the fresh expert."""
    d, merged = 0.6, []
    cascade = cascade_for(METHODS["ema"].config(base(expert_ema=d)))
    name = sorted(cascade.layers)[0]
    layer = cascade.layers[name]
    for task, batches in PARTS.items():
        cascade.begin_task(task, len(batches))
        shadow = [layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()]
        optimizer = optimizer_for(cascade)
        for batch in batches:
            cascade.model(**batch).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            shadow = [d * s + (1 - d) * f.detach() for f, s in zip((layer.lora_A["default"].weight, layer.lora_B["default"].weight), shadow)]
            cascade.step(optimizer)
        merged.append(shadow)
        cascade.end_task()
    c = math.sqrt(layer.scaling["default"])  # α = 1
    for (a, b), cycle in zip(merged, cascade.slow.history, strict=True):
        torch.testing.assert_close(cycle[name], (c * a, c * b), rtol=1e-6, atol=1e-8)
        assert torch.count_nonzero(b) > 0


def test_one_task_seq_lora_is_merged_lora():
    batches = PARTS["a"]
    lora = METHODS["lora"].build(tiny_llama(), base())
    lora.begin(len(batches))
    train_cascade(lora, lora.optimizer(lr=LR), batches)
    lora.finish()

    seq = METHODS["seq-lora"].build(tiny_llama(), base())
    seq.begin_task("a", len(batches))
    train_cascade(seq, seq.optimizer(lr=LR), batches)
    seq.end_task()
    assert seq.in_cycle and not seq.slow.history  # the task's end merged nothing
    seq.finish()
    assert_same_parameters(lora, seq)


def test_two_task_seq_lora_keeps_one_expert_and_merges_it_once_at_finish():
    cascade = cascade_for(METHODS["seq-lora"].config(base()))
    pristine, layer = weights(cascade), cascade.layers[sorted(cascade.layers)[0]]
    cascade.begin_task("a", 4)
    optimizer = optimizer_for(cascade)
    train_cascade(cascade, optimizer, PARTS["a"], scheduler=cascade.scheduler(optimizer, warmup_steps=1))
    cascade.end_task()
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    at_boundary = (a.detach().clone(), b.detach().clone())
    assert cascade.in_cycle and not cascade.slow.history and torch.count_nonzero(b) > 0  # the task's end merged nothing

    cascade.begin_task("b", 4)
    assert torch.equal(a, at_boundary[0]) and torch.equal(b, at_boundary[1]) and cascade.cycle == 1  # no fresh expert
    optimizer = optimizer_for(cascade)
    scheduler = cascade.scheduler(optimizer, warmup_steps=1)
    expected = jagged_lr_lambda(4, 1, [4], 1)  # task b's schedule restarts
    assert [scheduler.lr_lambdas[0](s) for s in range(4)] == [expected(s) for s in range(4)]
    train_cascade(cascade, optimizer, PARTS["b"], scheduler=scheduler)
    assert not torch.equal(b, at_boundary[1]) and cascade.in_cycle and not cascade.slow.history
    assert cascade.ends == [8] and task_records(cascade) == [("a", 1, 1), ("b", 1, None)]
    cascade.end_task()
    assert task_records(cascade) == [("a", 1, 1), ("b", 1, 1)] and cascade.in_cycle
    expected_delta = {name: layer.scaling["default"] * layer.lora_B["default"].weight.detach() @ layer.lora_A["default"].weight.detach()
                      for name, layer in cascade.layers.items()}
    cascade.finish()
    assert len(cascade.slow.history) == 1
    assert_merged(cascade, pristine, [expected_delta])


@pytest.mark.parametrize("kind", ["lora", "rslora"])
@pytest.mark.parametrize("method", ["inc-lora", "o-lora", "ema"])
def test_after_end_task_the_weights_are_w0_plus_the_merged_history(method, kind):
    pristine = weights(cascade_for(base(kind)))
    cascade = run_tasks(METHODS[method].config(base(kind)))
    assert_merged(cascade, pristine)  # within 1e-6 relative, no noise, B = 0, no cycle running


def test_inv_sqrt_merges_of_task_t_step_by_alpha_over_root_t():
    alpha, parts = 0.5, {"a": token_batches(4, seed=1), "b": token_batches(4, seed=2), "c": token_batches(4, seed=3)}
    experts = []

    def record(cascade):  # the fast expert about to be merged, and its task's number
        if cascade.steps + 1 in cascade.ends:
            experts.append((len(cascade.tasks), {n: (layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone())
                                                 for n, layer in cascade.layers.items()}))

    config = base(slow_alpha=alpha, noise_lambda=0.0, task_alpha="inv-sqrt", num_cycles=None, cycle_steps=2)
    cascade = run_tasks(config, parts, before_step=record)
    assert [t for t, _ in experts] == [1, 1, 2, 2, 3, 3] and len(cascade.slow.history) == 6
    for (task, factors), cycle in zip(experts, cascade.slow.history):
        for name, (a, b) in factors.items():
            c = math.sqrt(alpha / math.sqrt(task) * cascade.layers[name].scaling["default"])
            assert torch.equal(cycle[name][0], c * a) and torch.equal(cycle[name][1], c * b), (task, name)


@pytest.mark.parametrize("norm", ["l1", "fro"])
def test_olora_penalty_gradient_matches_finite_differences(norm):
    gen = torch.Generator().manual_seed(0)
    earlier = {"q": torch.randn(4, 6, generator=gen, dtype=torch.float64), "v": torch.randn(6, 6, generator=gen, dtype=torch.float64)}
    current = {"q": torch.randn(2, 6, generator=gen, dtype=torch.float64, requires_grad=True),
               "v": torch.randn(2, 6, generator=gen, dtype=torch.float64, requires_grad=True)}
    grads = torch.autograd.grad(olora_penalty(earlier, current, 0.7, norm), list(current.values()))
    eps = 1e-6
    for (name, a), grad in zip(current.items(), grads):
        for i in range(a.numel()):
            shifted = [{**current, name: (a.detach().flatten() + sign * eps * torch.eye(a.numel(), dtype=a.dtype)[i]).view_as(a)}
                       for sign in (1, -1)]
            numeric = (olora_penalty(earlier, shifted[0], 0.7, norm) - olora_penalty(earlier, shifted[1], 0.7, norm)) / (2 * eps)
            assert abs(numeric.item() - grad.flatten()[i].item()) <= 1e-6 * max(1.0, abs(numeric.item())), (name, i)


def test_the_engine_adds_the_penalty_gradient_to_a():
    cascade = run_tasks(METHODS["o-lora"].config(base(olora_lambda=0.3, olora_norm="fro")), parts={"a": PARTS["a"]})
    cascade.begin_task("b", 4)
    cascade.model(**PARTS["b"][0]).loss.backward()
    loss_grads = {n: layer.lora_A["default"].weight.grad.clone() for n, layer in cascade.layers.items()}
    cascade.before_optimizer_step()
    earlier = {n: cycle[n][0] / math.sqrt(cascade.layers[n].scaling["default"]) for cycle in cascade.slow.history for n in cycle}
    current = {n: layer.lora_A["default"].weight.detach().clone().requires_grad_(True) for n, layer in cascade.layers.items()}
    expected = dict(zip(current, torch.autograd.grad(olora_penalty(earlier, current, 0.3, "fro"), list(current.values()))))
    for name, layer in cascade.layers.items():
        torch.testing.assert_close(layer.lora_A["default"].weight.grad - loss_grads[name], expected[name], rtol=1e-5, atol=1e-7)
    assert cascade.cycle_metrics()["lorasc/olora_penalty"] > 0


def overlap(cascade):
    """mean |A_k·A_tᵀ| between task a's merged A and the running expert's A, over the layers."""
    values = [(cascade.penalty.earlier[n][0] @ layer.lora_A["default"].weight.detach().T).abs().mean() for n, layer in cascade.layers.items()]
    return torch.stack(values).mean().item()


@pytest.mark.parametrize("norm", ["l1", "fro"])
def test_olora_makes_the_new_experts_a_orthogonal_to_the_earlier_ones(norm):
    """40 steps of task b: the overlap falls 24-44× over seeds 1, 5, 9, 13 (seed 1 here)."""
    parts = {"a": token_batches(6, seed=1), "b": token_batches(40, seed=2)}
    free, penalised = (run_tasks(METHODS["o-lora"].config(base(olora_lambda=lam, olora_norm=norm)), parts, end=False) for lam in (0.0, 10.0))
    assert overlap(penalised) * 10 <= overlap(free), (overlap(penalised), overlap(free))


def test_the_trainer_callback_adds_the_olora_gradient_as_the_plain_loop_does(tmp_path):
    def run(config, step):
        cascade = cascade_for(config)
        for name, batches in PARTS.items():
            cascade.begin_task(name, len(batches))
            optimizer = cascade.optimizer(lr=LR)
            step(cascade, optimizer, cascade.scheduler(optimizer, warmup_steps=1), batches)
        return cascade

    def plain(cascade, optimizer, scheduler, batches):
        optimizer.register_step_pre_hook(lambda *_: cascade.before_optimizer_step())
        train_cascade(cascade, optimizer, batches, scheduler=scheduler)
        cascade.end_task()

    def via_trainer(cascade, optimizer, scheduler, batches):  # the callback ends the task
        trainer_for(cascade, rows(batches), tmp_path, LoRASCCallback(cascade), (optimizer, scheduler), max_steps=len(batches)).train()

    config = METHODS["o-lora"].config(base(olora_lambda=5.0))
    looped, trained = run(config, plain), run(config, via_trainer)
    without = run(METHODS["inc-lora"].config(base()), plain)
    for (name, p), q, r in zip(looped.model.named_parameters(), trained.model.parameters(), without.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    assert any((w - weights(without)[name]).abs().max() > 1e-4 for name, w in weights(looped).items())  # the penalty mattered
    callback = LoRASCCallback(looped)
    assert "lorasc/slow_step" in callback.log_metrics()  # the first log after the merges; the next: the per-step keys only
    assert callback.log_metrics() == {"lorasc/cycle": 2, "lorasc/olora_penalty": looped.penalty.value.item()}


@pytest.mark.parametrize("fields", [{"olora_lambda": 1.0}, {"expert_ema": 0.8}], ids=["o-lora", "ema"])
def test_a_resume_mid_task_two_is_bitwise(fields):
    method = "o-lora" if "olora_lambda" in fields else "ema"
    config = METHODS[method].config(base(**fields, noise_lambda=0.0))
    full = run_tasks(config)

    cascade = run_tasks(config, parts={"a": PARTS["a"]})
    cascade.begin_task("b", 4)
    optimizer = optimizer_for(cascade)
    scheduler = cascade.scheduler(optimizer, warmup_steps=1)
    train_cascade(cascade, optimizer, PARTS["b"][:2], scheduler=scheduler)
    trainable = {n: p.detach().clone() for n, p in cascade.model.named_parameters() if p.requires_grad}
    state = round_trip({"cascade": cascade.state_dict(), "trainable": trainable, "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict()})
    assert state["cascade"]["olora" if method == "o-lora" else "shadow"]

    resumed = cascade_for(config)
    resumed.load_state_dict(state["cascade"])
    resumed.model.load_state_dict(state["trainable"], strict=False)
    optimizer = optimizer_for(resumed)
    scheduler = resumed.scheduler(optimizer, warmup_steps=1)  # before the optimizer's state, which holds the lr it set
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    train_cascade(resumed, optimizer, PARTS["b"][2:], scheduler=scheduler)
    resumed.end_task()
    assert_same_parameters(full, resumed)


@pytest.mark.parametrize("fields,message", [
    ({"olora_lambda": -0.5}, "olora_lambda=-0.5 is not allowed: None (no O-LoRA loss) or a finite float >= 0"),
    ({"olora_lambda": float("inf")}, "olora_lambda=inf is not allowed: None (no O-LoRA loss) or a finite float >= 0"),
    ({"olora_lambda": float("nan")}, "olora_lambda=nan is not allowed"),
    ({"olora_norm": "l2"}, "olora_norm='l2' is not allowed: one of ('l1', 'fro')"),
    ({"expert_ema": 1.0}, "expert_ema=1.0 is not allowed: None (merge the fast expert) or a decay in [0, 1)"),
    ({"expert_ema": -0.1}, "expert_ema=-0.1 is not allowed"), ({"olora_lambda": True}, "olora_lambda=True is not allowed"),
    ({"task_alpha": "linear"}, "task_alpha='linear' is not allowed: one of ('constant', 'inv-sqrt')"),
    ({"task_alpha": "inv-sqrt", "slow_head": True}, "task_alpha='inv-sqrt' is not allowed: 'constant' with slow_head=True"),
    ({"task_boundary": "keep", "noise_lambda": 0.15}, "task_boundary='keep' is not allowed: 'merge' with noise_lambda=0.15"),
    ({"olora_lambda": 0.5, "dora": True}, "olora_lambda=0.5 is not allowed: None with a DoRA expert"),
    ({"expert_ema": 0.9, "dora": True}, "expert_ema=0.9 is not allowed: None with a DoRA expert"),
])
def test_config_refuses_bad_continual_settings_in_one_line(fields, message):
    kind = "dora" if fields.pop("dora", False) else "lora"
    with pytest.raises(ValueError) as error:
        base(kind, **fields)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_method_defaults_apply_only_where_the_user_left_none():
    assert METHODS["o-lora"].config(base()).olora_lambda == 0.5
    assert METHODS["o-lora"].config(base(olora_lambda=2.0)).olora_lambda == 2.0
    assert METHODS["ema"].config(base()).expert_ema == 0.99 and METHODS["ema"].config(base(expert_ema=0.5)).expert_ema == 0.5
    shared = base(olora_lambda=2.0, expert_ema=0.5)  # a settings file shared by several methods
    assert (METHODS["inc-lora"].config(shared).olora_lambda, METHODS["inc-lora"].config(shared).expert_ema) == (None, None)
    assert METHODS["lorasc"].config(shared).olora_lambda == 2.0  # the cascade as configured
    inc = METHODS["inc-lora"].config(base(num_cycles=3))
    assert (inc.num_cycles, inc.cycle_steps, inc.slow_alpha, inc.noise_lambda, inc.task_boundary) == (1, None, 1.0, 0.0, "merge")
    assert METHODS["seq-lora"].config(base()).task_boundary == "keep"


def test_each_method_says_how_it_takes_a_sequence_of_tasks():
    sequences = {name: method.sequence for name, method in METHODS.items()}
    assert sequences["multitask"] == "joint" and sequences["single"] == "separate"
    assert {name for name, s in sequences.items() if s == "sequential"} == set(METHODS) - {"multitask", "single"}
    assert isinstance(METHODS["full"], FullFineTuning)
    with pytest.raises(ValueError, match="sequence='mixed' is not allowed: one of"):
        Method(sequence="mixed")
    for name in ("multitask", "single"):
        assert METHODS[name].config(base()).num_cycles == 1 and METHODS[name].config(base()).noise_lambda == 0.0
