"""The options of a sequence run: replay (a reservoir of finished tasks, half of each later batch), the shared
head, evaluations of future tasks, and multitask's batches, each from one task."""

import json

import pytest
from conftest import GOOD_CSV, TINY_RUN, cli, write_file

from lorasc.continual.loop import SequenceLoop
from lorasc.continual.replay import replayed, reservoir
from lorasc.run.data_files import Example

pytestmark = pytest.mark.slow

OTHER_FLIGHTS = "text,label\n" + "smooth landing,pos\nrude agent,neg\nfree upgrade,pos\nmissed connection,neg\n" * 6
SEQUENCE = [*TINY_RUN, "--steps-per-task", "4", "--cycles-per-task", "1", "--expert-r", "2", "--expert-target-modules", "query", "value",
            "--warmup-steps", "1", "--checkpoint-every", "0"]


def examples(prefix, n):
    return [Example(f"{prefix}{i}", 0) for i in range(n)]


def test_the_reservoir_is_a_seeded_sample_of_every_finished_task():
    streams = [examples("a", 50), examples("b", 50)]
    kept = reservoir(streams, 10, seed=3)
    assert len(kept) == 10 and kept == reservoir(streams, 10, seed=3) and kept != reservoir(streams, 10, seed=4)
    assert {e.text[0] for e in kept} == {"a", "b"}  # algorithm R keeps the later stream too
    assert reservoir(streams, 500, seed=3) == streams[0] + streams[1]
    drawn = replayed(kept, 4, seed=3, step=7)
    assert drawn == replayed(kept, 4, seed=3, step=7) and set(map(id, drawn)) <= set(map(id, kept))


@pytest.fixture
def recorded_batches(monkeypatch):
    batches, batch_examples = [], SequenceLoop.batch_examples

    def recorded(loop):
        batch = batch_examples(loop)
        batches.append((loop.stage.name, [e.text for e in batch]))
        return batch

    monkeypatch.setattr(SequenceLoop, "batch_examples", recorded)
    return batches


def test_replay_shared_head_and_future_evaluations(tmp_path, recorded_batches):
    first, second = write_file(tmp_path / "first.csv", GOOD_CSV), write_file(tmp_path / "second.csv", OTHER_FLIGHTS)
    run = tmp_path / "run"
    assert cli("train", "--tasks", f"{first},{second}", *SEQUENCE, "--replay", "8", "--cl-head", "shared", "--eval-future",
               "--output-dir", run) == 0
    first_texts = {line.split(",")[0] for line in GOOD_CSV.splitlines()[1:]}
    for name, texts in recorded_batches:
        from_first = sum(text in first_texts for text in texts)
        assert from_first == (len(texts) if name == "first" else len(texts) // 2)  # half of task 2's batches replayed
    block = json.loads((run / "metrics.json").read_text())["continual"]
    assert None not in block["R"][0]  # --eval-future: the second task scored after the first too
    heads = json.loads((run / "model" / "tasks.json").read_text())
    assert heads["head"] == "shared" and heads["tasks"]["first"]["rows"] == heads["tasks"]["second"]["rows"] == [0, 1]


def test_multitask_draws_each_batch_from_one_task_and_is_scored_at_its_end(tmp_path, recorded_batches):
    first, second = write_file(tmp_path / "first.csv", GOOD_CSV), write_file(tmp_path / "second.csv", OTHER_FLIGHTS)
    run = tmp_path / "run"
    assert cli("train", "--tasks", f"{first},{second}", *SEQUENCE, "--method", "multitask", "--output-dir", run) == 0
    second_texts = {line.split(",")[0] for line in OTHER_FLIGHTS.splitlines()[1:]}
    sources = [{text in second_texts for text in texts} for _, texts in recorded_batches]
    assert len(sources) == 8 and all(len(s) == 1 for s in sources) and {True, False} == set().union(*sources)
    block = json.loads((run / "metrics.json").read_text())["continual"]
    assert block["R"][0] == [None, None] and None not in block["R"][1]
    assert block["accuracy"]["AA"] == pytest.approx(sum(block["R"][1]) / 2)


def test_a_config_file_lists_the_tasks_with_their_names_and_test_files(tmp_path):
    first, second = write_file(tmp_path / "first.csv", GOOD_CSV), write_file(tmp_path / "second.csv", OTHER_FLIGHTS)
    config = write_file(tmp_path / "sequence.yaml", f"run:\n  tasks:\n    - {{name: old, train: {first}}}\n"
                                                     f"    - {{name: new, train: {second}, test: {first}}}\n  steps_per_task: 2\n")
    run = tmp_path / "run"
    assert cli("train", "--config", config, *TINY_RUN, "--cycles-per-task", "1", "--expert-r", "2", "--checkpoint-every", "0", "--output-dir", run) == 0
    block = json.loads((run / "metrics.json").read_text())["continual"]
    assert block["tasks"] == ["old", "new"]
    assert json.loads((run / "metrics.json").read_text())["steps"] == 4
