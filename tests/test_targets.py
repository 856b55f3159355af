"""LoRA targets as PEFT matches them (name endings, a regular expression, `all-linear`): the same layers in
the CLI's check before any model loads, in the layers a CLI run trains, and in a library cascade."""

import pytest
import torch
import yaml
from peft import LoraConfig
from safetensors.torch import load_file

from conftest import TINY_CASCADE, cli, refused, tiny_llama
from lorasc import LoRASC, LoRASCConfig, methods
from lorasc.run.model_files import empty_model
from lorasc.targets import adapted_shapes, peft_targets

REGEX = r".*\.(query|dense)"
TARGETS = {"all-linear": "all-linear", "a regex": REGEX, "name endings": ["query", "value"]}


def test_one_value_that_is_no_module_name_is_the_string_peft_matches_whole_names_against():
    assert peft_targets(["all-linear"]) == "all-linear" and peft_targets([REGEX]) == REGEX
    assert peft_targets(["query"]) == ["query"] and peft_targets(["self.query", "value"]) == ["self.query", "value"]


def library_layers(model: torch.nn.Module, targets, task_type: str) -> dict[str, list[int]]:
    cascade = LoRASC(model, LoRASCConfig(expert=LoraConfig(r=2, target_modules=targets, task_type=task_type)))
    return {name: list(layer.get_base_layer().weight.shape) for name, layer in cascade.layers.items()}


@pytest.mark.parametrize("targets", TARGETS.values(), ids=TARGETS)
def test_the_check_before_loading_finds_the_layers_a_library_cascade_adapts(targets, minilm_path, minilm):
    expert = LoraConfig(r=2, target_modules=targets)
    checked = adapted_shapes(empty_model(minilm_path, "classification"), expert)
    assert checked == library_layers(minilm, targets, "SEQ_CLS")
    assert not any("classifier" in name for name in checked)  # the new head trains in full, as PEFT's modules_to_save
    assert expert.target_modules == (set(targets) if isinstance(targets, list) else targets)  # the caller's config is unchanged


def test_all_linear_on_a_causal_lm_leaves_its_output_layer_out(tmp_path):
    tiny_llama().save_pretrained(tmp_path)
    checked = adapted_shapes(empty_model(tmp_path, "causal-lm"), LoraConfig(r=2, target_modules="all-linear"))
    assert checked == library_layers(tiny_llama(), "all-linear", "CAUSAL_LM")
    assert {name.rsplit(".", 1)[-1] for name in checked} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_the_check_allocates_nothing(minilm_path):
    model = empty_model(minilm_path, "classification")
    adapted_shapes(model, LoraConfig(r=2, target_modules="all-linear"))
    assert {p.device.type for p in model.parameters()} == {"meta"}


@pytest.mark.parametrize("flag", [["all-linear"], [REGEX]], ids=["all-linear", "a regex"])
def test_a_cli_run_trains_the_layers_the_library_adapts(flag, tmp_path, monkeypatch, minilm, capsys):
    built = []

    class Recorded(LoRASC):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append((dict(self.layers), {name for name, p in self.model.named_parameters() if p.requires_grad}))

    monkeypatch.setattr(methods, "LoRASC", Recorded)
    run = tmp_path / "run"
    assert cli("train", "--output-dir", run, *TINY_CASCADE, "--max-steps", "2", "--expert-target-modules", *flag) == 0
    [(layers, trainable)] = built
    base = {name: p.detach().clone() for name, p in minilm.state_dict().items()}
    library = LoRASC(minilm, LoRASCConfig(expert=LoraConfig(r=2, target_modules=flag[0], task_type="SEQ_CLS")))
    assert set(layers) == set(library.layers)
    assert trainable == {name for name, p in library.model.named_parameters() if p.requires_grad}
    dense = load_file(run / "model" / "model.safetensors")
    changed = {name for name, w in dense.items() if name in base and not name.startswith("classifier.") and not torch.equal(w, base[name])}
    assert changed == {name.removeprefix("base_model.model.") + ".weight" for name in layers}  # exactly the adapted layers were trained
    assert yaml.safe_load((run / "config.yaml").read_text())["lorasc"]["expert"]["target_modules"] == flag[0]
    capsys.readouterr()
    refused(capsys, tmp_path, ["export", run, "--rank", "1000"], "rank=1000 is not allowed: the adapted layers have full rank at most 384",
            "pass --rank 384 or lower")


@pytest.fixture
def no_loading(monkeypatch):
    def load_model(*args):
        raise AssertionError("the model was loaded before its targets were checked")

    monkeypatch.setattr("lorasc.run.train.load_model", load_model)


def test_targets_that_match_nothing_are_refused_in_one_line_before_anything_loads(tmp_path, capsys, no_loading):
    refused(capsys, tmp_path, ["train", "--output-dir", tmp_path / "run", *TINY_CASCADE, "--expert-target-modules", "nothing.*"],
            "expert.target_modules='nothing.*' is not allowed: it matches no layer of the model (its layers end in names such as "
            "['classifier', 'dense', 'key', 'query', 'value']); pass --expert-target-modules with some of those")


def test_a_rank_above_every_adapted_layer_is_refused_before_anything_loads(tmp_path, capsys, no_loading):
    refused(capsys, tmp_path, ["train", "--output-dir", tmp_path / "run", *TINY_CASCADE, "--expert-target-modules", "all-linear",
                               "--expert-r", "1000"],
            "expert.r=1000 is not allowed: the adapted layers have full rank at most 384; pass --expert-r 384 or lower")
