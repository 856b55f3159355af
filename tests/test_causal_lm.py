import json

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from lorasc.run.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_llama(tmp_path, minilm_path):
    """A small random Llama with MiniLM's tokenizer: the causal-LM plumbing, offline and fast."""
    folder = tmp_path / "llama"
    tokenizer = AutoTokenizer.from_pretrained(minilm_path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(folder)
    return folder


def test_causal_lm_instruction_tuning_end_to_end(tiny_llama, tmp_path, capsys):
    rows = [{"prompt": f"Capital of {c}?", "response": a} for c, a in [("France", "Paris"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Peru", "Lima")]] * 10
    data = tmp_path / "qa.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in rows))
    run = tmp_path / "run"
    code = main(["train", "--task", "causal-lm", "--model", str(tiny_llama), "--data", str(data), "--text-column", "prompt",
                 "--label-column", "response", "--output-dir", str(run), "--epochs", "6", "--num-cycles", "3",
                 "--lr", "1e-2", "--batch-size", "8", "--no-progress"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    config = (run / "config.yaml").read_text()
    assert "q_proj" in config and "v_proj" in config  # PEFT's default targets for Llama
    assert metrics["cycles"] == 3 and "accuracy" in metrics["test"] and "macro_f1" not in metrics["test"]
    log = (run / "log.csv").read_text().splitlines()
    first_loss, last_loss = float(log[1].split(",")[4]), float(log[-1].split(",")[4])
    assert last_loss < first_loss
    AutoModelForCausalLM.from_pretrained(run / "model")
    assert (run / "adapter" / "adapter_config.json").is_file()


def test_smollm2_by_name_on_the_built_in_bbc_topic_task(tmp_path, monkeypatch):
    """The packaged SmolLM2 (dequantized once into a model folder) trains on BBC topics as the next token."""
    from lorasc.run.assets import smollm2_path
    from lorasc.run.datasets import load_bbc_topics_lm

    monkeypatch.setenv("LORASC_CACHE", str(tmp_path / "cache"))
    data = load_bbc_topics_lm(n_train=4, n_val=4)
    assert data.train[0].text.startswith("Article: ") and data.train[0].text.endswith("\nTopic:")
    assert {e.label for e in data.test} == {" business", " entertainment", " politics", " sports", " tech"}
    run = tmp_path / "run"
    code = main(["train", "--task", "causal-lm", "--dataset", "bbc-news", "--model", "smollm2-135m", "--output-dir", str(run),
                 "--max-steps", "2", "--num-cycles", "2", "--batch-size", "4", "--n-train", "8", "--n-test", "4", "--n-ood", "4",
                 "--n-val", "4", "--split-seed", "0", "--max-length", "64", "--no-progress"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert all(0 < metrics[split]["loss"] < 20 for split in ("val", "test", "ood"))  # scored on the topic and end tokens
    assert AutoModelForCausalLM.from_pretrained(smollm2_path()).config.tie_word_embeddings  # the cached folder, reused


def test_causal_lm_accuracy_counts_an_example_only_when_its_whole_response_is_predicted(minilm_path):
    """Hand-set logits: a model that always predicts one token. Responses end with the eos token."""
    import torch

    from lorasc.run.data_files import Example
    from lorasc.run.metrics import evaluate
    from lorasc.run.run_config import RunConfig

    class AlwaysPredicts(torch.nn.Module):
        def __init__(self, token: int):
            super().__init__()
            self.token, self.bias = token, torch.nn.Parameter(torch.zeros(len(tokenizer)))

        def forward(self, input_ids, attention_mask):
            logits = self.bias.expand(*input_ids.shape, -1).clone()
            logits[..., self.token] = 1.0
            return type("Output", (), {"logits": logits})

    tokenizer = AutoTokenizer.from_pretrained(minilm_path, eos_token="[SEP]")
    cat = tokenizer("cat", add_special_tokens=False)["input_ids"]
    assert len(cat) == 1
    run = RunConfig(task="causal-lm")
    # always "cat": [cat, eos] and [cat, cat, eos] get 3 of 5 tokens right and no whole response
    metrics = evaluate(AlwaysPredicts(cat[0]), tokenizer, [Example("a", "cat"), Example("b", "cat cat")], run, 0)
    assert metrics["token_accuracy"] == pytest.approx(3 / 5) and metrics["accuracy"] == 0.0
    # always eos: [eos] is whole, [cat, eos] is not
    metrics = evaluate(AlwaysPredicts(tokenizer.eos_token_id), tokenizer, [Example("a", ""), Example("b", "cat")], run, 0)
    assert metrics["token_accuracy"] == pytest.approx(2 / 3) and metrics["accuracy"] == pytest.approx(1 / 2)


def test_the_loss_computes_logits_only_where_a_response_token_is_scored():
    """Right-padded prompts of three lengths: logits at the scored positions only, the same loss and
    predictions as from every position's logits (PEFT-wrapped), and the full path for a model that
    cannot keep positions."""
    import torch
    from conftest import tiny_llama as random_llama  # this file's own tiny_llama is a fixture with a tokenizer
    from peft import LoraConfig, get_peft_model

    from lorasc.run.batches import IGNORED, summed_loss

    model = get_peft_model(random_llama(), LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ids = torch.randint(3, 96, (3, 12), generator=torch.Generator().manual_seed(0))
    labels, mask = torch.full_like(ids, IGNORED), torch.zeros_like(ids)
    for row, (prompt, response) in enumerate([(4, 2), (7, 3), (9, 3)]):  # the rest of each row is padding
        labels[row, prompt : prompt + response] = ids[row, prompt : prompt + response]
        mask[row, : prompt + response] = 1
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}

    class AllPositions(torch.nn.Module):  # a causal LM whose forward has no logits_to_keep
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask)

    loss, logits, scored = summed_loss(model, batch, "causal-lm")
    full_loss, full_logits, full_scored = summed_loss(AllPositions(model), batch, "causal-lm")
    assert logits.shape[1] == 7 and full_logits.shape[1] == 11  # positions 3, 4 and 6 to 10 predict a response token
    assert torch.allclose(loss, full_loss, rtol=1e-5) and (scored != IGNORED).sum() == (full_scored != IGNORED).sum() == 8
    kept = full_scored != IGNORED
    assert torch.equal(logits.argmax(-1)[scored != IGNORED], full_logits.argmax(-1)[kept])


def test_a_dequantized_model_folder_is_published_once_whoever_finishes_first(tmp_path):
    """Ranks that start together each write a private copy; the first rename wins, a later one drops its copy."""
    from lorasc.run.assets import publish

    def written(name: str, marker: str):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(marker)
        return folder

    target = tmp_path / "model"
    publish(written("a.tmp", "first"), target)
    publish(written("b.tmp", "second"), target)  # another process, finishing later
    assert (target / "config.json").read_text() == "first" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (target / "config.json").unlink()  # a stale folder from an older version: replaced
    publish(written("c.tmp", "third"), target)
    assert (target / "config.json").read_text() == "third" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]
