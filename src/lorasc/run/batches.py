"""How examples become batches, and the loss that a batch is scored with (classification and causal LM)."""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from peft import PeftModel

from .chat import rendered, uses_chat_template
from .data_files import Example
from .run_config import RunConfig

IGNORED = -100  # the label of tokens that carry no loss (prompt and padding)


def encode(tokenizer, examples: list[Example], task: str, max_length: int, chat_template: str = "none",
           groups: tuple[int, ...] | None = None) -> dict[str, torch.Tensor]:
    """A batch of examples; a causal LM's rendered as the run's `chat_template` says (chat.py; plain text unless
    given), cut to its last `max_length` tokens. `groups`: the task of each head row (per-task heads, continual/heads.py):
    each example is then scored on its own task's rows only, through a `logit_mask`."""
    if task == "classification":
        batch = tokenizer([e.text for e in examples], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batch["labels"] = torch.tensor([e.label for e in examples])
        if groups is not None:
            rows = torch.tensor(groups)
            batch["logit_mask"] = rows[batch["labels"]][:, None] == rows[None, :]
        return dict(batch)
    # causal LM: the loss and the metric are on the response tokens only
    ids, labels = [], []
    chat = uses_chat_template(tokenizer, chat_template)
    for e in examples:
        prompt, response = rendered(tokenizer, e, chat)
        ids.append((prompt + response)[-max_length:])
        labels.append(([IGNORED] * len(prompt) + response)[-max_length:])
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    return {
        "input_ids": torch.tensor([s + [pad] * (width - len(s)) for s in ids]),
        "attention_mask": torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids]),
        "labels": torch.tensor([l + [IGNORED] * (width - len(l)) for l in labels]),
    }


def batch_at(step: int, train: list[Example], run: RunConfig) -> list[Example]:
    """The global batch of optimizer step `step`: a seeded shuffle per epoch, so any step can be replayed."""
    steps_per_epoch = math.ceil(len(train) / run.batch_size)
    epoch, position = divmod(step, steps_per_epoch)
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(run.seed * 1000 + epoch)).tolist()
    return [train[i] for i in order[position * run.batch_size : (position + 1) * run.batch_size]]


def scored_logits(model, batch: dict[str, torch.Tensor], task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits the loss scores and their labels. A causal LM's logits at position i predict the
    token at i + 1, and only the positions that predict a response token in some row are computed:
    over a long prompt and a large vocabulary, the LM head and the loss would cost more than the adapters."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "logit_mask")}
    if task != "causal-lm":
        logits = model(**inputs).logits
        if "logit_mask" in batch:  # the other tasks' rows get no probability, hence exactly no gradient
            logits = logits.masked_fill(~batch["logit_mask"], float("-inf"))
        return logits, batch["labels"]
    targets = batch["labels"][:, 1:]
    if not accepts_logits_to_keep(model):
        return model(**inputs).logits[:, :-1], targets
    keep = (targets != IGNORED).any(0).nonzero().flatten()
    return model(**inputs, logits_to_keep=keep).logits, targets[:, keep]


def accepts_logits_to_keep(model) -> bool:
    """Whether the causal LM inside `model` (DDP, PEFT or plain) computes logits at chosen positions only."""
    inner = extract_model_from_parallel(model)
    inner = inner.get_base_model() if isinstance(inner, PeftModel) else inner
    return "logits_to_keep" in inspect.signature(inner.forward).parameters


def count_items(labels: torch.Tensor, task: str) -> int:
    """What the loss averages over: examples, or a causal LM's response tokens."""
    scored = labels[:, 1:] if task == "causal-lm" else labels
    return int((scored != IGNORED).sum())


def summed_loss(model, batch: dict[str, torch.Tensor], task: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The cross-entropy summed over the batch's items (not averaged, so that shares of a batch
    add up to the whole), with the scored logits and their labels."""
    logits, labels = scored_logits(model, batch, task)
    loss = F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORED, reduction="sum")
    return loss, logits, labels


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}
