"""Model cards: the README.md of every export folder, as the Hugging Face Hub and PEFT users read it.

A card is built from what the folder holds (adapter_config.json and compression.json for an adapter,
config.json for a dense model, the tokenizer where one was saved), from where the folder came from (an
`Origin`: the base model and the cascade's settings) and, when known, the run's figures. Its prose
is in the Markdown templates of lorasc/templates/card; this module only chooses and fills them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from string import Template

import yaml

# PEFT's task type: the Auto class suffix (transformers' AutoModelFor…, PEFT's AutoPeftModelFor…) and the Hub's pipeline tag
TASKS = {
    "SEQ_CLS": ("SequenceClassification", "text-classification"),
    "TOKEN_CLS": ("TokenClassification", "token-classification"),
    "CAUSAL_LM": ("CausalLM", "text-generation"),
    "SEQ_2_SEQ_LM": ("Seq2SeqLM", "text2text-generation"),
    "QUESTION_ANS": ("QuestionAnswering", "question-answering"),
}
LABELLED = ("SEQ_CLS", "TOKEN_CLS")  # tasks whose head has classes: the card passes them to the loader
VLLM_RANKS = (16, 32, 64, 128, 256, 320, 512)  # the --max-lora-rank values vLLM accepts above its default (16)
LABEL_ARGUMENTS = ", num_labels=len(id2label), id2label=id2label, label2id=label2id"
QUANTIZATION_ARGUMENTS = ", quantization_config=quantization, device_map=\"auto\""


@dataclass(frozen=True)
class Origin:
    """Where an export came from: what its card says besides what the folder itself holds."""

    base_model: str | None  # the path or Hub id of the model the training started from
    method: str = "lorasc"
    cycles: int | None = None  # None: no cascade (full fine-tuning)
    slow_alpha: float | None = None
    noise_lambda: float | None = None
    expert_rank: int | None = None
    id2label: dict[int, str] | None = None  # a classifier's classes, by output index
    quantization: dict | None = None  # the BitsAndBytesConfig arguments of a quantized base (quantized.load_arguments)


def template(name: str) -> Template:
    return Template(resources.files("lorasc").joinpath("templates", "card", f"{name}.md").read_text(encoding="utf-8"))


def fill(template_name: str, **fields) -> str:
    return template(template_name).substitute(fields).rstrip("\n")


def write_card(folder: str | Path, origin: Origin, figures: dict[str, dict[str, float]] | None = None, name: str | None = None) -> Path:
    """Write `folder`/README.md for the export in `folder`; `figures` maps a split ("test", "ood") to its
    metrics; `name` is the folder's name as users see it (default: its own), which the loading code uses."""
    figures = figures or {}
    for split, metrics in figures.items():
        if not isinstance(metrics, dict) or not all(isinstance(value, (int, float)) for value in metrics.values()):
            raise ValueError(f"figures[{split!r}]={metrics!r} is not allowed: a dict of metric names to numbers, e.g. {{'accuracy': 0.91}}")
    folder = Path(folder)
    path = folder / "README.md"
    path.write_text(card(folder, origin, figures, name or folder.name), encoding="utf-8")
    return path


def card(folder: Path, origin: Origin, figures: dict, name: str) -> str:
    adapter = _read_json(folder / "adapter_config.json")
    task = adapter.get("task_type") if adapter else dense_task(_read_json(folder / "config.json"))
    rank = adapter.get("r") if adapter else None
    text = fill(
        "card",
        front_matter=front_matter(origin, task, adapter is not None),
        name=name,
        what=what(folder, adapter, origin),
        origin=training(origin, rank),
        labels=fill("labels", labels=_label_list(origin.id2label)) if origin.id2label and task in LABELLED else "",
        figures=results(figures) if any(figures.values()) else "",
        loading=loading(folder, origin, task, adapter is not None, name),
        serving=serving(origin, task, rank, name),
    )
    return re.sub(r"\n{3,}", "\n\n", text).rstrip("\n") + "\n"  # an empty section leaves no run of blank lines


def dense_task(config: dict | None) -> str | None:
    """The PEFT task type of a transformers model folder, from its architecture's name."""
    architecture = ((config or {}).get("architectures") or [""])[0]
    return next((task for task, (suffix, _) in TASKS.items() if architecture.endswith(f"For{suffix}")), None)


def front_matter(origin: Origin, task: str | None, adapter: bool) -> str:
    """The YAML metadata the Hub reads from a card."""
    meta = {"library_name": "peft" if adapter else "transformers"}
    if origin.base_model:
        meta["base_model"] = origin.base_model
    meta["tags"] = sorted({"lorasc", origin.method, *(["lora"] if adapter else [])})
    if task in TASKS:
        meta["pipeline_tag"] = TASKS[task][1]
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def what(folder: Path, adapter: dict | None, origin: Origin) -> str:
    if adapter is None:
        return fill("dense")
    quantized = fill("quantized", kind=quantization_kind(origin.quantization)) if origin.quantization else ""
    compression = _read_json(folder / "compression.json")
    if compression is None:
        return "\n\n".join(filter(None, (fill("stacked", rank=adapter["r"]), quantized)))
    errors = list(compression["relative_error"].values())
    return fill("compressed", rank=adapter["r"], mean_error=_number(sum(errors) / len(errors)), max_error=_number(max(errors)), layers=len(errors))


def quantization_kind(arguments: dict) -> str:
    return "8-bit" if arguments.get("load_in_8bit") else f"4-bit {arguments.get('bnb_4bit_quant_type', 'fp4')}"


def training(origin: Origin, rank: int | None) -> str:
    base = origin.base_model or "not recorded"
    if origin.cycles is None:
        return fill("full", method=origin.method, base_model=base)
    return fill("cascade", method=origin.method, base_model=base, cycles=origin.cycles, slow_alpha=origin.slow_alpha,
                noise_lambda=origin.noise_lambda, expert_rank=origin.expert_rank, rank="full (dense weights)" if rank is None else rank)


def results(figures: dict[str, dict[str, float]]) -> str:
    splits = {split: metrics for split, metrics in figures.items() if metrics}
    names = list(dict.fromkeys(name for metrics in splits.values() for name in metrics))
    rows = [["split", *names], ["---"] * (len(names) + 1)]
    rows += [[split, *(_number(metrics[n]) if n in metrics else "" for n in names)] for split, metrics in splits.items()]
    return fill("figures", table="\n".join(f"| {' | '.join(row)} |" for row in rows))


def loading(folder: Path, origin: Origin, task: str | None, adapter: bool, name: str) -> str:
    """The lines that load the folder, run from the folder that holds it."""
    suffix = f"For{TASKS[task][0]}" if task in TASKS else ""
    has_tokenizer = (folder / "tokenizer_config.json").is_file()
    tokenizer_source = "path" if has_tokenizer or not origin.base_model else json.dumps(origin.base_model)
    if not adapter:
        return fill("load-model", auto_class=f"AutoModel{suffix}", path=name, tokenizer_source=tokenizer_source)
    labelled = task in LABELLED and bool(origin.id2label)
    quantized = origin.quantization is not None
    return fill("load-adapter", auto_class=f"AutoPeftModel{suffix}", path=name, tokenizer_source=tokenizer_source,
                base_model=origin.base_model, label_lines=fill("label-lines", id2label=repr(_by_index(origin.id2label))) if labelled else "",
                label_arguments=LABEL_ARGUMENTS if labelled else "",
                quantization_lines=fill("quantization-lines", arguments=", ".join(f"{k}={v!r}" for k, v in origin.quantization.items())) + "\n" if quantized else "",
                quantization_arguments=QUANTIZATION_ARGUMENTS if quantized else "",
                merge_line=fill("quantized-merge-line" if quantized else "merge-line"))


def serving(origin: Origin, task: str | None, rank: int | None, name: str) -> str:
    """vLLM's flag for a causal LM's adapter above its default rank limit."""
    if task != "CAUSAL_LM" or rank is None or rank <= VLLM_RANKS[0] or rank > VLLM_RANKS[-1]:
        return ""
    limit = next(r for r in VLLM_RANKS if r >= rank)
    return fill("vllm", rank=rank, max_lora_rank=limit, base_model=origin.base_model or "BASE", path=name)


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _number(value: float) -> str:
    return f"{value:.4g}"


def _by_index(id2label: dict) -> dict[int, str]:
    """`id2label` with integer keys in order (JSON makes them strings)."""
    return dict(sorted((int(i), label) for i, label in id2label.items()))


def _label_list(id2label: dict) -> str:
    return ", ".join(f"{i} `{label}`" for i, label in _by_index(id2label).items())
