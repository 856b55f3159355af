"""LoRASC inside transformers' `Trainer`: the same engine, driven by the Trainer's step events.

    cascade = LoRASC(model, config)
    cascade.begin(total_steps=N, steps_per_epoch=E)      # plan cycles, start the first expert
    optimizer = cascade.optimizer(lr=1e-3)
    trainer = Trainer(model=cascade.model, args=args, train_dataset=ds,
                      optimizers=(optimizer, cascade.scheduler(optimizer, warmup_steps=20)),
                      callbacks=[LoRASCCallback(cascade)])
    trainer.train()

Without `begin` and `optimizers=`, the callback plans one cycle per epoch from the Trainer's own
step count and the Trainer keeps its own (non-jagged) schedule.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback

from .cascade import LoRASC


class LoRASCCallback(TrainerCallback):
    def __init__(self, cascade: LoRASC):
        self.cascade = cascade

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        if not self.cascade.ends:
            steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps) if train_dataloader else None
            self.cascade.begin(state.max_steps, steps_per_epoch)

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.cascade.step(optimizer)

    def on_train_end(self, args, state, control, **kwargs):
        self.cascade.finish()
