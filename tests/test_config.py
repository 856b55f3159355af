import pytest
import torch
from peft import LoraConfig

from conftest import TinyNet, tiny_llama
from lorasc import LoRASC, LoRASCConfig
from lorasc.schedule import check_cycle_plan
from lorasc.targets import BERT_TARGETS, check_rank, check_targets, default_target_modules, task_type_of


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"slow_alpha": 0.0}, "slow_alpha"),
        ({"slow_alpha": 1.5}, "slow_alpha"),
        ({"noise_lambda": -0.1}, "noise_lambda"),
        ({"noise_kind": "laplace"}, "noise_kind"),
        ({"noise_targets": "head"}, "noise_targets"),
        ({"cycle_steps": 0}, "cycle_steps"),
        ({"num_cycles": 0}, "num_cycles"),
        ({"cycle_steps": 5, "num_cycles": 2}, "cycle_steps"),
        ({"rewarmup_steps": -1}, "rewarmup_steps"),
        ({"optimizer_state": "forget"}, "optimizer_state"),
        ({"loraplus_lr_ratio": 0}, "loraplus_lr_ratio"),
        ({"expert": LoraConfig(r=0, target_modules=["q"])}, "expert.r"),
        ({"expert": LoraConfig(r=4, target_modules=[])}, "expert.target_modules"),
        ({"expert": LoraConfig(r=4, target_modules=["q"], init_lora_weights="pissa")}, "expert.init_lora_weights"),
    ],
)
def test_bad_values_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"^{field}=.* is not allowed: "):
        LoRASCConfig(**kwargs)


def test_target_modules_that_match_nothing(tiny):
    config = LoRASCConfig(expert=LoraConfig(r=2, target_modules=["query"]))
    with pytest.raises(ValueError, match=r"expert.target_modules=.* matches no layer of TinyNet"):
        LoRASC(tiny, config)


def test_round_trip_through_dict():
    config = LoRASCConfig(slow_alpha=0.8, num_cycles=3, expert=LoraConfig(r=4, lora_alpha=8, target_modules=["q", "v"], use_rslora=True))
    again = LoRASCConfig.from_dict(config.to_dict())
    assert again.to_dict() == config.to_dict()
    assert again.expert.use_rslora and again.expert.r == 4


def test_unknown_keys_are_refused():
    with pytest.raises(ValueError, match=r"config keys=\['alpha'\]"):
        LoRASCConfig.from_dict({"alpha": 0.5})


def test_the_default_expert_adapts_what_peft_chooses_for_the_architecture():
    assert LoRASCConfig().expert.target_modules is None
    cascade = LoRASC(tiny_llama(), LoRASCConfig(expert=LoraConfig(r=2)))
    assert cascade.config.expert.target_modules == {"q_proj", "v_proj"}  # PEFT's choice for Llama
    assert {name.rsplit(".", 1)[-1] for name in cascade.layers} == {"q_proj", "v_proj"} and len(cascade.layers) == 2 * 2
    assert cascade.config.expert.task_type == "CAUSAL_LM"


def test_a_bert_gets_every_projection_and_its_new_head_trains():
    from transformers import BertConfig, BertForSequenceClassification

    bert = BertForSequenceClassification(BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16))
    with pytest.warns(UserWarning, match="expert.task_type=None on a BertForSequenceClassification: using 'SEQ_CLS'"):
        cascade = LoRASC(bert, LoRASCConfig(expert=LoraConfig(r=2)))
    assert cascade.config.expert.target_modules == set(BERT_TARGETS) == {name.rsplit(".", 1)[-1] for name in cascade.layers}
    assert any("classifier" in name for name in cascade.head_params)


def test_a_model_without_a_default_must_name_its_targets():
    with pytest.raises(ValueError, match=r"^expert.target_modules=None is not allowed: PEFT has no default LoRA target modules for model type None; "
                                         r"name the layers to adapt in expert.target_modules$"):
        LoRASC(TinyNet(), LoRASCConfig(expert=LoraConfig(r=2)))


def test_the_task_type_follows_the_head_class_or_a_subclass_of_it():
    class MyLlama(type(tiny_llama())):
        pass

    assert task_type_of(tiny_llama()) == "CAUSAL_LM" and task_type_of(MyLlama(tiny_llama().config)) == "CAUSAL_LM"
    assert task_type_of(TinyNet()) is None and task_type_of(torch.nn.Linear(2, 2)) is None


SHAPES = {"encoder.query.weight": [8, 4]}
# One of each library error that a CLI run can meet, and the fix its line must name there.
LIBRARY_ERRORS = {
    "cycles above steps": (lambda: check_cycle_plan(LoRASCConfig(num_cycles=50), 6), "lower --num-cycles, or raise --max-steps or --epochs"),
    "too many cycles": (lambda: check_cycle_plan(LoRASCConfig(cycle_steps=1), 10**12), "raise --cycle-steps or lower --num-cycles"),
    "targets match nothing": (lambda: check_targets(TinyNet(), LoraConfig(r=2, target_modules=["value"])), "pass --expert-target-modules with some of those"),
    "expert rank too high": (lambda: check_targets(TinyNet(), LoraConfig(r=100, target_modules=["q"])), "pass --expert-r 12 or lower"),
    "export rank too high": (lambda: check_rank(SHAPES, 9, "rank"), "pass --rank 4 or lower"),
    "no default targets": (lambda: default_target_modules("no-such-model"), "name the layers to adapt in --expert-target-modules"),
}


@pytest.mark.parametrize("name", LIBRARY_ERRORS)
def test_library_errors_speak_in_fields_and_the_cli_names_the_flags(name):
    from lorasc.run.settings import in_flags

    call, fix = LIBRARY_ERRORS[name]
    with pytest.raises(ValueError, match=r"^[\w.]+=\S+ is not allowed: (?!.*--)") as caught:  # no flag: fields
        call()
    problem = str(caught.value).partition("; ")[0]
    assert in_flags(str(caught.value)) == f"{problem}; {fix}"  # the problem keeps the field's name, as in config.yaml
