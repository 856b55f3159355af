"""The "At scale" section of BENCHMARKS.md: results/scale-*.json rendered through scale_template.md.

The prose lives in the template; this module only formats numbers and picks the template's
fragment that says whether the GPU (1B, bfloat16) numbers exist.
"""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent / "scale_template.md"
SIZE_ORDER = ["tiny", "125m", "350m", "1b", "minilm"]


def sci(x: float | None) -> str:
    return "—" if x is None else f"{x:.2e}"


def share(x: float) -> str:
    return f"{100 * x:.4f} %"


def params(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def boundary(r: dict) -> str:
    return f"{r['boundary_s']:.3f} s = {r['boundary_steps']:.2f} median steps ({r['boundary_fastest_steps']:.2f} fastest)"


def memory(r: dict) -> str:
    return f"{r['peak_memory_ratio']:.3f}" if r["peak_memory_ratio"] is not None else f"not measured ({r['device']})"


# (row label, formatter of one result); one column per result file
ROWS = [
    ("model", lambda r: f"{r['model']}, {params(r['params'])} params{' (random weights)' if r['random_weights'] else ''}"),
    ("device", lambda r: r["device_name"]),
    ("batch × sequence", lambda r: f"{r['setting']['batch']} × {r['setting']['seq']}"),
    ("rank r, lora_alpha; slow α, noise λ", lambda r: "{rank}, {lora_alpha:g}; {slow_alpha:g}, {noise_lambda:g}".format(**r["setting"])),
    ("cycles × steps (warm-up steps)", lambda r: "{cycles} × {steps_per_cycle} ({warmup})".format(**r["setting"])),
    ("LoRA step, median (fastest)", lambda r: f"{r['lora_step_s']:.4f} s ({min(r['lora_steps_s']):.4f} s)"),
    ("**LoRASC / LoRA step time**", lambda r: f"{r['step_time_ratio']:.3f}"),
    ("**boundary: end_cycle + start_cycle**", boundary),
    ("end_cycle / start_cycle", lambda r: f"{r['end_cycle_s']:.3f} s / {r['start_cycle_s']:.3f} s"),
    ("**peak device memory LoRASC / LoRA**", memory),
    ("**merge exactness**: bitwise = one rounding of W0 + Σ α·ΔW", lambda r: share(r["merge_exact_fraction"])),
    ("… within one unit in the last place", lambda r: share(r["merge_within_one_ulp_fraction"])),
    ("realised delta, relative error (floor: one rounding)", lambda r: f"{sci(r['delta_relative_error'])} ({sci(r['delta_relative_error_floor'])})"),
    ("‖Σ α·ΔW‖ / ‖W0‖", lambda r: sci(r["delta_norm_ratio"])),
    ("**noise exactness**: bitwise = the noise-free twin", lambda r: share(r["noise_exact_fraction"])),
    ("stacked adapter, relative error", lambda r: sci(r["stacked_relative_error"])),
    ("wall time of the run", lambda r: f"{r['wall_s']:.0f} s"),
]


def read_results(results_dir: Path) -> list[dict]:
    results = [json.loads(p.read_text()) for p in sorted(results_dir.glob("scale-*.json"))]
    return sorted(results, key=lambda r: (r["device"] != "cuda", SIZE_ORDER.index(r["size"]), r["dtype"]))


def table(results: list[dict]) -> str:
    header = ["", *(f"{r['size']} · {r['dtype']} · {r['device']}" for r in results)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([label, *(fmt(r) for r in results)]) + " |" for label, fmt in ROWS]
    return "\n".join(lines)


def fragments(text: str) -> tuple[str, dict[str, str]]:
    """The template's main text and its named fragments (`<!-- fragment: NAME -->` lines start each)."""
    main, *rest = re.split(r"^<!-- fragment: (\S+) -->\n", text, flags=re.M)
    return main, {name: body.strip() for name, body in zip(rest[::2], rest[1::2])}


def status(results: list[dict], parts: dict[str, str]) -> str:
    gpu = [r for r in results if r["device"] == "cuda" and r["size"] == "1b" and r["dtype"] == "bfloat16"]
    if gpu:
        return string.Template(parts["gpu-measured"]).substitute(gpu_name=gpu[0]["device_name"])
    cpu = [r for r in results if r["device"] == "cpu" and r["random_weights"]]
    largest = max(cpu, key=lambda r: r["params"], default=None)
    label = f"{largest['size']}, {params(largest['params'])} parameters, in {largest['dtype']}" if largest else "none yet"
    return string.Template(parts["gpu-missing"]).substitute(cpu_largest=label)


def render(results: list[dict]) -> str:
    main, parts = fragments(TEMPLATE.read_text())
    commands = "\n".join(dict.fromkeys(r["command"] for r in results))
    return string.Template(main).substitute(status=status(results, parts), table=table(results), commands=commands)


def write_report(results_dir: Path) -> Path:
    path = results_dir / "scale.md"
    path.write_text(render(read_results(results_dir)))
    return path
