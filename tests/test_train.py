"""Single-process training through the real CLI: outputs, console lines, checkpoints, exact resume, scheduler reset."""

import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml
from fixtures_policy import tiny_vlm_dir  # noqa: F401  (session fixture)
from safetensors.torch import load_file
from train_runs import ROOT, assert_same_weights, env, load, make_run_dir, train

from insertion_vla.optim import lr_at

TRAIN_LINE = re.compile(r"\[\s*\d+\.\d%\] Step (\d+)/(\d+) \| Loss: [\d.]+ \(Action: [\d.]+, Temporal: [\d.]+\) \| "
                        r"LR: [\d.e+-]+ \| Grad: [\d.]+ \| [\d.]+ s/step \| ETA \d+:\d\d:\d\d")
VAL_LINE = re.compile(r"\[VAL\] Step (\d+) \| Loss: [\d.]+ \| Action Loss: [\d.]+ \| MAE \(deg\): \[([\d., ]+)\]")


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_vlm_dir):  # noqa: F811
    """One 8-step run with gradient accumulation across an epoch boundary (10 batches per epoch)."""
    tmp = tmp_path_factory.mktemp("run")
    config = make_run_dir(tmp, tiny_vlm_dir, n_episodes=5, length=10,
                          training={"gradient_accumulation_steps": 2})
    res = train(config)
    return config, tmp / "out", res


def test_console_lines_and_outputs(finished_run):
    config, out, res = finished_run
    steps = [int(m.group(1)) for m in TRAIN_LINE.finditer(res.stdout)]
    assert steps == [2, 4, 6, 8]
    vals = VAL_LINE.findall(res.stdout)
    assert [int(s) for s, _ in vals] == [4, 8] and len(vals[0][1].split(",")) == 6
    assert "Resolved config:" in res.stdout
    ckpts = out / "checkpoints"
    assert {p.name for p in ckpts.iterdir()} == {"checkpoint_step_4.pt", "checkpoint_step_8.pt", "checkpoint_latest.pt",
                                                 "checkpoint_best.pt", "final_hf"}
    for name in ("metrics.csv", "config.yaml", "validation_episodes.txt", "loss_spikes.txt", "loss_spikes.csv",
                 "plots/loss.png", "plots/val_trajectories_step_8.png"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "config.yaml").read_text())["training"]["steps"] == 8
    metrics = (out / "metrics.csv").read_text()
    for name in ("train/loss", "train/action_loss", "train/temporal_loss", "train/learning_rate", "train/grad_norm",
                 "system/ram_gb", "val/loss", "val/action_mae_rad/5"):
        assert f",{name}," in metrics


def test_checkpoint_holds_plain_values_and_latest_is_newest(finished_run):
    config, out, _ = finished_run
    ckpt = load(out / "checkpoints" / "checkpoint_step_8.pt")  # weights_only=True: tensors and plain values only
    assert ckpt["step"] == 8 and ckpt["schedule_start"] == 0
    assert ckpt["epoch"] == 1 and ckpt["batch_in_epoch"] == 6  # 16 micro-batches, 10 per epoch
    assert ckpt["config"]["training"]["gradient_accumulation_steps"] == 2
    assert set(ckpt["stats"]) == {"observation.state", "action"} and len(ckpt["validation_files"]) == 1
    assert_same_weights(out / "checkpoints" / "checkpoint_latest.pt", out / "checkpoints" / "checkpoint_step_8.pt")
    assert ckpt["optimizer"]["state"][0]["step"].item() == 8


def test_resume_from_the_middle_ends_with_the_same_weights(finished_run, tmp_path):
    config, out, _ = finished_run
    cfg = yaml.safe_load(config.read_text())
    cfg["output_dir"] = str(tmp_path / "resumed")
    (tmp_path / "resumed" / "checkpoints").mkdir(parents=True)
    shutil.copy(out / "checkpoints" / "checkpoint_step_4.pt", tmp_path / "resumed" / "checkpoints")
    resumed_config = tmp_path / "config.yaml"
    resumed_config.write_text(yaml.safe_dump(cfg))
    res = train(resumed_config, "--resume", "auto")
    assert [int(m.group(1)) for m in TRAIN_LINE.finditer(res.stdout)] == [6, 8]
    assert_same_weights(tmp_path / "resumed" / "checkpoints" / "checkpoint_step_8.pt", out / "checkpoints" / "checkpoint_step_8.pt")


def test_reset_scheduler_restarts_warmup_with_fresh_optimizer(finished_run, tmp_path):
    config, out, _ = finished_run
    res = train(config, "--resume", out / "checkpoints" / "checkpoint_step_4.pt", "--reset_scheduler",
                "--steps", 4, "--lr", "0.0005", "--output_dir", tmp_path / "ft")
    assert [int(m.group(1)) for m in TRAIN_LINE.finditer(res.stdout)] == [6, 8]
    assert "Step 6/8" in res.stdout and "(scheduler reset)" in res.stdout
    ckpt = load(tmp_path / "ft" / "checkpoints" / "checkpoint_step_8.pt")
    assert ckpt["schedule_start"] == 4 and ckpt["config"]["optimizer"]["lr"] == 0.0005
    assert ckpt["optimizer"]["state"][0]["step"].item() == 4  # a fresh AdamW, 4 updates old
    sched = ckpt["config"]["scheduler"]
    lrs = [float(v) for s, m, v in (ln.split(",") for ln in (tmp_path / "ft" / "metrics.csv").read_text().splitlines()[1:])
           if m == "train/learning_rate"]
    assert lrs == pytest.approx([lr_at(s - 1, 4, 0.0005, sched) for s in (6, 8)])
    assert lrs[0] < 0.0005  # warming up again


def test_resume_auto_without_checkpoint_starts_fresh(tmp_path, tiny_vlm_dir):  # noqa: F811
    config = make_run_dir(tmp_path, tiny_vlm_dir, n_episodes=3, length=12,
                          training={"steps": 2, "save_freq": 1, "keep_last_checkpoints": 1}, validation={"enable": False})
    res = train(config, "--resume", "auto")
    assert "resumed from" not in res.stdout
    names = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert names == ["checkpoint_latest.pt", "checkpoint_step_2.pt", "final_hf"]  # keep_last_checkpoints=1 pruned step 1


def test_incompatible_missing_and_corrupt_checkpoints_are_clear_errors(finished_run, tmp_path):
    config, out, _ = finished_run
    ckpt = out / "checkpoints" / "checkpoint_step_4.pt"
    res = train(config, "--resume", ckpt, "--output_dir", tmp_path / "x",
                "--dataset.cameras={side_camera: camera1, top_camera: camera3}", check=False)
    assert res.returncode == 1 and "does not fit this config" in res.stderr and "cameras" in res.stderr
    res = train(config, "--resume", tmp_path / "nope.pt", check=False)
    assert res.returncode == 1 and "checkpoint not found" in res.stderr
    broken = tmp_path / "checkpoint_step_4.pt"
    broken.write_bytes(ckpt.read_bytes()[:4096])
    res = train(config, "--resume", broken, "--output_dir", tmp_path / "y", check=False)
    assert res.returncode == 1 and "cannot be loaded" in res.stderr and "Traceback" not in res.stderr


def test_export_cli_writes_the_checkpoints_weights(finished_run, tmp_path):
    _, out, _ = finished_run
    ckpt_path = out / "checkpoints" / "checkpoint_step_4.pt"
    res = subprocess.run([sys.executable, "-m", "insertion_vla.export", ckpt_path, tmp_path / "exported"],
                         capture_output=True, text=True, cwd=ROOT, env=env())
    assert res.returncode == 0, res.stderr
    assert "Exported step 4" in res.stdout
    exported = load_file(tmp_path / "exported" / "model.safetensors")
    trained = load(ckpt_path)["model"]
    trainable_key = next(k for k in exported if "action_out_proj.weight" in k)
    assert torch.equal(exported[trainable_key], trained[trainable_key])
    res = subprocess.run([sys.executable, "-m", "insertion_vla.export", tmp_path / "none.pt", tmp_path / "x"],
                         capture_output=True, text=True, cwd=ROOT, env=env())
    assert res.returncode == 1 and "checkpoint not found" in res.stderr and not (tmp_path / "x").exists()



def test_fine_tune_on_other_data_uses_its_stats_and_its_own_split(finished_run, tmp_path):
    from episode_files import write_dataset

    config, out, _ = finished_run
    write_dataset(tmp_path / "real", n=4, length=12)
    subprocess.run([sys.executable, ROOT / "compute_dataset_stats.py", "--dataset_root", tmp_path / "real",
                    "--output", tmp_path / "real_stats.yaml"], check=True, capture_output=True)
    res = train(config, "--resume", out / "checkpoints" / "checkpoint_step_4.pt", "--reset_scheduler",
                "--steps", 2, "--lr", "0.00001", "--output_dir", tmp_path / "ft",
                f"--dataset.root_dir={tmp_path / 'real'}", f"--normalization.stats_file={tmp_path / 'real_stats.yaml'}",
                "--validation.val_freq=2", "--training.save_freq=2")
    assert "real_stats.yaml, which differs from the statistics" in res.stdout
    ckpt = load(tmp_path / "ft" / "checkpoints" / "checkpoint_step_6.pt")
    assert ckpt["step"] == 6 and len(ckpt["validation_files"]) == 1
    assert ckpt["validation_files"][0].startswith(str(tmp_path / "real"))
    assert ckpt["stats"]["action"]["mean"] != load(out / "checkpoints" / "checkpoint_step_4.pt")["stats"]["action"]["mean"]
    assert (tmp_path / "ft" / "checkpoints" / "checkpoint_best.pt").is_file()  # best of this data, not of the old
