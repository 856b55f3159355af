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

With tasks (tasks.py), each `train()` call is one task: call `cascade.begin_task(name, N)` before it, or
name the tasks, `LoRASCCallback(cascade, tasks=["a", "b"])`, for the callback to plan each one as above.
At the end of each `train()` the task ends: the backbone is clean for an evaluation between tasks (with
`task_boundary="keep"` the expert goes on unmerged: call `cascade.finish()` after the last task).

Before each optimizer step the callback adds O-LoRA's gradient (`olora_lambda`, olora.py); the Trainer
has clipped the gradients by then, so the penalty's part is not clipped (the plain loop clips after it).

Every log of the Trainer gains `lorasc/cycle` (the cycle of the last step) and, with O-LoRA,
`lorasc/olora_penalty` (the last step's penalty); the first log after a
merge also gains `lorasc/experts_merged` and `lorasc/slow_step` (LoRASC.cycle_metrics), in the
Trainer's `state.log_history` and in what the callbacks after this one receive.

transformers calls the `report_to` trackers' callbacks (TensorBoard, W&B, …) before the user's, so
they log before `on_log` adds these keys. For the trackers to see them, put LoRASCTrainerMixin in
front of the Trainer class, as transformers documents for changing `Trainer.log`:

    class CascadeTrainer(LoRASCTrainerMixin, Trainer): ...      # or (LoRASCTrainerMixin, SFTTrainer)
"""

from __future__ import annotations

import math
from typing import Iterable

from transformers import TrainerCallback

from .cascade import LoRASC

MERGE_KEYS = ("lorasc/experts_merged", "lorasc/slow_step")  # cycle_metrics' keys that change only at a merge


class LoRASCCallback(TrainerCallback):
    def __init__(self, cascade: LoRASC, tasks: Iterable[str] = ()):
        """`tasks`: the names of the tasks that the next `train()` calls train, one each, in order."""
        self.cascade, self.merges_logged, self.tasks = cascade, 0, list(tasks)

    def on_train_begin(self, args, state, control, train_dataloader=None, optimizer=None, **kwargs):
        if self.cascade.tasks.running:
            return
        steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps) if train_dataloader else None
        if self.tasks:
            self.cascade.begin_task(self.tasks.pop(0), state.max_steps, steps_per_epoch=steps_per_epoch, optimizer=optimizer)
        elif self.cascade.tasks:
            raise RuntimeError("this train() has no task: call cascade.begin_task(name, total_steps) before it, "
                               "or name one more task in LoRASCCallback(cascade, tasks=[...])")
        elif not self.cascade.ends:
            self.cascade.begin(state.max_steps, steps_per_epoch)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        """After the Trainer clipped the gradients (`max_grad_norm`): O-LoRA's gradient is added unclipped."""
        self.cascade.before_optimizer_step()

    def on_step_end(self, args, state, control, optimizer=None, **kwargs):
        self.cascade.step(optimizer)

    def log_metrics(self) -> dict[str, float]:
        """The keys the next log gains: the cycle (and O-LoRA's last penalty), and the merge figures once after each merge."""
        metrics = self.cascade.cycle_metrics()
        if metrics["lorasc/experts_merged"] == self.merges_logged:  # no merge since the last log
            metrics = {key: value for key, value in metrics.items() if key not in MERGE_KEYS}
        self.merges_logged = metrics.get("lorasc/experts_merged", self.merges_logged)
        return metrics

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "lorasc/cycle" in logs:  # LoRASCTrainerMixin added them before any callback ran
            return
        metrics = self.log_metrics()
        logs.update(metrics)
        if state.log_history and state.log_history[-1].get("step") == state.global_step:  # the Trainer's copy of these logs
            state.log_history[-1].update(metrics)

    def on_train_end(self, args, state, control, **kwargs):
        if self.cascade.tasks.running:
            self.cascade.end_task()
        else:
            self.cascade.finish()


class LoRASCTrainerMixin:
    """`class CascadeTrainer(LoRASCTrainerMixin, Trainer)`: every log carries the LoRASCCallback's keys
    before any callback, the `report_to` trackers included, sees it."""

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        for callback in self.callback_handler.callbacks:
            if isinstance(callback, LoRASCCallback):
                logs.update(callback.log_metrics())
        super().log(logs, *args, **kwargs)
