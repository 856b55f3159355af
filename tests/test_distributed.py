"""LoRASC under DDP on CPU (gloo): 2 processes give the model 1 process gives on the same global batches.

The runs are `lorasc train` and tests/ddp_script.py (the engine's API in a plain loop, Accelerate and
the Trainer), launched as child processes; `pytest -s` prints the numbers quoted in docs/distributed.md.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_RUN, run_cli
from peft import LoraConfig
from safetensors import safe_open
from safetensors.torch import load_file

from lorasc import LoRASC, LoRASCConfig
from lorasc.distributed import assert_replicas_identical, tensor_checksum

SCRIPT = Path(__file__).with_name("ddp_script.py")
CHILD_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
# Different batch splits round differently; Adam turns that into up to ~1e-5 on weights whose gradient
# is near zero (seen in a last-cycle lora_A); the merged backbone weights stay within ~1e-6.
ATOL = 5e-5


def run(launcher: list[str], out: Path, *script_args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *launcher, str(SCRIPT), "--out", str(out), *script_args]
    proc = subprocess.run(cmd, env={**os.environ, **CHILD_ENV, **(env or {})}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def torchrun(nproc: int) -> list[str]:
    return ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def max_abs_diff(a: Path, b: Path, only: str = "") -> float:
    left, right = load_file(a), load_file(b)
    assert left.keys() == right.keys()
    return max((left[k] - right[k]).abs().max().item() for k in left if only in k)


def step_seconds(path: Path) -> float:
    with safe_open(path, "pt") as f:
        return float(f.metadata()["mean_step_seconds"])


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one") / "final.safetensors"
    run([], out)
    return out


# ---- without torch.distributed ------------------------------------------------------------
def test_the_replica_check_is_a_no_op_without_torch_distributed(tiny, tiny_batches):
    cascade = LoRASC(tiny, LoRASCConfig(cycle_steps=2, expert=LoraConfig(r=2, target_modules=["q", "v"])), check_replicas=True)
    cascade.begin(total_steps=4)
    optimizer = cascade.optimizer(lr=1e-2)
    for x, y in tiny_batches[:4]:
        torch.nn.functional.cross_entropy(cascade.model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
        cascade.step(optimizer)
    assert cascade.cycle == 2 and not torch.distributed.is_initialized()
    assert_replicas_identical(cascade)


def test_the_check_watches_what_the_cascade_edits_or_trains(tiny):
    cascade = LoRASC(tiny, LoRASCConfig(expert=LoraConfig(r=2, target_modules=["q"], modules_to_save=["head"])))
    assert list(cascade.watched_tensors()) == [
        "base_model.model.q.base_layer.weight",  # noise and merges; its bias and v are never rewritten
        "base_model.model.q.lora_A.default.weight", "base_model.model.q.lora_B.default.weight",
        "base_model.model.head.modules_to_save.default.weight", "base_model.model.head.modules_to_save.default.bias",
    ]


def test_checksum_sees_one_bit_and_the_order_of_elements():
    x = torch.randn(64, 32)
    flipped, swapped = x.clone(), x.clone()
    flipped.view(-1)[5] = torch.nextafter(x.view(-1)[5], torch.tensor(float("inf")))
    swapped.view(-1)[[3, 4]] = x.view(-1)[[4, 3]]
    assert torch.equal(tensor_checksum(x), tensor_checksum(x.clone()))
    assert not torch.equal(tensor_checksum(x), tensor_checksum(flipped))
    assert not torch.equal(tensor_checksum(x), tensor_checksum(swapped))
    assert not torch.equal(tensor_checksum(x.bfloat16()), tensor_checksum(swapped.bfloat16()))  # 2-byte dtypes too


# ---- 2 processes on CPU -------------------------------------------------------------------
@pytest.mark.slow
def test_torchrun_matches_one_process_and_resumes_on_every_rank(one_process, tmp_path):
    two = tmp_path / "two.safetensors"
    run(torchrun(2), two, "--checkpoint-at", "3")
    diff, ratio = max_abs_diff(one_process, two), step_seconds(two) / step_seconds(one_process)
    backbone = max_abs_diff(one_process, two, only="base_layer.weight")
    print(f"\ntorchrun 2 procs vs 1 proc: max abs weight diff {diff:.2e} (merged backbone {backbone:.2e}), step-time ratio {ratio:.2f}")
    assert diff < ATOL

    # The checkpoint (rank 0's, mid-cycle: noise on the backbone) is loaded and checked on both ranks.
    resumed = tmp_path / "resumed.safetensors"
    proc = run(torchrun(2), resumed, "--resume", str(two.with_suffix(".ckpt")), "--perturb-last-rank")
    assert max_abs_diff(two, resumed) == 0.0
    assert "ranks [1] disagree with rank 0 on 1 tensors" in proc.stdout and "after cycle 3" in proc.stdout


@pytest.mark.slow
def test_accelerate_launch_matches_one_process(one_process, tmp_path):
    out = tmp_path / "accelerate.safetensors"
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", free_port()]
    run(launcher, out, "--mode", "accelerate", env={"ACCELERATE_USE_CPU": "1"})
    diff = max_abs_diff(one_process, out)
    print(f"\naccelerate launch 2 procs vs 1 proc: max abs weight diff {diff:.2e}")
    assert diff < ATOL


@pytest.mark.slow
def test_trainer_callback_under_torchrun_matches_the_plain_loop(one_process, tmp_path):
    out = tmp_path / "trainer.safetensors"
    run(torchrun(2), out, "--mode", "trainer")
    diff = max_abs_diff(one_process, out)
    print(f"\nTrainer + LoRASCCallback 2 procs vs plain loop 1 proc: max abs weight diff {diff:.2e}")
    assert diff < ATOL


# ---- `lorasc train` on 2 processes ----------------------------------------------------------
@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, minilm_without_dropout):
    # --max-grad-norm 0.05 clips every step: the norm is taken once the processes' gradients are summed
    common = ["--model", minilm_without_dropout, "--max-steps", "6", "--num-cycles", "3", "--checkpoint-every", "1", "--max-grad-norm", "0.05", *TINY_RUN]
    run = tmp_path_factory.mktemp("two") / "run"
    trained = run_cli("train", "--output-dir", run, *common, processes=2)
    assert trained.returncode == 0, trained.stderr[-5000:]
    return run, common


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return {**load_file(run / "model" / "model.safetensors"), **load_file(run / "adapter" / "adapter_model.safetensors")}


def identical(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> bool:
    return left.keys() == right.keys() and all(torch.equal(left[name], right[name]) for name in left)


@pytest.mark.slow
def test_lorasc_train_on_two_processes_gives_the_weights_of_one(two_process_run, tmp_path):
    """Bitwise against 1 process cutting each batch into the same 2 halves (--grad-accum 2): each half
    gives the same gradient, and DDP's all-reduce adds the two as accumulation does (a halving and one
    addition, both exact). Against 1 process on whole batches the sums round differently (~1e-7)."""
    two, common = two_process_run
    assert json.loads((two / "metrics.json").read_text())["processes"] == 2
    accumulated, whole = tmp_path / "accumulated", tmp_path / "whole"
    assert run_cli("train", "--output-dir", accumulated, "--grad-accum", "2", *common).returncode == 0
    assert run_cli("train", "--output-dir", whole, *common).returncode == 0
    assert identical(final_weights(two), final_weights(accumulated))
    dense_two, dense_whole = load_file(two / "model" / "model.safetensors"), load_file(whole / "model" / "model.safetensors")
    diff = max((dense_two[k] - dense_whole[k]).abs().max().item() for k in dense_two)
    print(f"\nlorasc train, 2 processes vs 1 on whole batches: max abs diff of the dense model {diff:.1e}")
    assert diff < 1e-6


@pytest.mark.slow
def test_lorasc_train_on_two_processes_resumes_exactly(two_process_run, tmp_path):
    """Rank 0 dies right after a mid-cycle checkpoint; both ranks resume from it (and check that they agree)."""
    two, common = two_process_run
    killed = tmp_path / "killed"
    assert run_cli("train", "--output-dir", killed, *common, processes=2, kill_at=3).returncode != 0  # cycles end at 2, 4, 6
    assert (killed / "LATEST").read_text() == "checkpoint-3"
    resumed = run_cli("train", "--resume", "--output-dir", killed, processes=2)
    assert resumed.returncode == 0, resumed.stderr[-5000:]
    assert identical(final_weights(two), final_weights(killed))
