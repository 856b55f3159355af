"""Checkpoints of `lorasc train`: small (no backbone), exact on resume, safe to load, tied weights included.

Runs are killed (SIGKILL) right after writing a chosen step's checkpoint, then resumed.
"""

import json
import os
import shutil

import pytest
import torch
import yaml
from conftest import TINY_RUN, assert_error_line, run_cli
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

pytestmark = pytest.mark.slow
KILLED_AT = 7  # the default job's 4 cycles over 8 steps end at 2, 4, 6, 8: the largest checkpoint, 3 merged cycles


@pytest.fixture(scope="module")
def killed_run(tmp_path_factory, minilm_without_dropout):
    """The default job's expert (r=8 on every BERT projection, 4 cycles) on a tiny slice, killed mid-cycle 4."""
    run = tmp_path_factory.mktemp("killed") / "run"
    killed = run_cli("train", "--model", minilm_without_dropout, "--output-dir", run, "--checkpoint-every", "1", *TINY_RUN, kill_at=KILLED_AT)
    assert killed.returncode == -9, killed.stderr[-3000:]
    return run


def copy_of(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run", symlinks=True)


def expect_refusal(run, *fragments):
    resumed = run_cli("train", "--resume", "--output-dir", run)
    assert resumed.returncode == 2, resumed.stderr[-3000:]
    assert_error_line(resumed.stderr, *fragments)


def folder_bytes(folder):
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_a_checkpoint_of_the_default_job_is_at_most_a_tenth_of_the_dense_model(killed_run, tmp_path):
    run = copy_of(killed_run, tmp_path)
    checkpoint = run / f"checkpoint-{KILLED_AT}"
    assert (run / "LATEST").read_text() == checkpoint.name
    size = folder_bytes(checkpoint)
    assert run_cli("train", "--resume", "--output-dir", run).returncode == 0  # the run's end removes its checkpoints
    dense = (run / "model" / "model.safetensors").stat().st_size
    print(f"\ncheckpoint {size / 1e6:.2f} MB = {size / dense:.2%} of the dense model ({dense / 1e6:.2f} MB)")
    assert size <= 0.10 * dense


class RunsCode:
    """Unpickling this calls os.system: what a hostile state.pt would hold."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_state_file_with_pickled_code_is_refused_without_running_it(killed_run, tmp_path):
    run = copy_of(killed_run, tmp_path)
    marker = tmp_path / "code-ran"
    state = run / f"checkpoint-{KILLED_AT}" / "state.pt"
    torch.save({**torch.load(state, weights_only=True), "rng": RunsCode(marker)}, state)
    expect_refusal(run, "state.pt", "pickled objects", "could run code")
    assert not marker.exists()


def test_a_changed_base_model_is_refused(killed_run, tmp_path, minilm_without_dropout):
    run = copy_of(killed_run, tmp_path)
    changed = shutil.copytree(minilm_without_dropout, tmp_path / "changed", symlinks=True)
    config = json.loads((changed / "config.json").read_text())
    (changed / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-6}))
    settings = yaml.safe_load((run / "config.yaml").read_text())
    settings["run"]["model"] = str(changed)
    (run / "config.yaml").write_text(yaml.safe_dump(settings))
    expect_refusal(run, "base model files changed", "start a new run")


@pytest.fixture
def tied_llama(tmp_path, minilm_path):
    """A tiny random Llama whose output layer is its input embedding, saved with a tokenizer."""
    folder = tmp_path / "tied-llama"
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method", ["lorasc", "full"])
def test_a_tied_embedding_model_saves_resumes_and_exports(tied_llama, tmp_path, method):
    """LoRASC with noise on every frozen matrix (the tied embedding too), and full fine-tuning, which trains it."""
    rows = [{"prompt": f"Capital of {c}?", "response": a} for c, a in [("France", "Paris"), ("Italy", "Rome"), ("Peru", "Lima")]] * 8
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    args = ["--task", "causal-lm", "--model", tied_llama, "--data", data, "--text-column", "prompt", "--label-column", "response",
            "--method", method, "--noise-targets", "all", "--max-steps", "6", "--num-cycles", "2", "--batch-size", "4",
            "--checkpoint-every", "2", "--lr", "1e-2", "--no-progress"]
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    assert run_cli("train", "--output-dir", killed, *args, kill_at=4).returncode == -9
    trainable = load_file(killed / "checkpoint-4" / "trainable.safetensors")
    assert ("model.embed_tokens.weight" in trainable) == (method == "full") and "lm_head.weight" not in trainable
    resumed = run_cli("train", "--resume", "--output-dir", killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert run_cli("train", "--output-dir", fresh, *args).returncode == 0
    after_resume, uninterrupted = load_file(killed / "model" / "model.safetensors"), load_file(fresh / "model" / "model.safetensors")
    assert after_resume.keys() == uninterrupted.keys()
    assert after_resume and all(torch.equal(after_resume[name], uninterrupted[name]) for name in after_resume)
    dense = AutoModelForCausalLM.from_pretrained(killed / "model")
    assert dense.lm_head.weight.data_ptr() == dense.model.embed_tokens.weight.data_ptr()  # still tied
