import warnings

import pytest

from lorasc import LoRASCConfig
from lorasc.schedule import MAX_CYCLES, check_cycle_plan, cycle_ends, jagged_lr_lambda


def test_one_cycle_per_epoch_by_default():
    assert cycle_ends(LoRASCConfig(), total_steps=10, steps_per_epoch=4) == [4, 8, 10]


def test_cycle_steps_and_num_cycles():
    assert cycle_ends(LoRASCConfig(cycle_steps=3), total_steps=10) == [3, 6, 9, 10]
    assert cycle_ends(LoRASCConfig(num_cycles=4), total_steps=10) == [2, 5, 8, 10]


@pytest.mark.parametrize("config, steps_per_epoch", [(LoRASCConfig(), 4), (LoRASCConfig(cycle_steps=3), None), (LoRASCConfig(num_cycles=4), None),
                                                     (LoRASCConfig(cycle_steps=5), None), (LoRASCConfig(num_cycles=10), None)])
def test_the_checked_plan_counts_the_cycles_that_end(config, steps_per_epoch):
    assert check_cycle_plan(config, 10, steps_per_epoch) == len(cycle_ends(config, 10, steps_per_epoch))


@pytest.mark.parametrize("config, total_steps, steps_per_epoch, message", [
    (LoRASCConfig(), 10, None, r"^steps_per_epoch=None is not allowed: an integer >= 1 \(or set cycle_steps or num_cycles\)$"),
    (LoRASCConfig(num_cycles=20), 10, None, r"^num_cycles=20 is not allowed: at most the run's 10 optimizer steps; lower num_cycles, or raise total_steps$"),
    (LoRASCConfig(cycle_steps=1), MAX_CYCLES + 1, None, r"^cycles=1000001 is not allowed: at most 1,000,000; raise cycle_steps or lower num_cycles$"),
    (LoRASCConfig(), 0, 4, r"^total_steps=0 is not allowed: an integer >= 1$"),
])
def test_bad_plans_are_refused_in_fields_before_any_list_is_built(config, total_steps, steps_per_epoch, message):
    for check in (check_cycle_plan, cycle_ends):
        with pytest.raises(ValueError, match=message):
            check(config, total_steps, steps_per_epoch)


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
