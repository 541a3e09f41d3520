"""Bad input through the real command lines, one row per mistake a user makes.

Every row runs a CLI (stats, training, resume, config, simulator) in a fresh directory and checks what the user
gets: a non-zero exit status, an error that names the file or key and says how to fix it, no traceback, and no
half-written output (no temporary file, no checkpoint, no stats file). Rows already covered by another test file
are listed in REUSED with that test's id; the bad-input table in docs/reliability.md lists both.
"""

import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from episode_files import write_episode
from fixtures_policy import tiny_vlm_dir  # noqa: F401  (session fixture)
from train_runs import ROOT, env, make_run_dir, train


@dataclass(frozen=True)
class Base:
    """A good setup every row starts from: episodes, their stats, a config and a trained 1-step checkpoint."""

    config: Path
    data: Path
    stats: Path
    checkpoint: Path


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_vlm_dir):  # noqa: F811
    tmp = tmp_path_factory.mktemp("good")
    config = make_run_dir(tmp, tiny_vlm_dir, n_episodes=3, length=12,
                          training={"steps": 1, "save_freq": 1}, validation={"enable": False})
    train(config)
    return Base(config, tmp / "data", tmp / "stats.yaml", tmp / "out" / "checkpoints" / "checkpoint_step_1.pt")


# ---- commands -------------------------------------------------------------------------------------------------


def training(base, tmp, *args):
    return [ROOT / "train_smolvla_sim.py", "--config", base.config, "--output_dir", tmp / "out", *args]


def stats_cli(data, tmp, *args):
    return [ROOT / "compute_dataset_stats.py", "--dataset_root", data, "--output", tmp / "stats.yaml", *args]


def collect(*args):
    return ["-m", "sim.collect", "--width", "32", "--height", "24", *args]


# ---- damaged inputs (each writes into the row's own directory) -----------------------------------------------


def copy_data(base, tmp):
    return Path(shutil.copytree(base.data, tmp / "data"))


def with_episode(base, tmp, **episode):
    """The good episodes plus one more, written with `episode` (e.g. ee_dim=3, length=0)."""
    data = copy_data(base, tmp)
    write_episode(data / "episode_0099.h5", **{"length": 12, **episode})
    return data


def damaged_data(base, tmp, damage):
    data = copy_data(base, tmp)
    with h5py.File(data / "episode_0001.h5", "a") as f:
        damage(f)
    return data


def truncated_data(base, tmp):
    data = copy_data(base, tmp)
    path = data / "episode_0001.h5"
    path.write_bytes(path.read_bytes()[:2000])
    return data


def stats_file(base, tmp, edit):
    doc = yaml.safe_load(base.stats.read_text())
    edit(doc)
    path = tmp / "edited_stats.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def text_file(tmp, name, text):
    path = tmp / name
    path.write_text(text)
    return path


def a_file(tmp):
    """A regular file where a directory is expected (as unwritable as it gets for root)."""
    return text_file(tmp, "not_a_directory", "")


def marker(tmp):
    return tmp / "code_ran"


def pickled_code_checkpoint(tmp):
    """A .pt file whose unpickling would run code (here: create a marker file)."""
    class Payload:
        def __reduce__(self):
            return Path.write_text, (marker(tmp), "pickled code ran")
    path = tmp / "checkpoint_step_5.pt"
    torch.save({"step": 5, "model": Payload()}, path)
    return path


def plain_torch_file(tmp):
    path = tmp / "weights.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    return path


# ---- the table --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    id: str
    area: str  # stats, training, resume, config, sim
    what: str  # the mistake, as docs/reliability.md's table says it
    command: object  # (base, tmp) -> argv after `python`
    names: str  # regex: the message names the file / key / value
    fix: str  # regex: the message says what to do
    absent: tuple = ("out/checkpoints", "stats.yaml")  # outputs that must not exist afterwards
    env: dict = field(default_factory=dict)


def set_nan(f):
    f["action"][3, 1] = np.nan


ROWS = [
    # stats: compute_dataset_stats.py
    Row("stats-wrong-action-key", "stats", "dataset.action_key names a key the files do not have",
        lambda b, t: stats_cli(b.data, t, "--config", text_file(t, "c.yaml", "dataset: {action_key: actions}")),
        r"episode_0000\.h5: missing key 'actions'", r"Set dataset.state_key / dataset.action_key"),
    Row("stats-mixed-dims", "stats", "one episode has a 3-dim ee_pose, the others 6",
        lambda b, t: stats_cli(with_episode(b, t, ee_dim=3), t),
        r"episode_0099\.h5: state dim 3.*must share dimensions", r"--skip_bad"),
    Row("stats-empty-episode", "stats", "an episode with no frames",
        lambda b, t: stats_cli(with_episode(b, t, length=0, jpeg=False), t),
        r"episode_0099\.h5: the episode has no frames", r"Remove it or re-record it"),
    Row("stats-output-not-writable", "stats", "--output inside a path that is a file",
        lambda b, t: [ROOT / "compute_dataset_stats.py", "--dataset_root", b.data, "--output", a_file(t) / "s.yaml"],
        r"cannot write .*not_a_directory/s\.yaml: a part of its folder path is a file", r"make .*not_a_directory a writable directory"),
    Row("stats-unknown-config-key", "stats", "a typo in the --config file",
        lambda b, t: stats_cli(b.data, t, "--config", text_file(t, "c.yaml", "dataset: {rootdir: data}")),
        r"unknown config key 'dataset\.rootdir' in .*c\.yaml", r"Did you mean 'dataset\.root_dir'"),
    # training: train_smolvla_sim.py
    Row("train-stats-other-dims", "training", "stats of another state layout (6 dims; qpos added makes 12)",
        lambda b, t: training(b, t, "--dataset.use_qpos=true"),
        r"stats\.yaml: 'observation\.state' statistics have 6 dims but the data has 12", r"recreate it with `bash compute_dataset_stats_sim\.sh"),
    Row("train-stats-missing-std", "training", "a stats file without action std",
        lambda b, t: training(b, t, f"--normalization.stats_file={stats_file(b, t, lambda d: d['action'].pop('std'))}"),
        r"edited_stats\.yaml: 'action' lacks std", r"Recreate it with `bash compute_dataset_stats_sim\.sh"),
    Row("train-truncated-episode", "training", "a truncated episode file",
        lambda b, t: training(b, t, f"--dataset.root_dir={truncated_data(b, t)}"),
        r"episode_0001\.h5: cannot open as HDF5", r"re-record or remove it"),
    Row("train-nan-action", "training", "NaN in an episode's actions, more bad frames than training.max_bad_samples",
        lambda b, t: training(b, t, f"--dataset.root_dir={damaged_data(b, t, set_nan)}", "--training.max_bad_samples=0",
                              "--training.steps=8", "--training.save_freq=100"),
        r"more than training\.max_bad_samples=0, in .*episode_0001\.h5 \(1\)", r"Fix or remove those episodes"),
    Row("train-unknown-camera", "training", "dataset.cameras names a camera the files do not have",
        lambda b, t: training(b, t, "--dataset.cameras={side_camera: camera1, wrist_camera: camera2}"),
        r"camera 'wrist_camera' named in dataset\.cameras is not in the file", r"Fix the mapping"),
    Row("train-missing-pretrained", "training", "policy.pretrained_model_id is a path that does not exist",
        lambda b, t: training(b, t, f"--policy.pretrained_model_id={t / 'no_such_smolvla'}"),
        r"no_such_smolvla' \(policy\.vlm_model_name / policy\.pretrained_model_id\) is not a directory",
        r"Point it at an existing folder"),
    Row("train-hub-offline", "training", "a Hub id while the Hub cannot be reached (HF_HUB_OFFLINE=1)",
        lambda b, t: training(b, t, "--policy.pretrained_model_id=insertion-vla-tests/no-such-smolvla"),
        r"'insertion-vla-tests/no-such-smolvla' is not a local directory.*HF_HUB_OFFLINE is set",
        r"Offline options: .*python -m insertion_vla\.tiny_vlm"),
    Row("train-output-dir-is-a-file", "training", "output_dir is an existing file",
        lambda b, t: training(b, t, f"--output_dir={a_file(t)}"),
        r"cannot write .*not_a_directory/config\.yaml", r"make .*not_a_directory a writable directory"),
    # resume: train_smolvla_sim.py --resume
    Row("resume-other-state-dim", "resume", "a checkpoint trained on a 6-dim state, data now 12-dim",
        lambda b, t: training(b, t, "--resume", b.checkpoint, "--normalization.enable=false", "--dataset.use_qpos=true"),
        r"checkpoint .*checkpoint_step_1\.pt does not fit this config: state dim 6 vs 12 in the data",
        r"Resume with the config it was trained with, or start a new output_dir"),
    Row("resume-not-a-checkpoint", "resume", "--resume given a torch file that is not a training checkpoint",
        lambda b, t: training(b, t, "--resume", plain_torch_file(t)),
        r"weights\.pt is not a training checkpoint", r"Pass a checkpoint_step_N\.pt or checkpoint_latest\.pt"),
    Row("resume-pickled-code", "resume", "a .pt file whose unpickling would run code",
        lambda b, t: training(b, t, "--resume", pickled_code_checkpoint(t)),
        r"checkpoint_step_5\.pt cannot be loaded: it holds pickled Python objects \(Unsupported global",
        r"use a checkpoint_step_N\.pt written by train_smolvla_sim\.py", absent=("out/checkpoints", "code_ran")),
    Row("resume-reset-without-checkpoint", "resume", "--reset_scheduler with nothing to resume from",
        lambda b, t: training(b, t, "--reset_scheduler"),
        r"--reset_scheduler needs a checkpoint", r"--resume PATH or --resume auto"),
    # config: train_smolvla_sim.py --config / --section.key=value
    Row("config-missing-file", "config", "--config names no file",
        lambda b, t: [ROOT / "train_smolvla_sim.py", "--config", t / "nope.yaml"],
        r"config file not found: .*nope\.yaml", r"Pass --config with an existing YAML file"),
    Row("config-invalid-yaml", "config", "a config that is not valid YAML",
        lambda b, t: [ROOT / "train_smolvla_sim.py", "--config", text_file(t, "c.yaml", "training:\n  steps: [1, 2\n")],
        r"config file .*c\.yaml is not valid YAML", r"line \d+, column \d+"),
    Row("config-unknown-key", "config", "a typo in a config file key",
        lambda b, t: [ROOT / "train_smolvla_sim.py", "--config", text_file(t, "c.yaml", "training:\n  batch_sizee: 4\n")],
        r"unknown config key 'training\.batch_sizee' in .*c\.yaml", r"Did you mean 'training\.batch_size'"),
    Row("config-unknown-override", "config", "a typo in a --section.key=value override",
        lambda b, t: training(b, t, "--optimizer.learning_rate=0.001"),
        r"unknown config key 'optimizer\.learning_rate'", r"Did you mean 'optimizer\.lr'"),
    Row("config-wrong-type", "config", "a value of the wrong type",
        lambda b, t: training(b, t, "--training.batch_size=sixteen"),
        r"'training\.batch_size' .* must be int, got 'sixteen'", r"Default: 16"),
    Row("config-python-tag", "config", "a config with a YAML tag that would run code",
        lambda b, t: [ROOT / "train_smolvla_sim.py", "--config",
                      text_file(t, "c.yaml", f"seed: !!python/object/apply:os.system ['touch {marker(t)}']\n")],
        r"config file .*c\.yaml is not valid YAML: could not determine a constructor", r"line \d+, column \d+",
        absent=("code_ran",)),
    # sim: python -m sim.collect
    Row("sim-zero-episodes", "sim", "--episodes 0",
        lambda b, t: collect("--episodes", "0", "--out", t / "eps"),
        r"--episodes must be >= 1, got 0", r"e\.g\. --episodes 10", absent=("eps",)),
    Row("sim-zero-drift-time", "sim", "--drift_seconds 0",
        lambda b, t: collect("--episodes", "1", "--out", t / "eps", "--drift_mm", "3", "--drift_seconds", "0"),
        r"--drift_seconds must be finite and > 0, got 0\.0", r"e\.g\. --drift_seconds 1", absent=("eps",)),
    Row("sim-width-not-a-number", "sim", "--width abc",
        lambda b, t: ["-m", "sim.collect", "--episodes", "1", "--out", t / "eps", "--width", "abc"],
        r"argument --width: 'abc'", r"whole number of pixels: give one, e\.g\. 640", absent=("eps",)),
    Row("sim-out-not-writable", "sim", "--out inside a path that is a file",
        lambda b, t: collect("--episodes", "1", "--out", a_file(t) / "eps"),
        r"not_a_directory/eps", r"Give --out a writable directory", absent=()),
]

# Rows that other test files already check the same way (non-zero exit, message, nothing half-written).
REUSED = [
    ("stats", "dataset root does not exist", "tests/test_stats.py::test_missing_root_is_a_clear_error"),
    ("stats", "NaN in an episode and a truncated episode (all listed, nothing written)",
     "tests/test_stats.py::test_bad_files_fail_listing_all_and_write_nothing"),
    ("training", "stats file missing (the launcher stops before torchrun)",
     "tests/test_ddp.py::test_launcher_checks_stats_before_starting"),
    ("training", "validation.num_episodes not below the number of episodes",
     "tests/test_monitoring.py::test_validation_split_is_held_out_listed_and_kept_on_resume"),
    ("training", "max_nonfinite_steps non-finite steps in a row",
     "tests/test_monitoring.py::test_non_finite_steps_are_skipped_then_stop_the_run"),
    ("training", "disk full (file-size limit) at a checkpoint",
     "tests/test_reliability.py::test_disk_full_at_a_checkpoint_is_a_clear_error_and_earlier_checkpoints_load"),
    ("resume", "checkpoint missing / truncated / of other cameras",
     "tests/test_train.py::test_incompatible_missing_and_corrupt_checkpoints_are_clear_errors"),
    ("resume", "export of a missing checkpoint", "tests/test_train.py::test_export_cli_writes_the_checkpoints_weights"),
]


def run_row(row: Row, base: Base, tmp: Path) -> subprocess.CompletedProcess:
    argv = [sys.executable, *map(str, row.command(base, tmp))]
    return subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env(**row.env), timeout=300)


def error_message(stderr: str) -> str:
    """The error from its first `error:` line on (argparse prints usage lines first)."""
    lines = stderr.splitlines()
    start = next((i for i, line in enumerate(lines) if "error:" in line), None)
    assert start is not None, f"no 'error:' line in stderr:\n{stderr[-3000:]}"
    return "\n".join([lines[start][lines[start].index("error:"):], *lines[start + 1:]])


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id) for r in ROWS])
def test_bad_input(row, base, tmp_path):
    res = run_row(row, base, tmp_path)
    assert res.returncode != 0, res.stdout[-2000:]
    assert "Traceback" not in res.stderr + res.stdout, res.stderr[-3000:]
    message = error_message(res.stderr)
    assert re.search(row.names, message, re.S), message
    # the advice must be more than the error restating itself: look for it outside what names the input
    advice = re.sub(row.names, " ", message, flags=re.S).replace(str(tmp_path), " ")
    assert re.search(row.fix, advice, re.S), f"no advice matching {row.fix!r} beyond the names in: {message}"
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert not leftovers, leftovers
    for rel in row.absent:
        assert not (tmp_path / rel).exists(), f"{rel} was written"


def test_table_has_twenty_rows_and_reused_tests_exist():
    assert len(ROWS) + len(REUSED) >= 20 and len({r.id for r in ROWS}) == len(ROWS)
    for _, _, test_id in REUSED:
        path, name = test_id.split("::")
        assert f"def {name}(" in (ROOT / path).read_text(), test_id
