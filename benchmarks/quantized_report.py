"""The "Quantized backbones" section of BENCHMARKS.md: results/quantized.json rendered through
templates/quantized.md into results/quantized.md. The prose lives in the template; this module only
formats numbers and picks fragments."""

from __future__ import annotations

import json
from statistics import fmean
from pathlib import Path

from lorasc import LoRASCConfig
from lorasc.quantized import budget_rank

from .planner import Board
from .protocol import LM_NF4
from .report import fill, fragments, headline, task_anchor
from .runner import read_results
from .summary import runs_at
from .tables import finalists_table

TEMPLATE = "quantized.md"
SECTION = "quantized.md"


def percent(x: float) -> str:
    return f"{100 * x:.2f} %"


def size(x: float) -> str:
    return f"{100 * x:g} %"


def exact(x: float) -> str:
    """A fraction near 1, with its distance from 1."""
    return f"1 − {1 - x:.1e}" if x < 1 else f"1 + {x - 1:.1e}" if x > 1 else "1"


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def peft_cell(c: dict) -> str:
    return f"{percent(c['kept'])} [{percent(c['layer_min'])}, {percent(c['layer_max'])}]"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows)])


def kept_table(r: dict) -> str:
    header = ["cycle", *(f"{label}, experts of {size(k['size'])}" for k in r["kept"] for label in ("PEFT's merge into NF4", "carried stack"))]
    cycles = len(r["kept"][0]["peft_merge"])
    rows = [[str(t + 1), *(cell for k in r["kept"] for cell in (peft_cell(k["peft_merge"][t]), exact(k["carried"][t]["kept"])))]
            for t in range(cycles)]
    rows.append(["**median**", *(cell for k in r["kept"] for cell in (f"**{percent(k['peft_merge_median'])}**", f"**{exact(k['carried_median'])}**"))])
    return markdown_table(header, rows)


def cost_table(r: dict) -> str:
    c = r["cost"]
    header = ["stack rank R", "**LoRASC / QLoRA step time**", "analytic R·Σ(m+n) / Σ m·n", "stack bytes",
              "stack / packed adapted NF4", "stack / whole NF4 model", "saved for backward, LoRASC / QLoRA"]
    rows = [[rank, f"**{v['step_ratio']:.3f}**", f"{v['analytic_flop_ratio']:.3f}", mib(v["stack_bytes"]),
             f"{v['stack_over_packed']:.3f}", f"{v['stack_over_footprint']:.3f}", f"{v['saved_bytes_ratio']:.3f}"]
            for rank, v in c["ranks"].items()]
    return markdown_table(header, rows)


def merge_table(s: dict, results_dir: Path) -> str:
    """Per method at its chosen LR, mean over its seeds: at each cycle's end, the training loss of the cycle's last
    logged window (before the merge) and the test loss logged just after the merge (the run's log)."""
    board, rows = Board(read_results(results_dir / f"{LM_NF4.name}.jsonl")), []
    for label, row in s["rows"].items():
        ends = [[r for r in run["log"] if r.get("cycle_end") == 1.0] for run in runs_at(board, label, row["lr"]).values()]
        cells = [[e[c] for e in ends if len(e) > c] for c in range(max(map(len, ends)))]
        rows.append([label, *(f"{fmean(r['train_loss'] for r in at):.2f} → {fmean(r['eval_loss'] for r in at):.2f}" for at in cells)])
    width = max(map(len, rows))
    header = ["method", *(f"cycle {c}: train loss → test loss after its merge" for c in range(1, width))]
    return markdown_table(header, [r + ["—"] * (width - len(r)) for r in rows])


def comparison(parts: dict[str, str], results_dir: Path) -> str:
    """The QLoRA method comparison (the LM_NF4 protocol): its verdicts and finalists, from its summary in
    RESULTS/<protocol>.json (report.write_report writes it), with a link to its section."""
    path, anchor = results_dir / f"{LM_NF4.name}.json", task_anchor(LM_NF4, results_dir)
    if not path.is_file() or anchor is None:
        return fill(parts["no-comparison"], task=LM_NF4.task.name)
    s = json.loads(path.read_text())
    table = finalists_table(s, s["rows"], LM_NF4.baseline) if s["rows"] else ""
    merges = fill(parts["merges"], table=merge_table(s, results_dir)) if s["rows"] else ""
    return fill(parts["comparison"], **headline(LM_NF4, s), table=table, merges=merges, anchor=anchor, task=LM_NF4.task.name)


def render(r: dict, results_dir: Path) -> str:
    main, parts = fragments(TEMPLATE)
    s, c, env = r["setting"], r["cost"], r["environment"]
    machine = fill(parts["machine"], device=r["device_name"], **{k: env[k] for k in ("torch", "transformers", "peft", "bitsandbytes")})
    kept_line = " ".join(fill(parts["kept"], cycles=len(k["peft_merge"]), size=size(k["size"]), peft=percent(k["peft_merge_median"]),
                              carried=exact(k["carried_median"])) for k in r["kept"])
    unchanged = parts["unchanged" if all(k["carried_packed_unchanged"] for k in r["kept"]) else "changed"]
    budget = LoRASCConfig().slow_budget
    formulas = all(v["stack_bytes"] == v["stack_bytes_formula"] for v in c["ranks"].values())
    return fill(main, machine=machine, comparison=comparison(parts, results_dir), model=r["model"], quantization=r["quantization"], layers=r["adapted_layers"], rank=s["rank"],
                scaling=f"{s['lora_alpha'] / s['rank']:g}", cycles=s["cycles"], unchanged=unchanged, kept_table=kept_table(r),
                kept_line=kept_line, cost_size=size(max(s["sizes"])), steps=s["steps"], batch=s["batch"], seq=s["seq"],
                threads=s["threads"], warmup=s["warmup"], timed=c["timed_steps"], sum_in_out=f"{c['sum_in_out']:,}",
                sum_weights=f"{c['sum_weights']:,}", formula_check="equal at every R" if formulas else "**not equal**",
                packed=mib(c["packed_bytes"]), budget=f"{budget:g}",
                budget_rank=budget_rank(budget, c["packed_bytes"], [c["sum_in_out"]]), footprint=mib(c["footprint_bytes"]), cost_table=cost_table(r),
                wall=f"{r['wall_s'] / 60:.0f} min", command=r["command"])


def write_report(results_dir: Path) -> Path:
    path = results_dir / SECTION
    path.write_text(render(json.loads((results_dir / "quantized.json").read_text()), results_dir))
    return path

