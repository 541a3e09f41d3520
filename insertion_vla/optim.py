"""AdamW over the trainable parameters, and the learning rate as a pure function of the step."""

import math

import torch


def lr_at(step: int, schedule_start: int, peak_lr: float, scheduler_cfg: dict) -> float:
    """lerobot's cosine_decay_with_warmup curve: linear warmup from peak/(warmup+1) to peak_lr, cosine decay to
    decay_lr reached at num_decay_steps, then decay_lr.

    `step - schedule_start` counts from the start of the current schedule (0, or the step where
    --reset_scheduler restarted it). Unlike lerobot's scheduler, nothing is rescaled when
    training.steps < num_decay_steps: the curve is the one the config describes.
    """
    s = step - schedule_start
    warmup, decay, floor = scheduler_cfg["num_warmup_steps"], scheduler_cfg["num_decay_steps"], scheduler_cfg["decay_lr"]
    if s < warmup:
        start = 1 / (warmup + 1)
        return peak_lr * (start + (1 - start) * s / warmup)
    cosine = 0.5 * (1 + math.cos(math.pi * min(s, decay) / max(1, decay)))
    return floor + (peak_lr - floor) * cosine


def make_optimizer(model: torch.nn.Module, optimizer_cfg: dict) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        params, lr=optimizer_cfg["lr"], betas=tuple(optimizer_cfg["betas"]),
        eps=optimizer_cfg["eps"], weight_decay=optimizer_cfg["weight_decay"],
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float):
    for group in optimizer.param_groups:
        group["lr"] = lr
