"""The command lines that read the training config: one parser, valid ranges, and advice that works.

Every error message that advises a flag or a command is run here: the advice is cut out of the printed message
itself and run, and must get past the error.
"""

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from episode_files import write_dataset

from insertion_vla.config import SCHEMA, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
STATS = [sys.executable, str(ROOT / "compute_dataset_stats.py")]
TRAIN = [sys.executable, str(ROOT / "train_smolvla_sim.py")]


def run(cmd, **kwargs):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=ROOT, **kwargs)


@pytest.mark.parametrize("override, message", [
    ("--optimizer.lr=-1", "'optimizer.lr' .* must be > 0, got -1"),
    ("--optimizer.lr=0", "'optimizer.lr' .* must be > 0, got 0"),
    ("--scheduler.num_warmup_steps=-5", "must be >= 0, got -5"),
    ("--training.num_workers=-1", "must be >= 0"),
    ("--training.device=gpu", "must be one of auto, cuda, cpu"),
    ("--normalization.mode=QUANTILES", "must be one of MEAN_STD, MIN_MAX, IDENTITY"),
    ("--dataset.augmentation.hue=0.7", "must be >= 0 and <= 0.5"),
    ("--training.loss_spike_threshold=1", "must be > 1"),
    ("--policy.n_action_steps=51", "must not exceed policy.chunk_size"),
    ("--policy.resize_imgs_with_padding=[64, 96]", "square"),
    ("--optimizer.betas=[0.9, 1.0]", r"two numbers in \[0, 1\)"),
])
def test_out_of_range_values_are_refused_at_load(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_boundary_values_and_null_pass():
    cfg = load_config(None, ["--scheduler.num_warmup_steps=0", "--training.num_workers=0", "--policy.n_action_steps=50",
                             "--training.keep_last_checkpoints=null", "--optimizer.betas=[0, 0.999]"])
    assert cfg["scheduler"]["num_warmup_steps"] == 0 and cfg["training"]["keep_last_checkpoints"] is None


def test_every_numeric_key_has_a_range():
    def fields(schema, prefix=""):
        for key, value in schema.items():
            yield from fields(value, f"{prefix}{key}.") if isinstance(value, dict) else [(prefix + key, value)]
    unchecked = [key for key, field in fields(SCHEMA)
                 if set(field.types) & {int, float} and bool not in field.types and not field.rule()]
    assert unchecked == []


@pytest.mark.parametrize("cli", ["stats", "train"])
def test_both_clis_take_config_overrides_with_the_same_errors(cli, tmp_path):
    write_dataset(tmp_path / "data", n=2)
    base = ([*STATS, "--output", tmp_path / "s.yaml"] if cli == "stats"
            else [*TRAIN, "--check_only", "--normalization.enable=false"])
    res = run([*base, f"--dataset.root_dir={tmp_path / 'data'}", "--training.stepz=5"])
    assert res.returncode != 0 and "Did you mean 'training.steps'" in res.stderr, res.stderr
    res = run([*base, f"--dataset.root_dir={tmp_path / 'data'}", "--optimizer.lr=-1"])
    assert res.returncode != 0 and "must be > 0, got -1" in res.stderr, res.stderr
    res = run([*base, f"--dataset.root_dir={tmp_path / 'data'}", "--training.steps=5"])
    assert res.returncode == 0, res.stderr


def test_train_check_only_refuses_a_negative_lr(tmp_path):
    """`--lr -1` passed --check_only ("Config OK") before ranges were checked at load."""
    res = run([*TRAIN, "--check_only", "--lr", "-1"])
    assert res.returncode != 0 and "'optimizer.lr'" in res.stderr and "Config OK" not in res.stdout


# ---- the advice in error messages works in the command that prints it ---------------------------------------

def _cameras_of_another_robot(tmp_path):
    write_dataset(tmp_path / "real", n=2, cameras=("zed_left", "oak_wrist", "zed_top"))
    return [*STATS, "--dataset_root", tmp_path / "real", "--output", tmp_path / "s.yaml"]


def _a_damaged_file(tmp_path):
    write_dataset(tmp_path / "data", n=2)
    (tmp_path / "data" / "episode_0001.h5").write_bytes(b"not hdf5")
    return [*STATS, "--dataset_root", tmp_path / "data", "--output", tmp_path / "s.yaml"]


def _a_misspelled_key(tmp_path):
    write_dataset(tmp_path / "data", n=2)
    return [*STATS, "--dataset_root", tmp_path / "data", "--output", tmp_path / "s.yaml", "--dataset.horizn=50"]


def _a_folder_not_collected_yet(tmp_path):
    return [*STATS, "--dataset_root", tmp_path / "sim_data", "--output", tmp_path / "s.yaml"]


def _training_on_an_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    write_dataset(tmp_path / "data", n=2)
    return [*TRAIN, "--check_only", "--normalization.enable=false", f"--dataset.root_dir={tmp_path / 'empty'}"]


def _point_at_the_data(cmd, advice):
    folder = next(arg for arg in cmd if str(arg).startswith("--dataset.root_dir=")).split("=", 1)[1]
    return [*cmd, advice.replace("DIR", str(Path(folder).parent / "data"))]


def _apply_flag(cmd, advice):
    return [*cmd, *shlex.split(advice)]


def _replace_misspelled(cmd, advice):
    return [arg.replace("dataset.horizn", advice) if isinstance(arg, str) else arg for arg in cmd]


def _run_advised_command_then_retry(cmd, advice):
    collect = [*shlex.split(advice), "--episodes", "1", "--width", "64", "--height", "48"]  # the advice, scaled down
    res = run([sys.executable, *collect[1:]] if collect[0] == "python" else collect)
    assert res.returncode == 0, res.stderr
    return cmd


ADVICE_CASES = {
    # case: (make the failing command, the error it prints, the advice cut out of it, how the advice is applied)
    "cameras-of-another-robot": (_cameras_of_another_robot, "is not in the file",
                                 r'("--dataset\.cameras=\{[^}]*\}")', _apply_flag),
    "damaged-file": (_a_damaged_file, "cannot open as HDF5", r"pass (--skip_bad)", _apply_flag),
    "misspelled-key": (_a_misspelled_key, "unknown config key", r"Did you mean '([a-z_.]+)'", _replace_misspelled),
    "training-on-an-empty-folder": (_training_on_an_empty_folder, "No HDF5 files found",
                                    r"(--dataset\.root_dir=DIR)", _point_at_the_data),
    "not-collected-yet": (_a_folder_not_collected_yet, "No HDF5 files found", r"`(python -m sim\.collect --episodes \d+ --out \S+)`",
                     _run_advised_command_then_retry),
}


@pytest.mark.parametrize("case", ADVICE_CASES)
def test_advised_fix_gets_past_the_error(case, tmp_path):
    make_command, error, advice_pattern, apply = ADVICE_CASES[case]
    cmd = make_command(tmp_path)
    res = run(cmd)
    assert res.returncode != 0 and error in res.stderr, res.stderr
    advice = re.search(advice_pattern, res.stderr)
    assert advice, f"no advice matching {advice_pattern!r} in: {res.stderr}"
    fixed = run(apply(cmd, advice.group(1)))
    assert fixed.returncode == 0 and error not in fixed.stderr, fixed.stderr
