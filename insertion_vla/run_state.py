"""Where a run stands, as far as resuming it goes: the step, the LR schedule, the data order, the loss statistics.

A checkpoint stores these fields next to the weights (`to_dict()`); `from_checkpoint` reads them back. The data
order, the loss history and the best validation loss continue only on the same training files: other data
(fine-tuning on real episodes, files added) starts them afresh.
"""

import math
from collections import deque
from dataclasses import dataclass


@dataclass
class RunState:
    step: int  # optimizer steps done
    schedule_start: int  # the step where warmup and decay began: 0, or where --reset_scheduler restarted them
    epoch: int  # the data order: sampler epoch, and how many of its batches are used
    batch_in_epoch: int
    loss_history: deque  # the last loss_spike_window finite losses; the spike detector appends to this deque
    best_val_loss: float
    wandb_run_id: str | None
    train_files: list[str]
    validation_files: list[str]

    @classmethod
    def fresh(cls, train_files: list[str], validation_files: list[str], loss_window: int) -> "RunState":
        return cls(step=0, schedule_start=0, epoch=0, batch_in_epoch=0, loss_history=deque(maxlen=loss_window),
                   best_val_loss=math.inf, wandb_run_id=None, train_files=train_files, validation_files=validation_files)

    @classmethod
    def from_checkpoint(cls, ckpt: dict, train_files: list[str], validation_files: list[str], loss_window: int, *,
                        reset_scheduler: bool = False) -> "RunState":
        """The state `ckpt` was saved in, continued on this run's split (`train_files`, `validation_files`).

        reset_scheduler: warmup and decay start again at the checkpoint's step.
        """
        state = cls.fresh(train_files, validation_files, loss_window)
        state.step = ckpt["step"]
        state.schedule_start = state.step if reset_scheduler else ckpt["schedule_start"]
        state.wandb_run_id = ckpt.get("wandb_run_id")
        if ckpt["train_files"] == train_files:
            state.epoch, state.batch_in_epoch = ckpt["epoch"], ckpt["batch_in_epoch"]
            state.loss_history.extend(ckpt["loss_history"])
            state.best_val_loss = ckpt["best_val_loss"]
        return state

    def to_dict(self) -> dict:
        """The checkpoint's entries for this state (plain values only: checkpoints load with weights_only=True)."""
        return {
            "step": self.step, "schedule_start": self.schedule_start, "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch, "validation_files": self.validation_files,
            "train_files": self.train_files, "loss_history": list(self.loss_history),
            "best_val_loss": self.best_val_loss, "wandb_run_id": self.wandb_run_id,
        }
