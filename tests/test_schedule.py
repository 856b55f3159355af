import warnings

import pytest

from lorasc import LoRASCConfig
from lorasc.schedule import cycle_ends, jagged_lr_lambda


def test_one_cycle_per_epoch_by_default():
    assert cycle_ends(LoRASCConfig(), total_steps=10, steps_per_epoch=4) == [4, 8, 10]


def test_cycle_steps_and_num_cycles():
    assert cycle_ends(LoRASCConfig(cycle_steps=3), total_steps=10) == [3, 6, 9, 10]
    assert cycle_ends(LoRASCConfig(num_cycles=4), total_steps=10) == [2, 5, 8, 10]


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="steps_per_epoch=None"):
        cycle_ends(LoRASCConfig(), total_steps=10)
    with pytest.raises(ValueError, match="num_cycles=20 is not allowed"):
        cycle_ends(LoRASCConfig(num_cycles=20), total_steps=10)


def test_single_cycle_with_alpha_below_one_warns():
    with pytest.warns(UserWarning, match="single cycle is plain LoRA scaled"):
        cycle_ends(LoRASCConfig(num_cycles=1, slow_alpha=0.5), total_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cycle_ends(LoRASCConfig(num_cycles=1, slow_alpha=1.0), total_steps=10)


def test_jagged_schedule_rewarms_after_each_reset():
    total, ends = 100, [25, 50, 75, 100]
    lr = jagged_lr_lambda(total, warmup_steps=10, ends=ends, rewarmup_steps=5)
    assert lr(0) == pytest.approx(0.1) and lr(9) == pytest.approx(1.0)  # global warmup
    assert lr(99) == pytest.approx(0.1, abs=1e-3)  # cosine down to the 0.1 floor
    plain = jagged_lr_lambda(total, warmup_steps=10, ends=ends, rewarmup_steps=0)
    for start in ends[:-1]:
        ramp = [lr(start + k) for k in range(5)]
        assert ramp == sorted(ramp) and ramp[0] < 0.2 * plain(start + 5)  # drops, then climbs
        assert ramp[-1] == pytest.approx(plain(start + 5) * 5 / 6)
        assert lr(start + 5) == pytest.approx(plain(start + 5))  # back on the global curve
    assert [lr(s) for s in range(25)] == [plain(s) for s in range(25)]  # no re-warmup in the first cycle
