import json

import pytest
import torch
from peft import LoraConfig, PeftModel
from transformers import AutoModelForSequenceClassification

from lorasc import LoRASC, LoRASCConfig, delta_ranks, export_compressed, export_dense, export_stacked
from lorasc.run.batches import encode

pytestmark = pytest.mark.slow


def trained_cascade(model, batches, use_dora=False, cycles=3, steps=2):
    expert = LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], task_type="SEQ_CLS", use_dora=use_dora)
    cascade = LoRASC(model, LoRASCConfig(slow_alpha=0.5, noise_lambda=0.15, cycle_steps=steps, expert=expert))
    cascade.begin(total_steps=cycles * steps)
    optimizer = cascade.optimizer(lr=5e-3)
    for batch in batches[: cycles * steps]:
        cascade.model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        cascade.step(optimizer)
    return cascade


@pytest.fixture(scope="module")
def inputs(tokenizer, tweets):
    batch = encode(tokenizer, tweets.test[:16], "classification", max_length=48)
    del batch["labels"]
    return batch


def logits(model, inputs):
    with torch.no_grad():
        return model.eval()(**inputs).logits


def fresh_base(path):
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)


def test_dense_and_stacked_exports_reproduce_the_cascade(minilm, minilm_path, tweet_batches, inputs, tmp_path):
    cascade = trained_cascade(minilm, tweet_batches)
    expected = logits(cascade.model, inputs)
    assert not torch.allclose(expected, logits(fresh_base(minilm_path), inputs), atol=1e-3)  # training changed something

    dense = AutoModelForSequenceClassification.from_pretrained(export_dense(cascade, tmp_path / "dense"))
    assert type(dense).__name__ == "BertForSequenceClassification"  # plain transformers, no PEFT wrapper
    assert (logits(dense, inputs) - expected).abs().max() <= 1e-4

    stacked_dir = export_stacked(cascade, tmp_path / "stacked")
    assert json.loads((stacked_dir / "adapter_config.json").read_text())["r"] == 3 * 2
    vanilla = PeftModel.from_pretrained(fresh_base(minilm_path), stacked_dir)
    assert (logits(vanilla, inputs) - logits(dense, inputs)).abs().max() <= 1e-4


def test_compressed_adapter_error_shrinks_with_rank(minilm, minilm_path, tweet_batches, inputs, tmp_path):
    cascade = trained_cascade(minilm, tweet_batches)
    mean_error = {}
    for rank in (1, 3, 6):
        errors = export_compressed(cascade, tmp_path / f"r{rank}", rank=rank)
        assert set(errors) == set(cascade.layers)
        assert json.loads((tmp_path / f"r{rank}" / "compression.json").read_text())["relative_error"] == pytest.approx(errors)
        mean_error[rank] = sum(errors.values()) / len(errors)
    assert mean_error[1] > mean_error[3] > mean_error[6]
    assert mean_error[6] < 1e-5  # rank T·r holds the whole delta
    full = PeftModel.from_pretrained(fresh_base(minilm_path), tmp_path / "r6")
    assert (logits(full, inputs) - logits(cascade.model, inputs)).abs().max() <= 1e-4


def test_dora_exports_dense_and_compressed_but_no_stacked_adapter(minilm, minilm_path, tweet_batches, inputs, tmp_path):
    cascade = trained_cascade(minilm, tweet_batches, use_dora=True)
    with pytest.raises(ValueError, match="expert.use_dora=True has no exact stacked adapter"):
        export_stacked(cascade, tmp_path / "stacked")
    dense = AutoModelForSequenceClassification.from_pretrained(export_dense(cascade, tmp_path / "dense"))
    assert (logits(dense, inputs) - logits(cascade.model, inputs)).abs().max() <= 1e-4
    errors = export_compressed(cascade, tmp_path / "c", rank=4)  # the delta against W0, which the cascade keeps
    assert errors and all(0 <= e < 1 for e in errors.values())
    full = export_compressed(cascade, tmp_path / "full", rank=384)  # every singular value: the dense model's outputs
    assert max(full.values()) < 1e-5
    assert (logits(PeftModel.from_pretrained(fresh_base(minilm_path), tmp_path / "full"), inputs) - logits(dense, inputs)).abs().max() <= 1e-4


def test_exports_refuse_a_cascade_with_noise_on(minilm, tmp_path):
    cascade = LoRASC(minilm, LoRASCConfig(expert=LoraConfig(r=2, target_modules=["query"], task_type="SEQ_CLS")))
    cascade.start_cycle()
    for export in (export_dense, export_stacked):
        with pytest.raises(RuntimeError, match="call cascade.finish"):
            export(cascade, tmp_path / "x")
    with pytest.raises(RuntimeError, match="call cascade.finish"):
        delta_ranks(cascade)


def test_a_classifier_without_task_type_trains_its_head(minilm, tweet_batches):
    """PEFT freezes a new head unless the task type names it; the engine infers it and says so."""
    with pytest.warns(UserWarning, match="expert.task_type=None on a BertForSequenceClassification: using 'SEQ_CLS'"):
        cascade = LoRASC(minilm, LoRASCConfig(num_cycles=1, expert=LoraConfig(r=2, target_modules=["query"])))
    head = {n: p for n, p in cascade.head_params.items() if "classifier" in n}
    assert head and all(p.requires_grad for p in head.values())
    before = {n: p.detach().clone() for n, p in head.items()}
    cascade.begin(total_steps=1)
    optimizer = cascade.optimizer(lr=1e-2)
    cascade.model(**tweet_batches[0]).loss.backward()
    optimizer.step()
    assert all(not torch.equal(before[n], p) for n, p in head.items())


def test_the_stacked_adapter_names_its_task_and_loads_with_auto_peft(tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    from conftest import tiny_llama, token_batches, train_cascade

    tiny_llama().save_pretrained(tmp_path / "base")
    cascade = LoRASC(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                     LoRASCConfig(slow_alpha=0.5, cycle_steps=2, expert=LoraConfig(r=2, target_modules=["q_proj", "v_proj"])))
    cascade.begin(total_steps=4)
    train_cascade(cascade, cascade.optimizer(lr=1e-2), token_batches(4))
    adapter = export_stacked(cascade, tmp_path / "adapter")
    assert json.loads((adapter / "adapter_config.json").read_text())["task_type"] == "CAUSAL_LM"
    loaded = AutoPeftModelForCausalLM.from_pretrained(adapter)
    ids = token_batches(1)[0]["input_ids"]
    with torch.no_grad():
        assert (loaded(input_ids=ids).logits - cascade.model(input_ids=ids).logits).abs().max() <= 1e-4
