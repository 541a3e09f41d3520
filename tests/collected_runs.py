"""Episodes collected by `python -m sim.collect` and a tiny SmolVLA trained on fixed-tier ones, shared by
test_alignment.py and test_learning.py.

Each is made once per pytest process (cached here, so that both modules share it): collecting renders every frame
(about 25 s an episode at 64x48 on a loaded 2-core machine) and the training run takes about a minute.
"""

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from train_runs import ROOT, make_run_dir, train

FIXED_TIER = ("--phantom_x_range", "0", "--phantom_y_min", "0", "--phantom_y_max", "0", "--phantom_yaw_range_deg", "0")
FIXED_TIER_EPISODES = 3  # two to train on, one held out
FIXED_TIER_STEPS = 600
# The training of the fixed-tier run (train_runs.make_run_dir's tiny config otherwise): chunks of 10 and a high
# learning rate, so that a minute of CPU fits the one trajectory closely.
FIXED_TIER_TRAINING = {
    "dataset": {"horizon": 10},
    "policy": {"chunk_size": 10, "n_action_steps": 10, "num_steps": 10},
    "training": {"steps": FIXED_TIER_STEPS, "batch_size": 8, "log_freq": 100, "save_freq": FIXED_TIER_STEPS},
    "validation": {"num_episodes": 1, "val_freq": FIXED_TIER_STEPS, "max_samples": None, "batch_size": 16,
                   "plot_episodes": 1},
    "scheduler": {"num_warmup_steps": 20, "num_decay_steps": FIXED_TIER_STEPS, "decay_lr": 5e-5},
    "optimizer": {"lr": 3e-3},
}

_made = {}


def _once(name, make):
    if name not in _made:
        _made[name] = make()
    return _made[name]


def collect(out: Path, episodes: int, *flags: str) -> list[Path]:
    """`python -m sim.collect` into `out` at 64x48 -> the episode files in order."""
    res = subprocess.run([sys.executable, "-m", "sim.collect", "--episodes", str(episodes), "--out", str(out),
                          "--width", "64", "--height", "48", *flags],
                         cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return sorted(out.glob("episode_*.h5"))


def randomized_episode(tmp_path_factory) -> Path:
    """One episode as the collector makes them by default (phantom placement and domain randomization on)."""
    return _once("randomized", lambda: collect(tmp_path_factory.mktemp("randomized") / "data", 1)[0])


def fixed_tier_data(tmp_path_factory) -> Path:
    """The folder of FIXED_TIER_EPISODES episodes with the phantom at its nominal place (domain randomization on)."""
    def make():
        out = tmp_path_factory.mktemp("fixed") / "data"
        collect(out, FIXED_TIER_EPISODES, *FIXED_TIER)
        return out
    return _once("fixed", make)


@dataclass(frozen=True)
class TrainedRun:
    cfg: dict  # the resolved config the run saved
    checkpoint: Path  # the last step's
    train_files: list[Path]
    validation_files: list[Path]


def fixed_tier_run(tmp_path_factory, vlm_dir) -> TrainedRun:
    """train_smolvla_sim.py for FIXED_TIER_STEPS steps on the fixed-tier episodes, one held out."""
    def make():
        tmp = tmp_path_factory.mktemp("fixed_run")
        data = fixed_tier_data(tmp_path_factory)
        train(make_run_dir(tmp, vlm_dir, data=data, **FIXED_TIER_TRAINING))
        out = tmp / "out"
        held_out = [Path(line.split("\t")[1]) for line in (out / "validation_episodes.txt").read_text().splitlines()
                    if not line.startswith("#")]
        return TrainedRun(cfg=yaml.safe_load((out / "config.yaml").read_text()),
                          checkpoint=out / "checkpoints" / f"checkpoint_step_{FIXED_TIER_STEPS}.pt",
                          train_files=[p for p in sorted(data.glob("*.h5")) if p not in held_out],
                          validation_files=held_out)
    return _once("fixed_run", make)
