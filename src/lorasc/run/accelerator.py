"""The run's Accelerator: device, mixed precision, gradient accumulation, the process group under torchrun or
`accelerate launch`, and the trackers that the logged rows also go to."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.tracking import get_available_trackers
from accelerate.utils import LoggerType, ProjectConfiguration

from ..config import LoRASCConfig
from .run_config import RunConfig

PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}  # Accelerate's names
PROJECT = "lorasc"  # the trackers' project; TensorBoard writes RUN/tensorboard/lorasc


def make_accelerator(run: RunConfig, run_dir: Path | None = None) -> Accelerator:
    """The run's Accelerator, with the trackers of `run.report_to` (writing under `run_dir`); under
    torchrun or `accelerate launch` it joins the process group."""
    cuda = torch.cuda.is_available()
    if run.device == "cuda" and not cuda:
        raise ValueError("device='cuda' is not allowed: no CUDA device is visible here; pass --device auto or cpu")
    if run.dtype == "float16" and (run.device == "cpu" or not cuda):
        raise ValueError("dtype='float16' is not allowed on the CPU: Accelerate autocasts float16 on GPUs only; pass --dtype bfloat16")
    log_with = trackers(run.report_to)
    logging_dir = None if run_dir is None else Path(run_dir) / "tensorboard"
    # cpu=True also without CUDA: it is what makes Accelerate start gloo under torchrun
    return Accelerator(cpu=run.device == "cpu" or not cuda, mixed_precision=PRECISION[run.dtype], gradient_accumulation_steps=run.grad_accum,
                       log_with=log_with, project_config=ProjectConfiguration(project_dir=run_dir, logging_dir=logging_dir))


def trackers(report_to: str) -> str | None:
    """Accelerate's `log_with` for `report_to`; a tracker that is not installed is refused (Accelerate would skip it silently)."""
    if report_to == "none":
        return None
    if report_to != "all" and LoggerType(report_to) not in get_available_trackers():
        raise ValueError(f"report_to={report_to!r} is not allowed: {report_to} is not installed; pip install {report_to}, or pass --report-to none")
    return report_to


def tracker_config(run: RunConfig, config: LoRASCConfig) -> dict:
    """The run's settings as trackers store them: flat, one number, text or flag each."""
    method = config.to_dict()
    settings = {**dataclasses.asdict(run), **{f"lorasc.{k}": v for k, v in method.items() if k != "expert"},
                **{f"lorasc.expert.{k}": v for k, v in method["expert"].items()}}
    return {name: value if isinstance(value, (bool, int, float, str)) else str(value) for name, value in settings.items()}
