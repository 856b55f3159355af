"""The model card (README.md) of every export folder: Hub front matter, what the folder is, the run's
figures, and loading lines that, run as written, load the folder and give the dense export's outputs."""

import json
import re
import shutil

import pytest
import torch
import yaml
from peft import LoraConfig, PeftModel
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from conftest import cli, tiny_llama, token_batches, train_cascade, word_tokenizer
from lorasc import LoRASC, LoRASCConfig, export_compressed, export_dense, export_stacked
from lorasc.card import Origin, write_card


def read_card(folder):
    """The card's front matter (parsed by PyYAML) and its text."""
    text = (folder / "README.md").read_text(encoding="utf-8")
    match = re.match(r"---\n(.*?\n)---\n", text, re.DOTALL)
    assert match, text
    return yaml.safe_load(match.group(1)), text


def run_loading_code(folder, monkeypatch):
    """The card's Python block, run from the folder that holds the export, as the card says: its names."""
    blocks = re.findall(r"```python\n(.*?)```", read_card(folder)[1], re.DOTALL)
    assert len(blocks) == 1
    monkeypatch.chdir(folder.parent)
    names = {}
    exec(blocks[0], names)  # noqa: S102 - the card's own lines, written by this test's export
    return names


def logits(model, **inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


@pytest.fixture(scope="module")
def llama_exports(tmp_path_factory):
    """A 3-cycle rank-8 cascade on a tiny Llama, exported by the library: dense (no tokenizer, no figures:
    the minimal card), stacked (tokenizer and figures) and compressed to rank 4."""
    root = tmp_path_factory.mktemp("llama")
    tiny_llama().save_pretrained(root / "base")
    word_tokenizer().save_pretrained(root / "base")
    cascade = LoRASC(AutoModelForCausalLM.from_pretrained(root / "base"),
                     LoRASCConfig(slow_alpha=0.5, cycle_steps=1, expert=LoraConfig(r=8, target_modules=["q_proj", "v_proj"])))
    cascade.begin(total_steps=3)
    train_cascade(cascade, cascade.optimizer(lr=1e-2), token_batches(3))
    export_dense(cascade, root / "model")
    export_stacked(cascade, root / "adapter", word_tokenizer(), figures={"test": {"loss": 1.25, "accuracy": 0.5}, "ood": {}})
    export_compressed(cascade, root / "adapter-r4", 4)
    return root


def test_a_causal_lm_cards_front_matter_and_facts(llama_exports):
    base = str(llama_exports / "base")
    meta, dense = read_card(llama_exports / "model")
    assert meta == {"library_name": "transformers", "base_model": base, "tags": ["lorasc"], "pipeline_tag": "text-generation"}
    assert "| cycles T | 3 |" in dense and "| slow step α | 0.5 |" in dense and "| noise λ | 0.15 |" in dense and "| expert rank r | 8 |" in dense
    assert "## Results" not in dense and "vllm" not in dense  # the minimal card: no figures given
    meta, stacked = read_card(llama_exports / "adapter")
    assert meta == {"library_name": "peft", "base_model": base, "tags": ["lora", "lorasc"], "pipeline_tag": "text-generation"}
    assert "exact stacked LoRA adapter" in stacked and "| rank of this folder's change | 24 |" in stacked
    assert "| test | 1.25 | 0.5 |" in stacked and "| ood |" not in stacked
    assert "--max-lora-rank 32 --lora-modules lorasc=adapter" in stacked  # rank 24 is above vLLM's default 16
    assert (llama_exports / "adapter" / "tokenizer_config.json").is_file()


def test_a_compressed_cards_error_summary(llama_exports):
    meta, text = read_card(llama_exports / "adapter-r4")
    assert meta["library_name"] == "peft" and "lorasc" in meta["tags"]
    errors = list(json.loads((llama_exports / "adapter-r4" / "compression.json").read_text())["relative_error"].values())
    assert "**It is not exact**" in text and "--max-lora-rank" not in text
    assert f"is {sum(errors) / len(errors):.4g} on average and {max(errors):.4g} at most, over\n{len(errors)} layers" in text


def test_the_causal_lm_cards_code_loads_each_folder(llama_exports, monkeypatch):
    ids = token_batches(1)[0]["input_ids"]
    dense = run_loading_code(llama_exports / "model", monkeypatch)
    expected = logits(dense["model"], input_ids=ids)
    assert dense["tokenizer"].name_or_path == str(llama_exports / "base")  # the minimal card: the base model's tokenizer
    stacked = run_loading_code(llama_exports / "adapter", monkeypatch)
    assert (logits(stacked["model"], input_ids=ids) - expected).abs().max() <= 1e-5
    assert stacked["tokenizer"]("w5 w7")["input_ids"] == [5, 7]  # the adapter folder's own tokenizer
    compressed = run_loading_code(llama_exports / "adapter-r4", monkeypatch)
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(llama_exports / "base"), llama_exports / "adapter-r4")
    assert (logits(compressed["model"], input_ids=ids) - logits(plain, input_ids=ids)).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def classifier_run(finished_run, tmp_path_factory):
    """The tiny finished CLI run (3-class MiniLM, 2 cycles of rank 2), with a rank-2 adapter exported by `lorasc export`."""
    run = shutil.copytree(finished_run, tmp_path_factory.mktemp("classifier") / "run")
    assert cli("export", run, "--rank", "2") == 0
    return run


def test_a_classifier_runs_cards_hold_its_figures_and_labels(classifier_run):
    metrics = json.loads((classifier_run / "metrics.json").read_text())
    labels = json.loads((classifier_run / "model" / "config.json").read_text())["id2label"]
    for folder, library in (("model", "transformers"), ("adapter", "peft"), ("adapter-r2", "peft")):
        meta, text = read_card(classifier_run / folder)
        assert meta["library_name"] == library and meta["pipeline_tag"] == "text-classification" and "lorasc" in meta["tags"]
        assert f"| test | {metrics['test']['loss']:.4g} | {metrics['test']['accuracy']:.4g} |" in text
        assert f"| ood | {metrics['ood']['loss']:.4g} |" in text
        assert "| cycles T | 2 |" in text and "| expert rank r | 2 |" in text
        assert all(f"`{label}`" in text for label in labels.values())
        assert (classifier_run / folder / "tokenizer_config.json").is_file()
    assert "**It is not exact**" in read_card(classifier_run / "adapter-r2")[1]


def test_a_classifiers_card_code_loads_each_folder_with_its_labels(classifier_run, monkeypatch):
    dense = run_loading_code(classifier_run / "model", monkeypatch)
    inputs = dense["tokenizer"](["great flight", "lost my bag again"], return_tensors="pt", padding=True)
    expected = logits(dense["model"], **inputs)
    stacked = run_loading_code(classifier_run / "adapter", monkeypatch)
    assert stacked["model"].config.id2label == dense["model"].config.id2label  # the run's label names, not LABEL_0…
    assert (logits(stacked["model"], **inputs) - expected).abs().max() <= 1e-5
    compressed = run_loading_code(classifier_run / "adapter-r2", monkeypatch)
    base = AutoModelForSequenceClassification.from_pretrained(read_card(classifier_run / "adapter-r2")[0]["base_model"], num_labels=3)
    plain = PeftModel.from_pretrained(base, classifier_run / "adapter-r2")
    assert (logits(compressed["model"], **inputs) - logits(plain, **inputs)).abs().max() <= 1e-5


def test_a_card_of_a_full_fine_tune_without_a_base_names_no_cascade(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "model")
    write_card(tmp_path / "model", Origin(None, "full"))
    meta, text = read_card(tmp_path / "model")
    assert meta == {"library_name": "transformers", "tags": ["full", "lorasc"], "pipeline_tag": "text-generation"}
    assert "every weight trained" in text and "cycles T" not in text
    with pytest.raises(ValueError, match=r"figures\['test'\]=0.9 is not allowed: a dict of metric names to numbers"):
        write_card(tmp_path / "model", Origin(None), {"test": 0.9})


def test_every_card_template_ships_in_the_package():
    """pyproject.toml's package data names every template, so a wheel (a non-editable install) has them."""
    from pathlib import Path

    import lorasc

    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    globs = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["lorasc"]
    package = Path(lorasc.__file__).parent
    templates = {p for p in (package / "templates").rglob("*") if p.is_file()}
    assert templates and templates == {p for pattern in globs for p in package.glob(pattern)}
