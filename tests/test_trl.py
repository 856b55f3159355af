"""LoRASC in TRL's SFTTrainer (`callbacks=[LoRASCCallback(cascade)]`) on the tiny Llama, with prompt–completion
and conversational (`messages`) data; docs/trl.md is the user's page."""

import copy
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from torch.utils.data import SequentialSampler
from transformers import TrainerCallback
from trl import SFTConfig, SFTTrainer

from conftest import tiny_llama, train_cascade, word_tokenizer
from lorasc import LoRASC, LoRASCCallback, LoRASCConfig, LoRASCTrainerMixin

STEPS, PER_CYCLE, BATCH = 6, 2, 4
CHAT_TEMPLATE = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant {% endif %}"


class InOrderSFTTrainer(SFTTrainer):
    """The plain loop walks the batches in order; so does this trainer."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


class BackboneRecorder(TrainerCallback):
    """After each step (and the cascade's step, whose callback comes first): one adapted backbone weight and its expert's B."""

    def __init__(self, cascade):
        self.layer, self.seen = next(iter(cascade.layers.values())), []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append((self.layer.get_base_layer().weight.detach().clone(), self.layer.lora_B["default"].weight.detach().clone()))


def words(gen, n):
    return " ".join(f"w{i}" for i in torch.randint(3, 96, (n,), generator=gen).tolist())


def prompt_completion(n=STEPS * BATCH, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return Dataset.from_list([{"prompt": words(gen, 6), "completion": " " + words(gen, 4)} for _ in range(n)])


def conversations(n=16, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return Dataset.from_list([{"messages": [{"role": "user", "content": words(gen, 5)}, {"role": "assistant", "content": words(gen, 3)}]}
                              for _ in range(n)])


def chat_tokenizer():
    tokenizer = word_tokenizer()
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def cascade_for(model, total_steps=None):
    expert = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    cascade = LoRASC(model, LoRASCConfig(slow_alpha=0.5, noise_lambda=0.15, cycle_steps=PER_CYCLE, rewarmup_steps=1, expert=expert))
    if total_steps is None:
        return cascade
    cascade.begin(total_steps=total_steps)
    optimizer = cascade.optimizer(lr=5e-3)
    return cascade, optimizer, cascade.scheduler(optimizer, warmup_steps=1)


def sft_config(tmp_path, **fields):
    return SFTConfig(**{"output_dir": str(tmp_path), "per_device_train_batch_size": BATCH, "max_length": 32, "save_strategy": "no",
                        "report_to": "none", "logging_steps": 1, "use_cpu": True, "bf16": False, "seed": 0, **fields})


def test_sft_trainer_runs_the_planned_cascade_and_equals_the_plain_loop(tmp_path):
    """Prompt–completion data: TRL masks the prompt and divides the summed token loss by the batch's completion
    tokens, which is the model's own mean loss on the same batch, so the plain loop on TRL's collated batches
    reaches the same weights (to float rounding: TRL sums per-token log-probabilities where the model takes a
    mean of cross-entropy). `bf16=False`: SFTConfig defaults to bf16 autocast, which the float32 plain loop does not
    do (about 1% apart after one step). With gradient accumulation TRL divides by the tokens of all micro-batches, and the
    two cannot be equal micro-batch by micro-batch; this test uses none."""
    model = tiny_llama()
    viatrl, optimizer, scheduler = cascade_for(copy.deepcopy(model), total_steps=STEPS)
    recorder = BackboneRecorder(viatrl)
    trainer = InOrderSFTTrainer(model=viatrl.model, args=sft_config(tmp_path, max_steps=STEPS, max_grad_norm=0.0),
                                train_dataset=prompt_completion(), processing_class=word_tokenizer(),
                                optimizers=(optimizer, scheduler), callbacks=[LoRASCCallback(viatrl), recorder])
    trainer.train()
    assert viatrl.ends == [2, 4, 6] and viatrl.cycle == 3 and not viatrl.in_cycle
    weights = [model_weight for model_weight, _ in recorder.seen]
    changed = [step for step in range(2, STEPS + 1) if not torch.equal(weights[step - 1], weights[step - 2])]
    assert changed == [2, 4, 6] and not torch.equal(weights[0], model.model.layers[0].self_attn.q_proj.weight)  # merged at each boundary
    assert all(not expert.any() for _, expert in (recorder.seen[i - 1] for i in viatrl.ends))  # a fresh (zero) expert after each merge
    assert [(e["step"], e["lorasc/experts_merged"]) for e in trainer.state.log_history if "lorasc/slow_step" in e] == [(2, 1), (4, 2), (6, 3)]

    batches = [{key: batch[key] for key in ("input_ids", "attention_mask", "labels")} for batch in trainer.get_train_dataloader()]
    assert all((batch["labels"] == -100).any() for batch in batches)  # the prompts are masked
    plain, optimizer, scheduler = cascade_for(copy.deepcopy(model), total_steps=STEPS)
    plain.model.train()
    train_cascade(plain, optimizer, batches, before_step=scheduler.step)
    trained = plain.model.state_dict()
    differing = {name: (tensor - trained[name]).abs().max().item() for name, tensor in viatrl.model.state_dict().items()
                 if not torch.allclose(tensor, trained[name], atol=1e-6, rtol=1e-5)}
    assert not differing, f"{len(differing)} tensors differ (largest absolute difference of each): {differing}"
    moved = (viatrl.model.state_dict()["base_model.model.model.layers.1.self_attn.q_proj.base_layer.weight"] - model.model.layers[1].self_attn.q_proj.weight).abs().max()
    assert moved > 1e-3  # the tolerance above is far below what training changed


class CascadeSFTTrainer(LoRASCTrainerMixin, SFTTrainer):
    pass


def test_sft_trainer_on_conversations_reports_the_cycles_to_tensorboard(tmp_path):
    """`messages` rendered by the tokenizer's chat template; no `begin`: the cycles planned from TRL's own step count;
    with LoRASCTrainerMixin the cycle tags reach the `report_to` tracker (under transformers' `train/` prefix)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cascade = cascade_for(tiny_llama())
    trainer = CascadeSFTTrainer(model=cascade.model, args=sft_config(tmp_path, num_train_epochs=2, report_to="tensorboard"),
                                train_dataset=conversations(), processing_class=chat_tokenizer(), callbacks=[LoRASCCallback(cascade)])
    first = trainer.train_dataset[0]["input_ids"]
    assert first[0] == chat_tokenizer().convert_tokens_to_ids("w0") and len(first) == 1 + 5 + 1 + 3 + 1  # user w… assistant w… eos
    trainer.train()
    assert cascade.ends == [2, 4, 6, 8] and cascade.cycle == 4 and not cascade.in_cycle  # 16 examples / 4 × 2 epochs
    events = EventAccumulator(str(next(Path(tmp_path).rglob("events.out.tfevents.*")).parent))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/lorasc/experts_merged")] == [(2, 1), (4, 2), (6, 3), (8, 4)]
    assert [e.value for e in events.Scalars("train/lorasc/cycle")] == [1, 1, 2, 2, 3, 3, 4, 4, 4]  # and the run's summary log
