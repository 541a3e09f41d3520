"""Episodes collected by `python -m sim.collect` and tiny SmolVLAs trained on fixed-tier ones, shared by
test_alignment.py and test_learning.py.

Each is made once per pytest process (cached here, so that both modules share it): collecting renders every frame
(10-25 s an episode on a loaded 2-core machine) and each training run takes about a minute.
"""

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from train_runs import ROOT, make_run_dir, train

FIXED_TIER = ("--phantom_x_range", "0", "--phantom_y_min", "0", "--phantom_y_max", "0", "--phantom_yaw_range_deg", "0")
# Five to train on, one held out. The phantom never moves, so only the domain randomization tells the episodes
# apart: with two to train on, the held-out error depended on which one was held out (1.2-2.7 deg); with five it
# is 1.1-1.4 deg. 32x24 images (the policy sees them padded to 64x64) render in half the time of 64x48.
FIXED_TIER_EPISODES = 6
FIXED_TIER_SIZE = (32, 24)

# train_runs.make_run_dir's tiny config, changed where it matters (measured, see test_learning_happens).
LEARNING_STEPS = 250
LEARNING_TRAINING = {
    "policy": {"n_action_steps": 10, "num_steps": 10},
    "training": {"steps": LEARNING_STEPS, "batch_size": 8, "log_freq": 50, "save_freq": LEARNING_STEPS},
    "validation": {"num_episodes": 1, "val_freq": LEARNING_STEPS, "max_samples": 16, "plot_episodes": 1},
    "scheduler": {"num_warmup_steps": 20, "num_decay_steps": LEARNING_STEPS, "decay_lr": 5e-5},
    "optimizer": {"lr": 1e-3},
}
# Fitting one episode closely enough to tell frames 3 apart (see test_alignment's chunk test): chunks of 10, batches
# of 16 and a high learning rate; after 500 steps it told them apart at 0.77-0.89 of the frames, after 800 at 0.9.
OVERFIT_STEPS = 800
OVERFIT_TRAINING = {
    "dataset": {"horizon": 10},
    "policy": {"chunk_size": 10, "n_action_steps": 10, "num_steps": 10},
    "training": {"steps": OVERFIT_STEPS, "batch_size": 16, "log_freq": 100, "save_freq": OVERFIT_STEPS},
    "validation": {"enable": False},
    "scheduler": {"num_warmup_steps": 20, "num_decay_steps": OVERFIT_STEPS, "decay_lr": 5e-5},
    "optimizer": {"lr": 3e-3},
}

_made = {}


def _once(name, make):
    if name not in _made:
        _made[name] = make()
    return _made[name]


def collect(out: Path, episodes: int, *flags: str, size=(64, 48)) -> list[Path]:
    """`python -m sim.collect` into `out` -> the episode files in order."""
    res = subprocess.run([sys.executable, "-m", "sim.collect", "--episodes", str(episodes), "--out", str(out),
                          "--width", str(size[0]), "--height", str(size[1]), *flags],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return sorted(out.glob("episode_*.h5"))


def randomized_episode(tmp_path_factory) -> Path:
    """One 64x48 episode with the collector's default phantom placement and domain randomization, from a varied start
    (--start_joint_range_deg, as the placed tiers collect)."""
    return _once("randomized", lambda: collect(tmp_path_factory.mktemp("randomized") / "data", 1,
                                               "--start_joint_range_deg", "5")[0])


# vision_pretrain at the smallest that still runs every part of it: a tiny-vision VLM, 3 placements (and 3 near-target
# poses), 2 steps.
PLACED = ("--phantom_x_range", "0.01", "--phantom_y_min", "-0.01", "--phantom_y_max", "0.01")


def pretrained_vlm(tmp_path_factory) -> Path:
    """A tiny-vision VLM folder given weights, a localizer and a near-target one by insertion_vla.vision_pretrain (in
    this process)."""
    from insertion_vla.tiny_vlm import build_tiny_vlm
    from insertion_vla.vision_pretrain import main as pretrain

    def make():
        vlm_dir = build_tiny_vlm(tmp_path_factory.mktemp("pretrain") / "vlm", "tiny-vision")
        pretrain([str(vlm_dir), "--placements", "3", "--held_out", "2", "--steps", "2", "--workers", "1",
                  "--width", "64", "--height", "48", "--near_poses", "3", "--near_held_out", "2", *PLACED])
        return vlm_dir
    return _once("pretrained vlm", make)


def fixed_tier_data(tmp_path_factory, episodes: int = FIXED_TIER_EPISODES) -> Path:
    """The folder of fixed-tier episodes (the phantom at its nominal place, domain randomization on), holding the first
    `episodes` of them at least: sim.collect extends it as needed, so one that needs fewer collects only those."""
    folder = _once("fixed", lambda: tmp_path_factory.mktemp("fixed") / "data")

    def make():
        collect(folder, episodes, *FIXED_TIER, size=FIXED_TIER_SIZE)
        return folder
    return _once(f"fixed {episodes}", make)


@dataclass(frozen=True)
class TrainedRun:
    cfg: dict  # the resolved config the run saved
    checkpoint: Path  # the last step's
    train_files: list[Path]
    validation_files: list[Path]


def _trained(tmp, vlm_dir, data: Path, overrides: dict) -> TrainedRun:
    """train_smolvla_sim.py on the episodes in `data` with make_run_dir's config and `overrides`."""
    train(make_run_dir(tmp, vlm_dir, data=data, **overrides))
    out = tmp / "out"
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    listing = out / "validation_episodes.txt"
    held_out = [Path(line.split("\t")[1]) for line in listing.read_text().splitlines()
                if not line.startswith("#")] if listing.is_file() else []
    return TrainedRun(cfg=cfg, checkpoint=out / "checkpoints" / f"checkpoint_step_{cfg['training']['steps']}.pt",
                      train_files=[p for p in sorted(data.glob("*.h5")) if p not in held_out],
                      validation_files=held_out)


def learning_run(tmp_path_factory, vlm_dir) -> TrainedRun:
    """LEARNING_STEPS steps on the fixed-tier episodes, one held out."""
    return _once("learning", lambda: _trained(tmp_path_factory.mktemp("learning_run"), vlm_dir,
                                              fixed_tier_data(tmp_path_factory), LEARNING_TRAINING))


def overfit_run(tmp_path_factory, vlm_dir) -> TrainedRun:
    """OVERFIT_STEPS steps on the first fixed-tier episode alone."""
    def make():
        tmp = tmp_path_factory.mktemp("overfit_run")
        (tmp / "data").mkdir()
        shutil.copy(sorted(fixed_tier_data(tmp_path_factory, episodes=1).glob("*.h5"))[0], tmp / "data")
        return _trained(tmp, vlm_dir, tmp / "data", OVERFIT_TRAINING)
    return _once("overfit", make)
