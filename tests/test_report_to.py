"""Cycle metrics in every logger: the engine's numbers (LoRASC.cycle_metrics), `lorasc train --report-to`
through Accelerate's trackers, and log.csv."""

import argparse
import math

import pytest
import torch

from conftest import EXPERT_KINDS, TINY_CASCADE, TinyClassifier, TinyNet, cli, expert, refused
from lorasc import LoRASC, LoRASCConfig


def test_relative_slow_step_of_a_hand_set_expert():
    """W_q = 1 (16×12), W_v = 0; the expert adds B·A = 2 at q[0, 0] at scale s = lora_alpha / r = 2, and
    α = 0.5: the slow step is one entry of 0.5·2·2 = 2, against ‖W‖ = √192."""
    model = TinyNet()
    with torch.no_grad():
        model.q.weight.fill_(1.0)
        model.v.weight.zero_()
    cascade = LoRASC(model, LoRASCConfig(slow_alpha=0.5, noise_lambda=0.0, expert=expert(target_modules=["q", "v"])))
    cascade.start_cycle()
    assert cascade.cycle_metrics() == {"lorasc/cycle": 1, "lorasc/experts_merged": 0}
    with torch.no_grad():
        for name, layer in cascade.layers.items():
            layer.lora_A["default"].weight.zero_()[0, 0] = 1.0
            layer.lora_B["default"].weight.zero_()[0, 0] = 2.0 if name.endswith("q") else 0.0
    cascade.end_cycle()
    metrics = cascade.cycle_metrics()
    assert metrics["lorasc/slow_step"] == pytest.approx(2 / math.sqrt(192), rel=1e-6)
    assert metrics["lorasc/experts_merged"] == 1 and metrics["lorasc/cycle"] == 1


@pytest.mark.parametrize("kind", EXPERT_KINDS)
def test_slow_step_is_the_relative_change_of_the_adapted_weights_at_each_merge(kind, tiny_batches):
    cascade = LoRASC(TinyClassifier(), LoRASCConfig(slow_alpha=0.5, noise_lambda=0.0, cycle_steps=3,
                                                    expert=expert(kind, target_modules=["q", "v"])))
    cascade.begin(total_steps=6)
    optimizer = cascade.optimizer(lr=5e-2)

    def weights():
        return torch.cat([layer.get_base_layer().weight.detach().flatten().clone() for layer in cascade.layers.values()])

    seen = []
    for x, y in tiny_batches[:6]:
        cascade.model(x=x, labels=y).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        before = weights()
        if cascade.step(optimizer):
            seen.append((cascade.cycle_metrics(), ((weights() - before).norm() / before.norm()).item()))  # no noise: the clean weights
    assert [m["lorasc/experts_merged"] for m, _ in seen] == [1, 2] and [m["lorasc/cycle"] for m, _ in seen] == [1, 2]
    for metrics, expected in seen:
        assert expected > 1e-4 and metrics["lorasc/slow_step"] == pytest.approx(expected, rel=1e-4)



@pytest.mark.slow
def test_report_to_tensorboard_holds_the_cycle_tags_of_log_csv(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lorasc.run.plots import read_log
    from lorasc.run.settings import resolve

    run = tmp_path / "run"
    assert cli("train", "--output-dir", run, *TINY_CASCADE, "--report-to", "tensorboard") == 0
    assert resolve(argparse.Namespace(config=run / "config.yaml"))[0].report_to == "tensorboard"  # what --resume and --config take
    rows = read_log(run / "log.csv")
    boundaries = [r for r in rows if r["cycle_end"] == "1"]
    assert [r["step"] for r in boundaries] == ["3", "6"] and [r["experts_merged"] for r in boundaries] == ["1", "2"]
    assert all(r["slow_step"] == "" for r in rows if r["cycle_end"] == "0")
    events = EventAccumulator(str(run / "tensorboard" / "lorasc"))
    events.Reload()
    assert {"lorasc/cycle", "lorasc/slow_step", "lorasc/experts_merged", "train_loss", "eval_accuracy"} <= set(events.Tags()["scalars"])
    slow_steps = events.Scalars("lorasc/slow_step")
    assert [e.step for e in slow_steps] == [3, 6] and [e.value for e in events.Scalars("lorasc/experts_merged")] == [1, 2]
    assert [e.value for e in slow_steps] == pytest.approx([float(r["slow_step"]) for r in boundaries], rel=1e-6)
    assert [(e.step, e.value) for e in events.Scalars("lorasc/cycle")] == [(int(r["step"]), int(r["cycle"])) for r in rows]
    assert all(0 < e.value < 1 for e in slow_steps)


@pytest.mark.slow
def test_report_to_a_tracker_that_is_not_installed_stops_before_any_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("lorasc.run.accelerator.get_available_trackers", lambda: [])  # as where wandb is not installed
    run = tmp_path / "run"
    refused(capsys, tmp_path, ["train", "--output-dir", run, *TINY_CASCADE, "--report-to", "wandb"], "report_to='wandb' is not allowed", "pip install wandb")
    assert not run.exists()
