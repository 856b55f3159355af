import pytest
import torch
from conftest import train_cascade
from peft import LoraConfig

from lorasc import LoRASC, LoRASCConfig, delta_ranks

pytestmark = pytest.mark.slow


def mean_loss(model, batches):
    model.eval()
    with torch.no_grad():
        return sum(model(**b).loss.item() for b in batches) / len(batches)


def test_lorasc_on_minilm_lowers_the_loss_and_grows_the_rank(minilm, tweet_batches):
    rank, epochs = 2, 4
    expert = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["query", "value"], task_type="SEQ_CLS")
    cascade = LoRASC(minilm, LoRASCConfig(slow_alpha=0.5, noise_lambda=0.15, expert=expert))
    before = mean_loss(cascade.model, tweet_batches)
    ends = cascade.begin(total_steps=epochs * len(tweet_batches), steps_per_epoch=len(tweet_batches))
    assert len(ends) == epochs  # one expert per epoch by default
    optimizer = cascade.optimizer(lr=3e-3)
    scheduler = cascade.scheduler(optimizer, warmup_steps=4)
    cascade.model.train()
    for _ in range(epochs):
        train_cascade(cascade, optimizer, tweet_batches, scheduler=scheduler)
    after = mean_loss(cascade.model, tweet_batches)
    ranks = delta_ranks(cascade)
    print(f"train loss {before:.3f} -> {after:.3f}; mean effective rank of the delta {sum(ranks.values()) / len(ranks):.2f} (r={rank})")
    assert after < before - 0.05
    assert min(ranks.values()) > rank  # every layer's delta outgrew one expert's rank
