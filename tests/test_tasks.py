"""Tasks as cycle boundaries (tasks.py): `begin_task` plans a task's cycles and starts the first, `end_task`
merges the running expert and starts nothing, so that between tasks the backbone is W0 + S, clean."""

import io
import re

import pytest
import torch
from conftest import expert, tiny_llama, token_batches, train_cascade
from torch.utils.data import SequentialSampler
from transformers import Trainer, TrainingArguments, default_data_collator

from lorasc import LoRASC, LoRASCCallback, LoRASCConfig
from lorasc.schedule import jagged_lr_lambda

ALPHA, LR = 0.5, 1e-2


def make(kind="lora", **fields):
    fields = {"slow_alpha": ALPHA, "noise_lambda": 0.15, **fields}
    return LoRASC(tiny_llama(), LoRASCConfig(**fields, expert=expert(kind, target_modules=["q_proj", "v_proj"])))


def plain_run(batches, **fields):
    """The single-task path: begin, the plain loop, finish."""
    cascade = make(**fields)
    cascade.begin(len(batches))
    train_cascade(cascade, cascade.optimizer(lr=LR), batches)
    cascade.finish()
    return cascade


def assert_same_parameters(left, right):
    for (name, p), q in zip(left.model.named_parameters(), right.model.parameters()):
        assert torch.equal(p, q), name


def weights(cascade):
    return {name: layer.get_base_layer().weight.detach().clone() for name, layer in cascade.layers.items()}


def recorder(cascade, experts):
    """Records the running expert's α·s·B·A per layer: pass as train_cascade's `before_step`, and call before an early end_task."""

    def record(at_boundary=True):
        if not at_boundary or cascade.steps + 1 in cascade.ends:
            experts.append({name: ALPHA * layer.scaling["default"] * layer.lora_B["default"].weight.detach() @ layer.lora_A["default"].weight.detach()
                            for name, layer in cascade.layers.items()})

    return record


def assert_merged(cascade, pristine, experts=None):
    """The backbone is W0 + S from the slow state's history and (when given) W0 + Σ α·s·B·A of the recorded
    experts, to 1e-6 relative: no noise."""
    for name, weight in weights(cascade).items():
        references = [pristine[name] + sum(b @ a for a, b in (cycle[name] for cycle in cascade.slow.history))]
        if experts is not None:
            references.append(pristine[name] + sum(e[name] for e in experts))
        for reference in references:
            assert (weight - reference).norm() <= 1e-6 * reference.norm(), name
    assert not cascade.in_cycle
    assert all(torch.count_nonzero(layer.lora_B["default"].weight) == 0 for layer in cascade.layers.values())


def task_records(cascade):
    return [(task.name, task.first_cycle, task.last_cycle) for task in cascade.tasks]


def round_trip(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("kind", ["lora", "rslora"])
def test_end_task_leaves_exactly_the_merged_weights(kind):
    cascade = make(kind)
    pristine, experts = weights(cascade), []
    record = recorder(cascade, experts)
    optimizer = cascade.optimizer(lr=LR)
    batches = token_batches(7)
    assert cascade.begin_task("a", 4, num_cycles=2) == [2, 4]
    train_cascade(cascade, optimizer, batches[:4], before_step=record)
    assert not cascade.in_cycle and cascade.cycle == 2  # the task's last boundary started no cycle
    cascade.end_task()
    assert len(experts) == 2
    assert_merged(cascade, pristine, experts)

    assert cascade.begin_task("b", 6, cycle_steps=2, optimizer=optimizer) == [6, 8, 10]
    train_cascade(cascade, optimizer, batches[4:], before_step=record)  # 3 of its 6 steps: cycle 4 is running, noise on
    assert cascade.in_cycle and cascade.cycle == 4
    record(at_boundary=False)
    cascade.end_task()  # ended early: the rest of its plan is dropped
    assert_merged(cascade, pristine, experts)
    assert cascade.ends == [2, 4, 6, 7] and task_records(cascade) == [("a", 1, 2), ("b", 3, 4)]


def run_two_tasks(batches, stop_at=None, state=None):
    """Task a (4 steps, 2 cycles), then task b (6 steps, 3 cycles); with `stop_at`, the state after that many
    steps of task b; with `state`, resumed from it on a fresh cascade."""
    cascade = make()
    optimizer = cascade.optimizer(lr=LR)
    if state is None:
        cascade.begin_task("a", 4, num_cycles=2)
        train_cascade(cascade, optimizer, batches[:4])
        cascade.end_task()
        cascade.begin_task("b", 6, cycle_steps=2, optimizer=optimizer)
        done = 0
    else:
        cascade.load_state_dict(state["cascade"])
        cascade.model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        done = cascade.steps - 4
    if stop_at is not None:
        train_cascade(cascade, optimizer, batches[4 : 4 + stop_at])
        trainable = {n: p.detach().clone() for n, p in cascade.model.named_parameters() if p.requires_grad}
        return round_trip({"cascade": cascade.state_dict(), "trainable": trainable, "optimizer": optimizer.state_dict()})
    train_cascade(cascade, optimizer, batches[4 + done :])
    cascade.end_task()
    return cascade


def test_two_tasks_are_recorded_and_a_resume_mid_task_two_is_bitwise():
    batches = token_batches(10)
    full = run_two_tasks(batches)
    assert task_records(full) == [("a", 1, 2), ("b", 3, 5)] and full.ends == [2, 4, 6, 8, 10]
    assert full.state_dict()["tasks"] == [{"name": "a", "first_cycle": 1, "start_step": 0, "last_cycle": 2},
                                          {"name": "b", "first_cycle": 3, "start_step": 4, "last_cycle": 5}]

    saved = run_two_tasks(batches, stop_at=3)
    assert saved["cascade"]["in_cycle"] and saved["cascade"]["tasks"][-1]["last_cycle"] is None  # mid-cycle 4, noise on
    resumed = run_two_tasks(batches, state=saved)
    assert task_records(resumed) == task_records(full)
    assert_same_parameters(full, resumed)


def test_tasks_cut_like_a_plain_run_give_its_weights_bitwise():
    """A task boundary is a cycle boundary: two tasks of two 2-step cycles are a plain run of four."""
    batches = token_batches(8)
    plain = plain_run(batches, cycle_steps=2)

    tasks = make(cycle_steps=2)
    optimizer = tasks.optimizer(lr=LR)
    for name, part in (("a", batches[:4]), ("b", batches[4:])):
        tasks.begin_task(name, len(part), optimizer=optimizer)
        train_cascade(tasks, optimizer, part)
        tasks.end_task()
    assert tasks.ends == plain.ends == [2, 4, 6, 8] and tasks.cycle == plain.cycle == 4
    assert_same_parameters(plain, tasks)


def test_one_task_is_begin_and_finish_bitwise():
    batches = token_batches(6)
    plain = plain_run(batches, num_cycles=3)

    task = make(num_cycles=3)
    task.begin_task("only", 6)
    train_cascade(task, task.optimizer(lr=LR), batches)
    task.end_task()
    assert_same_parameters(plain, task)
    state = task.state_dict()
    assert state.pop("tasks") == [{"name": "only", "first_cycle": 1, "start_step": 0, "last_cycle": 3}]
    assert repr(state) == repr({k: v for k, v in plain.state_dict().items() if k != "tasks"})


def test_cycle_metrics_across_a_task_boundary():
    cascade = make()
    optimizer = cascade.optimizer(lr=LR)
    cascade.begin_task("a", 2, num_cycles=1)
    train_cascade(cascade, optimizer, token_batches(2))
    cascade.end_task()
    assert cascade.cycle_metrics() == {"lorasc/cycle": 1, "lorasc/experts_merged": 1, "lorasc/slow_step": cascade.slow_step}
    cascade.begin_task("b", 2, num_cycles=1, optimizer=optimizer)
    assert cascade.cycle_metrics()["lorasc/cycle"] == 1 and cascade.cycle_metrics()["lorasc/experts_merged"] == 1  # no step of b yet
    train_cascade(cascade, optimizer, token_batches(1))
    assert cascade.cycle_metrics()["lorasc/cycle"] == 2 and cascade.cycle_metrics()["lorasc/experts_merged"] == 1


def test_the_schedule_restarts_at_each_task():
    cascade = make(rewarmup_steps=1)
    optimizer = cascade.optimizer(lr=LR)
    cascade.begin_task("a", 6, num_cycles=3)
    train_cascade(cascade, optimizer, token_batches(3))
    cascade.end_task()
    cascade.begin_task("b", 8, cycle_steps=3, optimizer=optimizer)
    expected = jagged_lr_lambda(8, 2, [3, 6, 8], 1)
    scheduler = cascade.scheduler(optimizer, warmup_steps=2)
    assert [scheduler.lr_lambdas[0](step) for step in range(8)] == [expected(step) for step in range(8)]


def test_tasks_refuse_misuse_and_change_nothing():
    cascade = make()
    with pytest.raises(RuntimeError, match="no task is running"):
        cascade.end_task()
    cascade.begin_task("a", 4, num_cycles=2)
    with pytest.raises(RuntimeError, match="cycle 1 is still running"):
        cascade.begin_task("b", 4)
    train_cascade(cascade, cascade.optimizer(lr=LR), token_batches(4))
    with pytest.raises(RuntimeError, match="task 'a' is still running; call end_task"):
        cascade.begin_task("b", 4, num_cycles=2)
    cascade.end_task()
    before = repr(cascade.state_dict())
    refusals = {("a", 4, 2, None): "name='a' is not allowed: a name no earlier task has (the tasks so far: ['a'])",
                ("b", 4, 2, 2): "cycle_steps=2 is not allowed: None when num_cycles is set",
                ("b", 4, 5, None): "num_cycles=5 is not allowed: at most the run's 4 optimizer steps",
                ("b", 0, None, None): "total_steps=0 is not allowed"}
    for (name, steps, num_cycles, cycle_steps), message in refusals.items():
        with pytest.raises(ValueError, match=re.escape(message)):
            cascade.begin_task(name, steps, num_cycles=num_cycles, cycle_steps=cycle_steps)
        assert repr(cascade.state_dict()) == before


def test_a_state_without_tasks_still_loads():
    cascade = make(num_cycles=2)
    cascade.begin(4)
    train_cascade(cascade, cascade.optimizer(lr=LR), token_batches(3))
    state = cascade.state_dict()
    del state["tasks"]  # as written before tasks
    resumed = make(num_cycles=2)
    resumed.load_state_dict(state)
    assert len(resumed.tasks) == 0 and resumed.cycle == 2 and resumed.in_cycle


# ---- the Trainer: one train() per task ---------------------------------------------------------
class InOrderTrainer(Trainer):
    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def trainer_for(cascade, dataset, tmp_path, callback, optimizers=(None, None), **args):
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_grad_norm=0.0, report_to="none",
                             save_strategy="no", logging_strategy="no", use_cpu=True, seed=0, **args)
    return InOrderTrainer(model=cascade.model, args=args, train_dataset=dataset, data_collator=default_data_collator,
                          optimizers=optimizers, callbacks=[callback])


def rows(batches):
    return [{key: value[i] for key, value in batch.items()} for batch in batches for i in range(len(batch["input_ids"]))]


def test_trainer_callback_plans_and_ends_one_task_per_train_call(tmp_path):
    cascade = make()
    callback = LoRASCCallback(cascade, tasks=["a", "b"])
    pristine = weights(cascade)
    trainer_for(cascade, rows(token_batches(2, seed=1)), tmp_path, callback, num_train_epochs=2).train()  # 2 steps per epoch
    assert cascade.ends == [2, 4] and task_records(cascade) == [("a", 1, 2)]
    assert_merged(cascade, pristine)
    trainer_for(cascade, rows(token_batches(3, seed=2)), tmp_path, callback, num_train_epochs=2).train()  # 3 steps per epoch
    assert cascade.ends == [2, 4, 7, 10] and task_records(cascade) == [("a", 1, 2), ("b", 3, 4)]
    assert_merged(cascade, pristine)
    with pytest.raises(RuntimeError, match="this train\\(\\) has no task"):
        trainer_for(cascade, rows(token_batches(1)), tmp_path, callback, max_steps=1).train()


def test_trainer_tasks_and_the_plain_loop_give_the_same_weights(tmp_path):
    parts = {"a": token_batches(4, seed=1), "b": token_batches(6, seed=2)}

    def run(step):
        cascade = make(cycle_steps=2, rewarmup_steps=1)
        optimizer = cascade.optimizer(lr=LR)
        for name, batches in parts.items():
            cascade.begin_task(name, len(batches), optimizer=optimizer)
            step(cascade, optimizer, cascade.scheduler(optimizer, warmup_steps=1), batches)
        return cascade

    def plain(cascade, optimizer, scheduler, batches):
        train_cascade(cascade, optimizer, batches, scheduler=scheduler)
        cascade.end_task()

    def via_trainer(cascade, optimizer, scheduler, batches):  # the callback ends the task
        trainer_for(cascade, rows(batches), tmp_path, LoRASCCallback(cascade), (optimizer, scheduler), max_steps=len(batches)).train()

    looped, trained = run(plain), run(via_trainer)
    assert task_records(trained) == task_records(looped) == [("a", 1, 2), ("b", 3, 5)]
    assert trained.ends == looped.ends == [2, 4, 6, 8, 10] and not trained.in_cycle
    for (name, p), q in zip(looped.model.named_parameters(), trained.model.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5, msg=name)
    pristine = weights(make())
    assert all(not torch.equal(weight, pristine[name]) for name, weight in weights(trained).items())
