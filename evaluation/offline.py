"""Offline evaluation (--episodes_from): a policy's predictions along recorded episodes (real robot or simulator)
compared with the recorded actions, per joint in degrees, with one trajectory plot per episode. No simulation."""

import contextlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from episode_format.reader import discover_episodes
from evaluation.policy_io import LoadedPolicy
from insertion_vla.dataset import EpisodeDataset
from insertion_vla.episodes import keys_from_config
from insertion_vla.errors import UserError
from insertion_vla.localizer import estimator_from_config
from insertion_vla.plots import plot_trajectories
from insertion_vla.validation import predict_episode


def recorded_episode_paths(source) -> list[Path]:
    """A folder (searched recursively), a single episode file, or a validation_episodes.txt listing files."""
    source = Path(source)
    if source.is_dir():
        return discover_episodes(source, source="--episodes_from")
    if source.suffix in (".h5", ".hdf5") and source.is_file():
        return [source]
    if source.suffix == ".txt" and source.is_file():
        lines = [line for line in source.read_text().splitlines() if line.strip() and not line.startswith("#")]
        paths = [Path(line.split("\t")[-1]) for line in lines]
        missing = [str(p) for p in paths if not p.is_file()]
        if not paths or missing:
            raise UserError(f"--episodes_from {source}: " + (f"files not found: {missing[:5]} (paths are relative to "
                            "the directory training ran in; run from there)" if missing else "lists no episode"))
        return paths
    raise UserError(f"--episodes_from {source}: not a folder of episodes, an .h5/.hdf5 file or a "
                    "validation_episodes.txt")


def evaluate_recorded(loaded: LoadedPolicy, paths: list[Path], output_dir: Path, n_action_steps: int | None,
                      device: str) -> tuple[dict, list[dict]]:
    """Open-loop: chunks predicted along each recorded episode every n_action_steps frames (predict_episode),
    compared with the recorded actions -> per-joint MAE in degrees; one trajectory plot per episode."""
    policy, cfg = loaded.policy, loaded.train_cfg
    if n_action_steps is not None:
        if not 1 <= n_action_steps <= policy.config.chunk_size:
            raise UserError(f"--n_action_steps must be in [1, {policy.config.chunk_size}], got {n_action_steps}")
        policy.config.n_action_steps = n_action_steps
    side = policy.config.resize_imgs_with_padding[0]
    dataset = EpisodeDataset(paths, keys_from_config(cfg["dataset"]), horizon=policy.config.chunk_size,
                             image_size=(side, side), task_instruction=cfg["dataset"]["task_instruction"],
                             estimator=estimator_from_config(cfg["dataset"]))
    rows, abs_sum, frames = [], np.zeros(dataset.action_dim), 0
    for position in tqdm(range(len(paths)), desc="episodes", unit="ep", dynamic_ncols=True, leave=False):
        true, pred = predict_episode(loaded.policy, loaded.preprocessor, loaded.postprocessor, dataset, position,
                                     device, contextlib.nullcontext)
        error = np.degrees(np.abs(pred - true))
        abs_sum += error.sum(axis=0)
        frames += len(error)
        plot = output_dir / "plots" / f"{position:03d}_{paths[position].stem}.png"
        plot_trajectories([(paths[position].stem, true, pred)], plot,
                          f"{paths[position].name}: recorded vs. predicted (chunks every {policy.config.n_action_steps} frames)")
        mae = error.mean(axis=0)
        rows.append({"episode": str(paths[position]), "frames": len(error),
                     **{f"mae_q{j + 1}_deg": float(v) for j, v in enumerate(mae)}, "mae_mean_deg": float(mae.mean()),
                     "plot": str(plot)})
    mae = abs_sum / frames
    return {"episodes": len(paths), "frames": frames, "mae_deg": mae.tolist(), "mae_mean_deg": float(mae.mean())}, rows
