"""The validation split (held-out episodes) and the validation figures computed on it.

The split is a seeded choice of whole episodes, stored by file path in every checkpoint and reused on resume,
so files added to the dataset later never leak into validation. The loss uses fixed noise and time per
sample, so it moves only when the model does; the MAE compares fully sampled action chunks with the
recorded actions in joint units.
"""

import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset, default_collate

from episode_format.atomic import atomic_write_text
from insertion_vla import distributed as dist
from insertion_vla.dataset import BAD_FRAMES, bad_frames_of
from insertion_vla.errors import UserError
from insertion_vla.policy import compute_losses, predict_action_chunk, prepare_batch, validation_noise_and_time


def split_episodes(paths: list[Path], num_val: int, seed: int, stored_val_paths=None) -> tuple[list[int], list[int]]:
    """-> (train indices, validation indices) into `paths`.

    With `stored_val_paths` (from a checkpoint) the same files stay held out; files that are gone are
    dropped from validation, new files go to training. When none of them is here (fine-tuning on other
    data), a new split is drawn.
    """
    stored = set(stored_val_paths or ())
    val = [i for i, p in enumerate(paths) if str(p) in stored]
    if not val:
        if num_val >= len(paths):
            raise UserError(
                f"validation.num_episodes={num_val} but the dataset has only {len(paths)} episodes: at least one "
                f"must remain for training. Lower validation.num_episodes or set validation.enable=false."
            )
        val = sorted(np.random.default_rng(seed).choice(len(paths), size=num_val, replace=False).tolist())
    held_out = set(val)
    return [i for i in range(len(paths)) if i not in held_out], val


def write_validation_list(path: Path, val_indices: list[int], paths: list[Path]):
    lines = [f"{i}\t{paths[i]}" for i in val_indices]
    atomic_write_text(path, "# episode_index\tfile\n" + "\n".join(lines) + "\n")


def validation_subset(dataset, max_samples: int | None):
    """All held-out frames, or `max_samples` of them spread evenly over the episodes."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    return Subset(dataset, np.linspace(0, len(dataset) - 1, max_samples).round().astype(int).tolist())


@torch.no_grad()
def validate(policy, preprocessor, postprocessor, dataset, *, info, batch_size, seed, lambda_temporal,
             autocast, bad_frames: list | None = None) -> dict:
    """val/loss, val/action_loss, val/temporal_loss, per-joint MAE (rad and deg) and val/bad_frames (frames met
    that the dataset replaced), over every rank's shard. `bad_frames` receives this rank's records of them."""
    bad_frames = [] if bad_frames is None else bad_frames
    shard = Subset(dataset, list(range(info.rank, len(dataset), info.world_size)))
    loader = DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=0)
    was_training = policy.training
    policy.eval()
    sums = {"loss": 0.0, "action_loss": 0.0, "temporal_loss": 0.0, "samples": 0.0}
    abs_err, counts = None, None
    for raw in loader:
        if BAD_FRAMES in raw:
            bad_frames += bad_frames_of(raw)
        batch = prepare_batch(raw, preprocessor, info.device)
        noise, time = validation_noise_and_time(policy, raw["episode_index"], raw["frame_index"], seed)
        with autocast():
            losses = compute_losses(policy, batch, lambda_temporal, noise=noise, time=time)
            predicted = predict_action_chunk(policy, batch, postprocessor, noise=noise).float().cpu()
        n = len(raw["episode_index"])
        for key in ("loss", "action_loss", "temporal_loss"):
            sums[key] += losses[key].item() * n
        sums["samples"] += n
        in_episode = (~raw["action_is_pad"]).unsqueeze(-1).float()  # (B, T, 1)
        err = ((predicted - raw["action"]).abs() * in_episode).sum(dim=(0, 1))
        cnt = in_episode.sum(dim=(0, 1)).expand_as(err)
        abs_err = err if abs_err is None else abs_err + err
        counts = cnt if counts is None else counts + cnt
    policy.train(was_training)

    action_dim = dataset.dataset.action_dim if isinstance(dataset, Subset) else dataset.action_dim
    abs_err = abs_err if abs_err is not None else torch.zeros(action_dim)
    counts = counts if counts is not None else torch.zeros(action_dim)
    totals = dist.sum_over_ranks([sums["loss"], sums["action_loss"], sums["temporal_loss"], sums["samples"],
                                  *abs_err.tolist(), *counts.tolist(), float(len(bad_frames))], info.device)
    samples = max(totals[3], 1.0)
    mae = [e / max(c, 1.0) for e, c in zip(totals[4:4 + action_dim], totals[4 + action_dim:])]
    return {
        "val/loss": totals[0] / samples, "val/action_loss": totals[1] / samples,
        "val/temporal_loss": totals[2] / samples,
        "val/action_mae_rad": mae, "val/action_mae_deg": [math.degrees(x) for x in mae],
        "val/bad_frames": totals[-1],
    }


@torch.no_grad()
def predict_episode(policy, preprocessor, postprocessor, dataset, position: int, device, autocast) -> tuple:
    """Open-loop replay of one held-out episode: a chunk predicted every n_action_steps frames from the
    recorded observations, laid end to end -> (true actions (T, A), predicted (T, A))."""
    length = dataset.lengths[position]
    step = policy.config.n_action_steps
    true, pred = [], []
    was_training = policy.training
    policy.eval()
    for t in range(0, length, step):
        raw = default_collate([dataset[dataset.sample_index(position, t)]])
        with autocast():
            chunk = predict_action_chunk(policy, prepare_batch(raw, preprocessor, device), postprocessor)
        keep = min(step, length - t)
        pred.append(chunk[0, :keep].float().cpu().numpy())
        true.append(raw["action"][0, :keep].numpy())
    policy.train(was_training)
    return np.concatenate(true), np.concatenate(pred)
