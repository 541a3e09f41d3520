"""AdamW over the trainable parameters, and the learning rate as a pure function of the step."""

import math

import torch

from insertion_vla.errors import UserError


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


# optimizer.implementation -> torch's AdamW flags; "auto" picks fused or foreach by device (implementation_flags)
IMPLEMENTATIONS = {
    "fused": {"fused": True, "foreach": False},  # one kernel for all parameters
    "foreach": {"fused": False, "foreach": True},  # a few batched ops over all parameters
    "for_loop": {"fused": False, "foreach": False},  # one parameter at a time (torch's default on the CPU)
}


def implementation_flags(implementation: str, params: list[torch.Tensor]) -> dict:
    """AdamW's fused/foreach flags: "auto" is fused when every parameter is on CUDA, else foreach."""
    if implementation == "auto":
        implementation = "fused" if params and all(p.is_cuda for p in params) else "foreach"
    if implementation not in IMPLEMENTATIONS:
        raise UserError(f"optimizer.implementation={implementation!r}: choose one of {['auto', *IMPLEMENTATIONS]}")
    return IMPLEMENTATIONS[implementation]


def make_optimizer(model: torch.nn.Module, optimizer_cfg: dict) -> torch.optim.AdamW:
    """AdamW over the trainable parameters, run as optimizer.implementation says: the same updates (foreach and
    for_loop bit for bit on the CPU; fused rounds differently in the last bit). A loaded state dict (a checkpoint's,
    whichever implementation saved it) keeps this implementation: torch would take the saved flags along."""
    params = [p for p in model.parameters() if p.requires_grad]
    flags = implementation_flags(optimizer_cfg["implementation"], params)
    optimizer = torch.optim.AdamW(
        params, lr=optimizer_cfg["lr"], betas=tuple(optimizer_cfg["betas"]),
        eps=optimizer_cfg["eps"], weight_decay=optimizer_cfg["weight_decay"], **flags,
    )

    def keep_implementation(_optimizer, state_dict: dict) -> dict:
        return {**state_dict, "param_groups": [{**group, **flags} for group in state_dict["param_groups"]]}

    optimizer.register_load_state_dict_pre_hook(keep_implementation)
    return optimizer


def set_lr(optimizer: torch.optim.Optimizer, lr: float):
    for group in optimizer.param_groups:
        group["lr"] = lr
