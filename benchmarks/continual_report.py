"""The "Continual learning" section of BENCHMARKS.md: results/continual-<setting>.jsonl rendered through
templates/continual.md into results/continual.md (continual-quick.md for --quick). The prose lives in the
template; this module only computes the numbers, formats them and picks fragments."""

from __future__ import annotations

import statistics
from pathlib import Path

from .continual import FULL, MULTITASK, OLORA4, REFERENCE, Setting, chosen_lr, results_path
from .report import fill, fragments, machines
from .runner import read_results
from .stats import paired
from .tables import signed

TEMPLATE = "continual.md"
METRICS = ("AA", "AIA", "BWT", "F", "FWT", "macro-F1 AA")
NEAR_FLOOR = 0.02  # macro-F1 AA within this of the majority class's: the method learned little beyond the label shares
OURS, RIVALS = "lorasc", ("inc-lora", "seq-lora")
ANCHORS = {  # published AA: O-LoRA's paper (T5-large, standard CL benchmark); SLAO's table (Llama-2-7B-chat)
    "seq-lora": (43.7, 76.0), "inc-lora": (66.4, 77.0), "o-lora": (75.8, 77.2), "InfLoRA": (None, 79.6), "SLAO": (None, 80.4),
    MULTITASK: (80.0, 80.9)}
ANCHORED = ("InfLoRA", "SLAO")  # published only: no run of ours


# ---- numbers --------------------------------------------------------------------------------------------
def runs_of(results: list[dict], group: str, label: str, lr: float | None) -> dict[int, dict]:
    return {r["seed"]: r for r in results if "error" not in r and r["group"] == group and r["label"] == label and r["lr"] == lr}


def forward_transfer(r: dict, reference: dict[str, float]) -> float | None:
    """FWT = (1/(T−1)) Σ_{i≥2} (R[i][i] − ã_i), ã_i the task's accuracy trained alone (the `single` run)."""
    tasks, R = r["continual"]["tasks"], r["R"]
    if r["method"] == REFERENCE or len(R) != len(tasks) or len(tasks) < 2 or any(name not in reference for name in tasks):
        return None
    if any(R[i][i] is None for i in range(len(tasks))):  # multitask: evaluated once, at the end
        return None
    return statistics.fmean(R[i][i] - reference[name] for i, name in enumerate(tasks) if i > 0)


def values(r: dict, reference: dict[str, float]) -> dict[str, float | None]:
    accuracy = r["continual"]["accuracy"]
    return {**{m: accuracy.get(m) for m in METRICS[:4]}, "FWT": forward_transfer(r, reference),
            "macro-F1 AA": r["continual"].get("macro_f1", {}).get("AA")}


def mean_std(xs: list[float]) -> str:
    if not xs:
        return "—"
    if len(xs) == 1:
        return f"{100 * xs[0]:.1f}"
    return f"{100 * statistics.fmean(xs):.1f} ± {100 * statistics.stdev(xs):.1f}"


def step_ratio(runs: dict[int, dict], baseline: dict[int, dict]) -> str:
    """The median over shared seeds of seconds per step over seq-lora's."""
    shared = [s for s in sorted(runs.keys() & baseline.keys()) if runs[s]["seconds_per_step"] and baseline[s]["seconds_per_step"]]
    ratios = [runs[s]["seconds_per_step"] / baseline[s]["seconds_per_step"] for s in shared]
    return f"{statistics.median(ratios):.2f}" if ratios else "—"


def row(label: str, runs: dict[int, dict], context: dict) -> list[str]:
    """The metrics (mean ± std over seeds, in points), AA against multitask, the step-time ratio, the wall time per run."""
    per_run = [values(r, context["reference"]) for r in runs.values()]
    cells = [mean_std([v[m] for v in per_run if v[m] is not None]) for m in METRICS]
    aa, bound = [v["AA"] for v in per_run], context["multitask"]
    gap = signed(statistics.fmean(aa) - bound) if aa and bound is not None and label != MULTITASK else "—"
    wall = statistics.fmean(r["wall_seconds"] for r in runs.values()) / 60
    return [label, str(len(runs)), *cells, gap, step_ratio(runs, context["seq"]), f"{wall:.1f}"]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)])


def metrics_table(rows: list[list[str]], first: str) -> str:
    header = [first, "seeds", *METRICS, "AA − multitask", "step time / seq-lora", "min per run"]
    return markdown_table(header, rows)


def majority_floor(s: Setting) -> tuple[float, float]:
    """AA and macro-F1 AA of a model that predicts each task's most frequent test label: the floor that shows a
    run that learned nothing. Its macro-F1 on a task of k classes whose largest has share p is (2p / (1 + p)) / k."""
    from .continual import sequence_of

    shares = []
    for task in sequence_of({"sequence": s.sequence, "tasks": s.tasks, "n_train": s.n_train, "n_test": s.n_test, "split": "test"}, None):
        labels = [e.label for e in task.test]
        p = max(map(labels.count, set(labels))) / len(labels)
        shares.append((p, 2 * p / (1 + p) / len(task.labels)))
    aa, f1 = (statistics.fmean(x) for x in zip(*shares))
    return aa, f1


def floor_row(floor: tuple[float, float]) -> list[str]:
    return ["majority class (learns nothing)", "—", f"{100 * floor[0]:.1f}", *["—"] * 4, f"{100 * floor[1]:.1f}", "—", "—", "—"]


def near_floor(parts: dict[str, str], main: dict[str, dict[int, dict]], floor: tuple[float, float]) -> str:
    """The methods whose mean macro-F1 AA is within NEAR_FLOOR of the floor's: their forgetting says little."""
    scores = {label: [f1 for r in runs.values() if (f1 := r["continual"].get("macro_f1", {}).get("AA")) is not None] for label, runs in main.items()}
    near = [label for label, f1 in scores.items() if f1 and statistics.fmean(f1) - floor[1] < NEAR_FLOOR]
    return fill(parts["near-floor"], methods=", ".join(near), points=f"{100 * NEAR_FLOOR:g}") if near else ""


def average_matrix(runs: dict[int, dict]) -> tuple[list[str], list[list[float | None]]] | None:
    """R averaged over seeds, when every run filled its lower triangle."""
    firsts = [r for r in runs.values()]
    tasks = firsts[0]["continual"]["tasks"] if firsts else []
    full = [r for r in firsts if len(r["R"]) == len(tasks) and all(r["R"][j][i] is not None for j in range(len(tasks)) for i in range(j + 1))]
    if not full or len(full) < len(firsts):
        return None
    T = len(tasks)
    return tasks, [[statistics.fmean(r["R"][j][i] for r in full) if i <= j else None for i in range(T)] for j in range(T)]


def matrix_table(label: str, tasks: list[str], R: list[list[float | None]]) -> str:
    rows = [[f"after {tasks[j]}", *("" if x is None else f"{100 * x:.1f}" for x in R[j])] for j in range(len(tasks))]
    return f"**{label}**\n\n" + markdown_table([label, *tasks], rows)


# ---- the paired comparisons ---------------------------------------------------------------------------
def comparisons(main: dict[str, dict[int, dict]]) -> list[tuple[str, str, dict]]:
    """(rival, metric, paired difference) for LoRASC − each rival, in AA and in F."""
    out = []
    for rival in RIVALS:
        for metric in ("AA", "F"):
            ours, theirs = ({s: r["continual"]["accuracy"][metric] for s, r in main.get(m, {}).items()} for m in (OURS, rival))
            out.append((rival, metric, paired(ours, theirs)))
    return out


def interval(c: dict) -> str:
    return "—" if c["low"] is None else f"[{signed(c['low'])}, {signed(c['high'])}]"


def comparison_table(parts: dict[str, str], cs: list[tuple[str, str, dict]]) -> str:
    rows = [[f"{OURS} − {rival}", metric, "—" if c["diff"] is None else signed(c["diff"]), interval(c), str(len(c["seeds"])),
             parts[f"{'f' if metric == 'F' else 'aa'}-{c['verdict']}"]] for rival, metric, c in cs]
    return markdown_table(["difference", "metric", "mean (points)", "95 % interval", "paired seeds", "verdict"], rows)


def forgetting_line(parts: dict[str, str], cs: list[tuple[str, str, dict]]) -> str:
    c = next(c for rival, metric, c in cs if rival == RIVALS[0] and metric == "F")
    key = {"beats": "more", "loses": "less", "ties": "as-much", "undecided": "undecided"}[c["verdict"]]
    return fill(parts[f"forgets-{key}"], interval=interval(c), n=len(c["seeds"]))


def resolution(parts: dict[str, str], cs: list[tuple[str, str, dict]]) -> str:
    """The half-width of each AA interval: the smallest AA difference that interval resolves."""
    widths = [f"{100 * (c['high'] - c['low']) / 2:.1f} points against {rival} ({len(c['seeds'])} seeds)"
              for rival, metric, c in cs if metric == "AA" and c["low"] is not None]
    return fill(parts["resolution"], widths="; ".join(widths)) if widths else parts["no-resolution"]


# ---- anchors ---------------------------------------------------------------------------------------------
def mean_aa(runs: dict[int, dict]) -> str:
    return f"{100 * statistics.fmean(r['continual']['accuracy']['AA'] for r in runs.values()):.1f}" if runs else "—"


def anchor_table(results: list[dict], lr: float | None, olora4: list[dict]) -> str:
    def ours(label: str, group: str, rows: list[dict], suffix: str = "") -> str:
        return mean_aa(runs_of(rows, group, label + suffix, lr))

    ran_olora4 = any(r["group"] == "main" for r in olora4)
    rows = [[label, ours(label, "main", results), ours(label, "extras", results, " reverse"),
             ours(label, "main", olora4) if ran_olora4 or label in ANCHORED else "not run", *("—" if a is None else f"{a:.1f}" for a in ANCHORS.get(label, (None, None)))]
            for label in (*RIVALS[::-1], "o-lora", OURS, "InfLoRA", "SLAO", MULTITASK)]
    header = ["method", "ours: tweets-domains (MiniLM)", "ours: reverse order", "ours: olora4 (MiniLM)",
              "O-LoRA paper: T5-large, standard CL", "SLAO's table: Llama-2-7B-chat"]
    return markdown_table(header, rows)


# ---- the section -----------------------------------------------------------------------------------------
def cut_line(parts: dict[str, str], s: Setting, main: dict[str, dict[int, dict]], results: list[dict]) -> str:
    """Which main rows have fewer seeds than planned, which extras have not been tried, which runs failed (and did not finish since)."""
    short = [f"{v.label} ({len(main.get(v.label, {}))} of {v.seeds})" for v in s.main if len(main.get(v.label, {})) < v.seeds]
    tried = {(r["group"], r["label"]) for r in results}
    missing = [v.label for v in s.extras if ("extras", v.label) not in tried]
    failed = sorted({r["key"] for r in results if "error" in r} - {r["key"] for r in results if "error" not in r})
    lines = [fill(parts["cut"], rows=", ".join(short)) if short else "", fill(parts["missing"], rows=", ".join(missing)) if missing else "",
             fill(parts["failed"], runs=", ".join(f"`{key}`" for key in failed)) if failed else ""]
    return " ".join(filter(None, lines))


def render(s: Setting, results_dir: Path, quick: bool) -> str:
    main_text, parts = fragments(TEMPLATE)
    results = read_results(results_path(results_dir, s))
    lr = chosen_lr(s, results)
    main = {v.label: runs_of(results, "main", v.label, lr) for v in s.main}
    single = runs_of(results, "extras", REFERENCE, lr)
    reference = dict(zip(single[0]["continual"]["tasks"], single[0]["continual"]["reference"])) if 0 in single else {}
    bound = main.get(MULTITASK)
    context = {"reference": reference, "seq": main.get("seq-lora", {}),
               "multitask": statistics.fmean(r["continual"]["accuracy"]["AA"] for r in bound.values()) if bound else None}
    floor = majority_floor(s)
    main_rows = [row(label, runs, context) for label, runs in main.items() if runs] + [floor_row(floor)]
    extras = [row(v.label, runs, context) for v in s.extras if (runs := runs_of(results, "extras", v.label, lr))]
    matrices = [(label, m) for label, runs in main.items() if runs and (m := average_matrix(runs))]
    cs = comparisons(main)
    finished = [r for r in results if "error" not in r]
    olora4 = read_results(results_path(results_dir, OLORA4)) if s == FULL else []
    selection = [f"{lr_:g}: {mean_aa(runs_of(results, 'select', s.select, lr_))}" for lr_ in s.lrs]
    return fill(main_text, quick_note=parts["quick"] + "\n\n" if quick else "", sequence=s.sequence, steps=s.steps_per_task, batch=s.batch_size,
                max_length=s.max_length, warmup=f"{s.warmup_ratio:.0%}", lrs=", ".join(f"{x:g}" for x in s.lrs), select=s.select, selection="; ".join(selection),
                lr="none yet" if lr is None else f"{lr:g}", machines=machines([r["environment"] for r in finished]) or "—",
                threads=", ".join(sorted({str(r["environment"].get("threads", "?")) for r in finished})) or "—", runs=len(finished), minutes=f"{sum(r['wall_seconds'] for r in finished) / 60:.0f}",
                cut=cut_line(parts, s, main, results), main_table=metrics_table(main_rows, "method"),
                resolution=resolution(parts, cs), comparison_table=comparison_table(parts, cs), forgetting=forgetting_line(parts, cs), near_floor=near_floor(parts, main, floor),
                matrices="\n\n".join(matrix_table(label, *m) for label, m in matrices) or parts["no-matrices"],
                extras_table=metrics_table(extras, "variant (1 seed)") if extras else parts["no-extras"],
                anchor_table=anchor_table(results, lr, olora4), results=results_path(results_dir, s).name)


def write_report(s: Setting, results_dir: Path) -> Path:
    quick = s.name != FULL.name
    path = results_dir / ("continual-quick.md" if quick else "continual.md")
    path.write_text(render(s, results_dir, quick))
    return path
