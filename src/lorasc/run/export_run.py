"""`lorasc export RUN`: what a finished run's folder can still give, from its dense model and the base:
a compressed adapter (`--rank K`), or the dense model quantized again (`--requantize nf4|fp4|int8`)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import warnings

import torch
from safetensors import SafetensorError

from ..card import write_card
from ..export import export_compressed_between
from ..methods import METHODS
from ..requantize import MOSTLY_ERASED, export_requantized
from ..targets import adapted_shapes, check_rank, task_type_of
from .checkpoint import disk_full
from .datasets import load_task
from .errors import CliError
from .finish import run_figures, run_origin
from .model_files import empty_model
from .models import dense_run, load_model
from .quantize import quantization_config
from .run_files import replacing
from .run_folder import check_base_unchanged, check_export_folder, finished_run

CPU = torch.device("cpu")


def command_export(args: argparse.Namespace) -> int:
    run, config = finished_run(args.run)
    if args.rank is not None and args.rank < 1:
        raise CliError(f"--rank {args.rank} is not allowed: an integer >= 1")
    if args.rank is not None:
        check_rank(adapted_shapes(empty_model(args.run / "model", run.task), config.expert), args.rank, "rank")
    out = args.output or args.run / (f"adapter-r{args.rank}" if args.rank is not None else f"model-{args.requantize}")
    check_export_folder(out)
    check_base_unchanged(args.run, run)
    labels = load_task(run).labels
    metrics = json.loads((args.run / "metrics.json").read_text(encoding="utf-8"))  # finished_run checked it
    cycles = metrics.get("cycles") if isinstance(metrics.get("cycles"), int) else None
    origin = run_origin(run, METHODS[run.method].config(config), labels, cycles)
    export = export_compressed if args.rank is not None else export_requantized_model
    try:
        with replacing(out) as folder:  # a kill or a full disk leaves no half-written export
            summary = export(args, run, config, labels, folder)
            write_card(folder, origin, run_figures(metrics), name=out.name)
    except (OSError, RuntimeError, SafetensorError) as err:
        raise disk_full(err, out) or err
    print(f"wrote {out}: {summary}")
    return 0


def export_compressed(args: argparse.Namespace, run, config, labels, folder) -> str:
    run = dataclasses.replace(run, dtype="float32")  # the delta of low-precision weights is exact in float32
    tuned, tokenizer = load_model(dense_run(run, args.run), labels, CPU)
    base = load_model(run, labels, CPU)[0]
    if run.quantize is not None:  # the dense model is deQ(W0_q) + S: its delta is against the dequantized base
        base = base.dequantize(dtype=torch.float32)
    expert = dataclasses.replace(config.expert, r=args.rank, use_dora=False, task_type=task_type_of(tuned))
    errors = export_compressed_between(tuned, base, expert, folder, args.rank)
    tokenizer.save_pretrained(folder)
    return f"rank {args.rank}, relative reconstruction error mean {sum(errors.values()) / len(errors):.4f}, max {max(errors.values()):.4f} (per layer in compression.json)"


def export_requantized_model(args: argparse.Namespace, run, config, labels, folder) -> str:
    """The surviving fraction is measured against the base quantized the same way: for a run on a
    quantized backbone of that type, the backbone it trained on."""
    same = run.quantize == args.requantize
    quantized = dataclasses.replace(run, quantize=args.requantize, quantize_double_quant=same and run.quantize_double_quant,
                                    compute_dtype=run.compute_dtype if same else None)
    base, tokenizer = load_model(quantized, labels, CPU)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # said below, in the summary line
        fractions = export_requantized(args.run / "model", base, quantization_config(quantized), folder)
    tokenizer.save_pretrained(folder)
    median = statistics.median(fractions.values())
    erased = "; warning: most of what the cascade learned is erased, the exact exports are RUN/adapter and RUN/model" if median < MOSTLY_ERASED else ""
    return f"{args.requantize}, a median {median:.1%} of the learned delta survives per layer (requantization.json){erased}"
