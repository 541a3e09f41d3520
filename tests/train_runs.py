"""A tiny, real training setup for tests: episodes on disk, their stats, a config, and ways to run training."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from episode_files import write_dataset

ROOT = Path(__file__).resolve().parents[1]
PYTHON_BIN = Path(sys.executable).parent


def make_run_dir(tmp_path, vlm_dir, n_episodes=5, length=30, data=None, **config):
    """Episodes, stats and a config for a CPU run of a few seconds; `config` entries override sections.
    data: a folder of existing episodes to train on (none are written then)."""
    if data is None:
        data = tmp_path / "data"
        write_dataset(data, n=n_episodes, length=length)
    stats = tmp_path / "stats.yaml"
    subprocess.run([sys.executable, ROOT / "compute_dataset_stats.py", "--dataset_root", data, "--output", stats],
                   check=True, capture_output=True)
    cfg = {
        "output_dir": str(tmp_path / "out"),
        "normalization": {"stats_file": str(stats)},
        "dataset": {"root_dir": str(data)},
        "policy": {"vlm_model_name": str(vlm_dir), "pretrained_model_id": None, "load_vlm_weights": False,
                   "resize_imgs_with_padding": [64, 64], "num_steps": 2},
        "training": {"steps": 8, "batch_size": 4, "num_workers": 0, "log_freq": 2, "save_freq": 4, "device": "cpu"},
        "validation": {"num_episodes": 1, "val_freq": 4, "max_samples": 4, "batch_size": 4, "plot_episodes": 1},
        "scheduler": {"num_warmup_steps": 2, "num_decay_steps": 8},
        "optimizer": {"lr": 1e-3},
        "wandb": {"enable": False},
    }
    for section, values in config.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def env(**extra):
    e = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHON": str(PYTHON_BIN / "python"),
         "PATH": f"{PYTHON_BIN}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    e.update({k: str(v) for k, v in extra.items()})
    return e


def train(config, *args, check=True, **popen):
    """python train_smolvla_sim.py --config CONFIG ARGS; returns the CompletedProcess."""
    res = subprocess.run([sys.executable, ROOT / "train_smolvla_sim.py", "--config", config, *map(str, args)],
                         capture_output=True, text=True, env=env(), cwd=ROOT, **popen)
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def torchrun(config, *args, nproc=2, check=True, **extra_env):
    res = subprocess.run(["bash", ROOT / "train_smolvla_sim.sh", *map(str, args)], capture_output=True, text=True,
                         env=env(NUM_GPUS=nproc, CONFIG=config, **extra_env), cwd=ROOT)
    if check:
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return res


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same_weights(a, b):
    sa, sb = load(a)["model"], load(b)["model"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), f"{k} differs"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_vlm_dir):
    """A tiny SmolVLA trained for 8 steps on 64x48 episodes with the simulator's camera names: OUT/checkpoints with
    its checkpoints and final_hf. (Test modules import it with tiny_vlm_dir, the fixture it uses.)"""
    tmp = tmp_path_factory.mktemp("run")
    train(make_run_dir(tmp, tiny_vlm_dir, length=30))
    return tmp
