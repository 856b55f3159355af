"""`lorasc train --tasks …`: a sequence of tasks through one cascade, end to end on MiniLM, with its R matrix,
per-task heads, files, `lorasc eval --task`, and a resume in the middle of a task."""

import json

import pytest
import torch
from conftest import GOOD_CSV, TINY_RUN, cli, run_cli, write_file
from safetensors.torch import load_file

from lorasc.continual.metrics import read_cl_matrix

pytestmark = pytest.mark.slow

OTHER_CSV = "text,label\n" + "red sky,red\nblue sea,blue\ngreen grass,green\nred wine,red\nblue jeans,blue\ngreen tea,green\n" * 5
SEQUENCE = [*TINY_RUN, "--steps-per-task", "4", "--cycles-per-task", "2", "--expert-r", "2", "--expert-target-modules", "query", "value",
            "--warmup-steps", "1", "--lr", "1e-2", "--checkpoint-every", "2"]


def task_files(folder):
    return write_file(folder / "flights.csv", GOOD_CSV), write_file(folder / "colours.csv", OTHER_CSV)


@pytest.fixture(scope="module")
def two_tasks(tmp_path_factory):
    """A finished 2-task lorasc run on tasks with different label sets (2 and 3 classes)."""
    folder = tmp_path_factory.mktemp("two-tasks")
    flights, colours = task_files(folder)
    run = folder / "run"
    assert cli("train", "--tasks", f"{flights},{colours}", *SEQUENCE, "--output-dir", run) == 0
    return run


def test_a_sequence_writes_its_r_matrix_metrics_and_task_files(two_tasks):
    metrics = json.loads((two_tasks / "metrics.json").read_text())
    block = metrics["continual"]
    assert block["tasks"] == ["flights", "colours"]
    R = block["R"]
    assert R[0][1] is None and None not in (R[0][0], R[1][0], R[1][1])
    assert block["accuracy"]["AA"] == pytest.approx((R[1][0] + R[1][1]) / 2)
    assert block["accuracy"]["BWT"] == pytest.approx(R[1][0] - R[0][0])
    assert metrics["cycles"] == 4 and block["cycles"] == {"flights": [1, 2], "colours": [3, 4]}
    assert read_cl_matrix(two_tasks / "cl_matrix.csv") == (block["tasks"], R)
    assert (two_tasks / "cl_matrix.png").stat().st_size and (two_tasks / "cl_curves.png").stat().st_size
    heads = json.loads((two_tasks / "model" / "tasks.json").read_text())
    assert heads["head"] == "per-task"
    assert heads["tasks"]["flights"] == {"labels": ["neg", "pos"], "rows": [0, 1]}
    assert heads["tasks"]["colours"] == {"labels": ["blue", "green", "red"], "rows": [2, 3, 4]}
    blocks = json.loads((two_tasks / "adapter" / "tasks.json").read_text())
    assert blocks["tasks"]["colours"] == {"cycles": [3, 4], "rank_rows": [4, 8]}


def test_eval_of_one_task_scores_it_on_its_own_rows_as_training_did(two_tasks, capsys):
    R = json.loads((two_tasks / "metrics.json").read_text())["continual"]["R"]
    assert cli("eval", two_tasks, "--task", "colours") == 0
    scores = json.loads((two_tasks / "eval.json").read_text())
    assert list(scores) == ["colours"] and scores["colours"]["test"]["accuracy"] == pytest.approx(R[1][1], abs=1e-6)
    assert cli("eval", two_tasks) == 0
    assert list(json.loads((two_tasks / "eval.json").read_text())) == ["flights", "colours"]


def test_an_earlier_tasks_head_rows_are_bitwise_unchanged_by_a_later_task(tmp_path, monkeypatch):
    from lorasc.continual import load_sequence, run_sequence
    from lorasc.continual.loop import SequenceLoop
    from lorasc.run.cli import build_parser
    from lorasc.run.settings import resolve

    flights, colours = task_files(tmp_path)
    heads, evaluate_stage = [], SequenceLoop.evaluate_stage

    def recorded(loop, stage):
        heads.append({n: p.detach().clone() for n, p in loop.cascade.model.named_parameters() if "classifier" in n and p.requires_grad})
        evaluate_stage(loop, stage)

    monkeypatch.setattr(SequenceLoop, "evaluate_stage", recorded)
    args = build_parser().parse_args(["train", "--tasks", f"{flights},{colours}", *SEQUENCE])
    run, config = resolve(args)
    tasks = load_sequence(run.tasks)
    run_sequence(tasks, run, config, tmp_path / "run", progress=False, save_models=False)
    weight = next(name for name in heads[0] if name.endswith("weight"))
    for name in heads[0]:
        assert torch.equal(heads[0][name][:2], heads[1][name][:2]), name  # flights' rows, after colours
    assert not torch.equal(heads[0][weight][2:], heads[1][weight][2:])  # colours' rows trained


def test_a_sequence_resumed_mid_task_reaches_the_uninterrupted_weights_and_r(tmp_path):
    flights, colours = task_files(tmp_path)
    args = ["train", "--tasks", f"{flights},{colours}", *SEQUENCE]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert run_cli(*args, "--output-dir", whole).returncode == 0
    killed = run_cli(*args, "--output-dir", resumed, kill_at=6)  # step 6: the middle of the second task
    assert killed.returncode != 0 and not (resumed / "metrics.json").exists()
    finished = run_cli(*args, "--output-dir", resumed, "--resume")
    assert finished.returncode == 0, finished.stderr
    R = [json.loads((run / "metrics.json").read_text())["continual"]["R"] for run in (whole, resumed)]
    assert R[0] == R[1]
    for name in ("model/model.safetensors", "adapter/adapter_model.safetensors"):
        left, right = load_file(whole / name), load_file(resumed / name)
        assert all(torch.equal(left[key], right[key]) for key in left), name


def test_the_built_in_tweet_domains_on_the_cli(tmp_path):
    run = tmp_path / "run"
    assert cli("train", "--tasks", "tweets-domains", "--steps-per-task", "4", "--cycles-per-task", "2", "--batch-size", "8",
               "--max-length", "32", "--expert-r", "2", "--no-progress", "--output-dir", run) == 0
    block = json.loads((run / "metrics.json").read_text())["continual"]
    assert block["tasks"] == ["airline", "coachella", "self-driving", "deflategate"]
    assert all(row[j] is not None for j, row in enumerate(block["R"]))
    assert json.loads((run / "model" / "tasks.json").read_text())["tasks"]["deflategate"]["rows"] == [9, 10, 11]


def test_a_causal_lm_pair_of_tasks_on_a_tiny_llama(tmp_path, minilm_path):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    model = tmp_path / "llama"
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=2, max_position_embeddings=128)).save_pretrained(model)
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(model)
    capitals = [{"prompt": f"Capital of {c}?", "response": a} for c, a in [("France", "Paris"), ("Italy", "Rome"), ("Peru", "Lima")]] * 8
    colours = [{"prompt": f"Colour of {t}?", "response": c} for t, c in [("grass", "green"), ("sky", "blue"), ("snow", "white")]] * 8
    files = [write_file(tmp_path / f"{name}.jsonl", "\n".join(map(json.dumps, rows))) for name, rows in (("capitals", capitals), ("colours", colours))]
    run = tmp_path / "run"
    assert cli("train", "--task", "causal-lm", "--model", model, "--tasks", ",".join(map(str, files)), "--text-column", "prompt",
               "--label-column", "response", "--steps-per-task", "4", "--batch-size", "8", "--no-progress", "--output-dir", run) == 0
    block = json.loads((run / "metrics.json").read_text())["continual"]
    assert block["tasks"] == ["capitals", "colours"] and "macro_f1" not in block
    assert json.loads((run / "model" / "tasks.json").read_text())["head"] == "none"
