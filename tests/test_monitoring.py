"""Validation split, loss spikes, non-finite steps and preemption, through the real CLI."""

import csv
import signal
import subprocess
import sys

import h5py
import numpy as np
from episode_files import write_episode
from fixtures_policy import tiny_vlm_dir  # noqa: F401
from train_runs import ROOT, env, load, make_run_dir, train


def add_bad_episode(tmp_path, action_value, length=3):
    """Episode 4: a short one whose actions are far outside the stats (computed without it)."""
    path = write_episode(tmp_path / "data" / "episode_0004.h5", length=length, seed=4)
    with h5py.File(path, "a") as f:
        f["action"][...] = np.float32(action_value)
    subprocess.run([sys.executable, ROOT / "compute_dataset_stats.py", "--dataset_root", tmp_path / "data",
                    "--output", tmp_path / "stats.yaml", "--max_episodes", "4"], check=True, capture_output=True)


def test_validation_split_is_held_out_listed_and_kept_on_resume(tmp_path, tiny_vlm_dir):  # noqa: F811
    config = make_run_dir(tmp_path, tiny_vlm_dir, n_episodes=6, length=12,
                          training={"steps": 2, "save_freq": 2}, validation={"num_episodes": 2, "val_freq": 2})
    train(config)
    out = tmp_path / "out"
    listed = (out / "validation_episodes.txt").read_text().splitlines()[1:]
    val_files = [line.split("\t")[1] for line in listed]
    assert len(val_files) == 2 and all(f.endswith(".h5") for f in val_files)
    ckpt = load(out / "checkpoints" / "checkpoint_step_2.pt")
    assert ckpt["validation_files"] == val_files and not set(val_files) & set(ckpt["train_files"])

    # new files sort before the old ones, shifting every index: the split still follows the files
    for i in range(3):
        write_episode(tmp_path / "data" / f"aaa_new_{i}.h5", length=12, seed=10 + i)
    train(config, "--resume", "auto", "--training.steps=4")
    ckpt = load(out / "checkpoints" / "checkpoint_step_4.pt")
    assert ckpt["validation_files"] == val_files
    assert all(str(tmp_path / "data" / f"aaa_new_{i}.h5") in ckpt["train_files"] for i in range(3))
    relisted = [line.split("\t")[1] for line in (out / "validation_episodes.txt").read_text().splitlines()[1:]]
    assert relisted == val_files

    res = train(config, "--validation.num_episodes=9", "--output_dir", tmp_path / "other", check=False)
    assert res.returncode == 1 and "validation.num_episodes=9 but the dataset has only 9 episodes" in res.stderr


def test_loss_spikes_are_logged_with_their_episodes_and_not_duplicated_on_resume(tmp_path, tiny_vlm_dir):  # noqa: F811
    config = make_run_dir(tmp_path, tiny_vlm_dir, n_episodes=4, length=30,
                          training={"steps": 30, "save_freq": 10, "log_freq": 10}, validation={"enable": False})
    add_bad_episode(tmp_path, action_value=20.0)
    res = train(config)
    assert "⚠️  LOSS SPIKE at step" in res.stdout
    out = tmp_path / "out"
    rows = (out / "loss_spikes.csv").read_text().splitlines()
    assert rows[0] == "step,loss,avg,ratio,episode_indices,files,frame_indices" and len(rows) > 1
    for row in rows[1:]:
        step, loss, avg, ratio, episodes, files, frames = row.split(",")
        assert "4" in episodes.split() and "episode_0004.h5" in files.split()
        assert float(ratio) > 10 and float(loss) > 10 * float(avg)
    lines = (out / "loss_spikes.txt").read_text().splitlines()
    assert len(lines) == len(rows) - 1 and all("Episodes: [" in ln and "4" in ln for ln in lines)

    train(config, "--resume", out / "checkpoints" / "checkpoint_step_10.pt")  # redo steps 11..30
    assert (out / "loss_spikes.csv").read_text().splitlines() == rows
    with open(out / "metrics.csv", newline="") as f:
        rows = [(int(row["step"]), row["metric"]) for row in csv.DictReader(f)]
    # the resume redid steps 11..30: their rows replace the first run's instead of following them
    assert [step for step, _ in rows] == sorted(step for step, _ in rows)
    assert len(rows) == len(set(rows)) and (30, "train/loss") in rows


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, tiny_vlm_dir):  # noqa: F811
    config = make_run_dir(tmp_path, tiny_vlm_dir, n_episodes=4, length=30,
                          training={"steps": 30, "save_freq": 30, "log_freq": 10}, validation={"enable": False})
    add_bad_episode(tmp_path, action_value=3e38)  # finite in the file, overflows once normalized and squared
    res = train(config)
    assert "NON-FINITE loss/gradient at step" in res.stdout and "update skipped" in res.stdout
    ckpt = load(tmp_path / "out" / "checkpoints" / "checkpoint_step_30.pt")
    assert all(t.isfinite().all() for t in ckpt["model"].values() if t.is_floating_point())
    assert ckpt["optimizer"]["state"][0]["step"].item() < 30  # skipped steps made no update
    assert any("nan" in row for row in (tmp_path / "out" / "loss_spikes.csv").read_text().splitlines()[1:])

    res = train(config, "--training.max_nonfinite_steps=1", "--output_dir", tmp_path / "strict", check=False)
    assert res.returncode == 1 and "non-finite loss or gradient" in res.stderr and "episodes [" in res.stderr
    assert "4" in res.stderr.split("episodes [", 1)[1].split("]")[0].split(", ")


def test_sigterm_writes_a_checkpoint_and_resume_auto_continues(tmp_path, tiny_vlm_dir):  # noqa: F811
    config = make_run_dir(tmp_path, tiny_vlm_dir, n_episodes=3, length=30,
                          training={"steps": 500, "save_freq": 1000, "log_freq": 1}, validation={"enable": False})
    proc = subprocess.Popen([sys.executable, ROOT / "train_smolvla_sim.py", "--config", config], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, cwd=ROOT, env=env(PYTHONUNBUFFERED=1))
    for line in proc.stdout:
        if "] Step 3/500" in line:
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stdout.read()
    assert proc.wait(timeout=120) == 0
    assert "Stop signal received" in rest
    saved = sorted((tmp_path / "out" / "checkpoints").glob("checkpoint_step_*.pt"))
    assert len(saved) == 1
    stopped_at = load(saved[0])["step"]
    assert stopped_at >= 3
    res = train(config, "--resume", "auto", "--training.steps=" + str(stopped_at + 2))
    assert f"Step {stopped_at + 1}/{stopped_at + 2}" in res.stdout
