import pytest
from peft import LoraConfig

from lorasc import LoRASC, LoRASCConfig


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
        ({"expert": LoraConfig(r=4)}, "expert.target_modules"),
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
