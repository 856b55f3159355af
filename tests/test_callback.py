import copy

import pytest
import torch
from peft import LoraConfig
from torch.utils.data import DataLoader, SequentialSampler
from transformers import Trainer, TrainingArguments, default_data_collator

from lorasc import LoRASC, LoRASCCallback, LoRASCConfig, LoRASCTrainerMixin

pytestmark = pytest.mark.slow
STEPS, PER_CYCLE, LR = 6, 2, 5e-3


class InOrderTrainer(Trainer):
    """The plain loop below walks the data in order; so does this Trainer."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def cascade_for(model):
    expert = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    cascade = LoRASC(model, LoRASCConfig(slow_alpha=0.5, noise_lambda=0.15, cycle_steps=PER_CYCLE, rewarmup_steps=1, expert=expert))
    cascade.begin(total_steps=STEPS)
    optimizer = cascade.optimizer(lr=LR)
    return cascade, optimizer, cascade.scheduler(optimizer, warmup_steps=2)


@pytest.fixture(scope="module")
def dataset(tokenizer, tweets):
    enc = tokenizer([e.text for e in tweets.train[: STEPS * 8]], padding="max_length", truncation=True, max_length=32)
    return [{**{k: torch.tensor(v[i]) for k, v in enc.items()}, "labels": torch.tensor(e.label)} for i, e in enumerate(tweets.train[: STEPS * 8])]


def test_trainer_callback_and_plain_loop_give_the_same_weights(minilm, dataset, tmp_path):
    plain, optimizer, scheduler = cascade_for(copy.deepcopy(minilm))
    plain.model.train()
    for batch in DataLoader(dataset, batch_size=8, collate_fn=default_data_collator):
        plain.model(**batch).loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        plain.step(optimizer)
    assert plain.cycle == STEPS // PER_CYCLE and not plain.in_cycle

    viatrainer, optimizer, scheduler = cascade_for(copy.deepcopy(minilm))
    args = TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=STEPS, max_grad_norm=0.0,
        report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True, seed=0,
    )
    trainer = InOrderTrainer(model=viatrainer.model, args=args, train_dataset=dataset, data_collator=default_data_collator,
                             optimizers=(optimizer, scheduler), callbacks=[LoRASCCallback(viatrainer)])
    trainer.train()
    assert viatrainer.cycle == plain.cycle and not viatrainer.in_cycle

    trained = plain.model.state_dict()
    differing = {name: (tensor - trained[name]).abs().max().item() for name, tensor in viatrainer.model.state_dict().items()
                 if not torch.allclose(tensor, trained[name], atol=1e-6, rtol=1e-5)}
    assert not differing, f"{len(differing)} tensors differ (largest absolute difference of each): {differing}"
    assert not torch.equal(trained["base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"],
                           minilm.state_dict()["bert.encoder.layer.0.attention.self.query.weight"])


def test_callback_plans_one_cycle_per_epoch_without_begin(minilm, dataset, tmp_path):
    cascade = LoRASC(minilm, LoRASCConfig(expert=LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS")))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=2,
                             report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True)
    Trainer(model=cascade.model, args=args, train_dataset=dataset[:32], callbacks=[LoRASCCallback(cascade)]).train()
    assert cascade.ends == [2, 4] and cascade.cycle == 2 and not cascade.in_cycle


def test_callback_adds_the_cycle_metrics_to_the_trainers_logs(minilm, dataset, tmp_path):
    cascade, optimizer, scheduler = cascade_for(minilm)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=STEPS, logging_steps=1,
                             report_to="none", save_strategy="no", use_cpu=True, seed=0)
    trainer = Trainer(model=cascade.model, args=args, train_dataset=dataset, optimizers=(optimizer, scheduler), callbacks=[LoRASCCallback(cascade)])
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["lorasc/cycle"] for entry in steps] == [1, 1, 2, 2, 3, 3]  # the cycle each step trained in
    merges = [entry for entry in steps if "lorasc/slow_step" in entry]
    assert [(entry["step"], entry["lorasc/experts_merged"]) for entry in merges] == [(2, 1), (4, 2), (6, 3)]
    assert all(0 < entry["lorasc/slow_step"] < 1 for entry in merges) and merges[-1]["lorasc/slow_step"] == cascade.slow_step


class CascadeTrainer(LoRASCTrainerMixin, Trainer):
    pass


def test_trainer_mixin_reports_the_cycle_metrics_to_tensorboard(minilm, dataset, tmp_path):
    """transformers calls the report_to callbacks before the user's: only through the mixin's `log` do they see the keys."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cascade, optimizer, scheduler = cascade_for(minilm)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=STEPS, logging_steps=1,
                             report_to="tensorboard", save_strategy="no", use_cpu=True, seed=0)
    trainer = CascadeTrainer(model=cascade.model, args=args, train_dataset=dataset, optimizers=(optimizer, scheduler),
                             callbacks=[LoRASCCallback(cascade)])
    trainer.train()
    events = EventAccumulator(str(next(tmp_path.rglob("events.out.tfevents.*")).parent))
    events.Reload()
    merged = events.Scalars("train/lorasc/experts_merged")  # transformers' TensorBoard callback prefixes training logs with train/
    assert [(e.step, e.value) for e in merged] == [(2, 1), (4, 2), (6, 3)]
    assert [e.value for e in events.Scalars("train/lorasc/slow_step")] == pytest.approx(
        [entry["lorasc/slow_step"] for entry in trainer.state.log_history if "lorasc/slow_step" in entry], rel=1e-6)
    assert [e.value for e in events.Scalars("train/lorasc/cycle")][:STEPS] == [1, 1, 2, 2, 3, 3]
