"""--chat-template auto|none: a causal LM's examples as the user and assistant turns of the tokenizer's chat template,
the loss on the assistant's turn only (as TRL's SFTTrainer), and `messages` data (TRL's conversational format)."""

import json

import pytest
import torch
from conftest import assert_error_line, cli, refused, tiny_llama, word_tokenizer, write_file

from lorasc.run.batches import IGNORED, encode
from lorasc.run.data_files import Example, read_examples

# Role markers and the end of a turn are words of the tiny vocabulary: w6 system, w3 user, w4 assistant, w5 end of turn.
# (Words starting "w1" or "w2" are avoided: the EOS w1 and the pad w2 are special tokens, matched inside words.)
TEMPLATE = ("{% for m in messages %}{{ {'system': 'w6', 'user': 'w3', 'assistant': 'w4'}[m['role']] }} {{ m['content'] }} w5 {% endfor %}"
            "{% if add_generation_prompt %}w4 {% endif %}")


def chat_tokenizer():
    tokenizer = word_tokenizer()
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def test_the_loss_mask_covers_exactly_the_assistant_tokens_of_a_hand_checked_example():
    batch = encode(chat_tokenizer(), [Example("w40 w41", "w50 w51")], "causal-lm", max_length=64, chat_template="auto")
    # w3 w40 w41 w5 | w4 w50 w51 w5: the user's turn and the assistant's marker carry no loss, its words and end of turn do
    assert batch["input_ids"].tolist() == [[3, 40, 41, 5, 4, 50, 51, 5]]
    assert batch["labels"].tolist() == [[IGNORED] * 5 + [50, 51, 5]]
    assert batch["attention_mask"].tolist() == [[1] * 8]


def test_earlier_turns_are_part_of_the_prompt():
    examples = [Example("w40", "w50", (("system", "w60"),)), Example("w40 w41", "w50 w51")]
    batch = encode(chat_tokenizer(), examples, "causal-lm", max_length=64, chat_template="auto")
    assert batch["input_ids"].tolist() == [[6, 60, 5, 3, 40, 5, 4, 50, 5], [3, 40, 41, 5, 4, 50, 51, 5, 2]]  # w2: padding
    assert batch["labels"].tolist() == [[IGNORED] * 7 + [50, 5], [IGNORED] * 5 + [50, 51, 5, IGNORED]]


def test_none_and_a_tokenizer_without_a_template_give_the_plain_rendering():
    plain = {"input_ids": [[40, 41, 50, 51, 1]], "attention_mask": [[1] * 5], "labels": [[IGNORED, IGNORED, 50, 51, 1]]}  # w1: EOS
    examples = [Example("w40 w41", "w50 w51")]
    for tokenizer, setting in ((chat_tokenizer(), "none"), (word_tokenizer(), "auto")):
        batch = encode(tokenizer, examples, "causal-lm", max_length=64, chat_template=setting)
        assert {name: tensor.tolist() for name, tensor in batch.items()} == plain


def test_the_mask_is_the_one_trls_sft_trainer_computes(tmp_path):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tokenizer = chat_tokenizer()
    data = Dataset.from_list([{"prompt": [{"role": "system", "content": "w60"}, {"role": "user", "content": "w40 w41"}],
                               "completion": [{"role": "assistant", "content": "w50 w51"}]}])
    trainer = SFTTrainer(model=tiny_llama(), args=SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False), train_dataset=data,
                         processing_class=tokenizer)
    trl = trainer.train_dataset[0]
    ours = encode(tokenizer, [Example("w40 w41", "w50 w51", (("system", "w60"),))], "causal-lm", max_length=64, chat_template="auto")
    assert ours["input_ids"][0].tolist() == trl["input_ids"]
    assert ours["labels"][0].tolist() == trl["labels"]


def jsonl(path, rows):
    return write_file(path, "\n".join(json.dumps(row) for row in rows) + "\n")


def turns(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


def test_messages_give_the_examples_of_the_same_prompt_response_data(tmp_path):
    pairs = [("Capital of France?", "Paris"), ("Capital of Peru?", "Lima")]
    plain = jsonl(tmp_path / "plain.jsonl", [{"text": p, "label": r} for p, r in pairs])
    chats = jsonl(tmp_path / "chats.jsonl", [{"messages": turns(("user", p), ("assistant", r))} for p, r in pairs])
    assert read_examples(chats, "text", "label", ()) == read_examples(plain, "text", "label", ())
    longer = jsonl(tmp_path / "longer.jsonl", [{"messages": turns(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"), ("user", "Capital?"),
                                                                   ("assistant", "Paris"))}])
    assert read_examples(longer, "text", "label", ())[0] == [Example("Capital?", "Paris", (("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")))]


def test_messages_in_parquet_and_a_saved_dataset(tmp_path):
    from datasets import Dataset

    data = Dataset.from_list([{"messages": turns(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello"))}])
    data.to_parquet(tmp_path / "chats.parquet")
    data.save_to_disk(tmp_path / "saved")
    for path in (tmp_path / "chats.parquet", tmp_path / "saved"):
        assert read_examples(path, "text", "label", ())[0] == [Example("Hi", "Hello", (("system", "Be brief."),))]


CAUSAL_LM = ["--task", "causal-lm", "--n-test", "2", "--batch-size", "2", "--max-steps", "1", "--no-progress"]
BAD_MESSAGES = {
    "not a list": ({"messages": "user: hi"}, ["data.jsonl:2 has a str in 'messages', not a list of turns", '[{"role": "user"']),
    "a turn without a role": ({"messages": [{"content": "hi"}, {"role": "assistant", "content": "x"}]}, ["data.jsonl:2 has no 'role' in turn 1"]),
    "a turn that is text": ({"messages": ["hi", {"role": "assistant", "content": "x"}]}, ["data.jsonl:2 has a str as turn 1 of 'messages'"]),
    "content not text": ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 3}]},
                         ["data.jsonl:2 has a non-text (int) 'content' in turn 2"]),
    "no final assistant turn": ({"messages": turns(("user", "hi"), ("assistant", "x"), ("user", "and?"))},
                                ["data.jsonl:2 has 'messages' that end with the roles ['assistant', 'user']", "end the conversation as"]),
    "no prompt": ({"messages": turns(("assistant", "x"))}, ["end with the roles ['assistant']"]),
    "empty response": ({"messages": turns(("user", "hi"), ("assistant", " "))}, ["data.jsonl:2 has an empty assistant turn", "fill it in"]),
    "a row without messages": ({"prompt": "hi"}, ["data.jsonl:2 has no 'messages' (it has ['prompt'])"]),
}


@pytest.mark.parametrize("name", BAD_MESSAGES)
def test_bad_messages_are_refused_in_one_line(name, tmp_path, capsys):
    row, fragments = BAD_MESSAGES[name]
    data = jsonl(tmp_path / "data.jsonl", [{"messages": turns(("user", "hi"), ("assistant", "hello"))}, row])
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", tmp_path / "run", *CAUSAL_LM], *fragments)


@pytest.mark.parametrize("setting", ["auto", "none"])
def test_a_conversation_is_refused_where_no_chat_template_renders_it(setting, tmp_path, capsys):
    """MiniLM's tokenizer has no chat template: plain text cannot hold a system turn."""
    data = jsonl(tmp_path / "data.jsonl", [{"messages": turns(("system", "Be brief."), ("user", "hi"), ("assistant", "hello"))}] * 4)
    refused(capsys, tmp_path, ["train", "--data", data, "--output-dir", tmp_path / "run", "--chat-template", setting, *CAUSAL_LM],
            "a conversation of 3 turns", "--chat-template auto")


def test_a_chat_template_that_is_not_a_choice_is_refused(tmp_path, capsys):
    refused(capsys, tmp_path, ["train", "--chat-template", "bogus", "--output-dir", tmp_path / "run"], "--chat-template", "'bogus'")
    config = write_file(tmp_path / "settings.yaml", "run:\n  chat_template: chatml\n")
    assert cli("train", "--config", config, "--output-dir", tmp_path / "run") == 2
    assert_error_line(capsys.readouterr().err, "chat_template='chatml' is not allowed: one of ('auto', 'none')")


@pytest.mark.slow
def test_a_chat_model_trains_and_evaluates_on_conversations(tmp_path):
    """A tiny Llama whose tokenizer has a chat template, on multi-turn `messages`: plain text (encode's default) would
    refuse them, so training and evaluation (of the held-out test rows) both render with the run's setting, which
    config.yaml records."""
    folder = tmp_path / "llama"
    tiny_llama().save_pretrained(folder)
    chat_tokenizer().save_pretrained(folder)
    gen = torch.Generator().manual_seed(0)
    words = lambda n: " ".join(f"w{i}" for i in torch.randint(30, 96, (n,), generator=gen).tolist())  # noqa: E731
    rows = [{"messages": turns(("system", words(2)), ("user", words(3)), ("assistant", words(2)))} for _ in range(12)]
    run = tmp_path / "run"
    assert cli("train", "--task", "causal-lm", "--model", folder, "--data", jsonl(tmp_path / "data.jsonl", rows), "--output-dir", run,
               "--num-cycles", "2", "--max-steps", "4", "--warmup-steps", "1", "--batch-size", "4", "--no-progress") == 0
    assert "chat_template: auto" in (run / "config.yaml").read_text()
    assert json.loads((run / "metrics.json").read_text())["test"]["loss"] > 0
