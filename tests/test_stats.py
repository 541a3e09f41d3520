import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from episode_files import write_dataset

from episode_format.reader import EpisodeKeys
from insertion_vla.stats import RunningStats, check_stats_match, compute_stats, load_stats

KEYS = EpisodeKeys(cameras={"side_camera": "camera1"}, state_keys=("observations/ee_pose",))


ROOT = Path(__file__).resolve().parents[1]


def run_stats(*args):
    return subprocess.run([sys.executable, "compute_dataset_stats.py", *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def test_running_stats_equal_numpy_over_all_rows():
    rng = np.random.default_rng(0)
    chunks = [rng.normal(1e3, 1e-2, (n, 4)) for n in (1, 7, 300, 2)]  # large mean, small spread: float64 merge
    rs = RunningStats()
    for c in chunks:
        rs.update(c)
    allrows = np.concatenate(chunks).astype(np.float32).astype(np.float64)
    r = rs.result()
    np.testing.assert_allclose(r["mean"], np.concatenate(chunks).mean(0), rtol=1e-12)
    np.testing.assert_allclose(r["std"], np.concatenate(chunks).std(0), rtol=1e-9)
    np.testing.assert_array_equal(r["q01"], np.quantile(allrows, 0.01, axis=0))
    np.testing.assert_array_equal(r["q99"], np.quantile(allrows, 0.99, axis=0))
    assert r["count"] == 310


def test_cli_writes_yaml_matching_numpy(tmp_path):
    paths = write_dataset(tmp_path / "data", n=3)
    out = tmp_path / "stats.yaml"
    res = run_stats("--dataset_root", tmp_path / "data", "--output", out)
    assert res.returncode == 0, res.stderr
    doc = yaml.safe_load(out.read_text())
    assert set(doc) >= {"observation.state", "action"}
    ee = np.concatenate([h5py.File(p)["observations/ee_pose"][()] for p in paths]).astype(np.float64)
    act = np.concatenate([h5py.File(p)["action"][()] for p in paths]).astype(np.float64)
    for feature, data in (("observation.state", ee), ("action", act)):
        s = doc[feature]
        assert s["count"] == len(data) == 63
        np.testing.assert_allclose(s["mean"], data.mean(0), rtol=1e-12)
        np.testing.assert_allclose(s["std"], data.std(0), rtol=1e-9)
        np.testing.assert_array_equal(s["min"], data.min(0))
        np.testing.assert_array_equal(s["q99"], np.quantile(data, 0.99, axis=0))
    loaded = load_stats(out)
    check_stats_match(loaded, 6, 6, out)
    with pytest.raises(Exception, match="statistics have 6 dims but the data has 3"):
        check_stats_match(loaded, 3, 6, out)


def test_max_episodes_and_qpos_config(tmp_path):
    write_dataset(tmp_path / "data", n=3)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset:\n  use_qpos: true\n")
    out = tmp_path / "s.yaml"
    res = run_stats("--dataset_root", tmp_path / "data", "--output", out, "--config", cfg, "--max_episodes", 2)
    assert res.returncode == 0, res.stderr
    doc = yaml.safe_load(out.read_text())
    assert doc["observation.state"]["count"] == 41 and len(doc["observation.state"]["mean"]) == 12


def _damage(path):
    with h5py.File(path, "a") as f:
        f["action"][3, 1] = np.nan


def test_bad_files_fail_listing_all_and_write_nothing(tmp_path):
    paths = write_dataset(tmp_path / "data", n=4)
    _damage(paths[1])
    paths[3].write_bytes(paths[3].read_bytes()[:500])
    out = tmp_path / "stats.yaml"
    res = run_stats("--dataset_root", tmp_path / "data", "--output", out)
    assert res.returncode != 0
    assert "2 of 4 episode files are bad" in res.stderr
    assert "episode_0001.h5: action has NaN/Inf at frame 3" in res.stderr and "episode_0003.h5" in res.stderr
    assert "--skip_bad" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() and list(tmp_path.glob("stats.yaml*")) == []

    res = run_stats("--dataset_root", tmp_path / "data", "--output", out, "--skip_bad")
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("skipped:") == 2
    doc = yaml.safe_load(out.read_text())
    assert doc["action"]["count"] == 20 + 22 and len(doc["source"]["skipped"]) == 2


def test_missing_root_is_a_clear_error(tmp_path):
    res = run_stats("--dataset_root", tmp_path / "nothing", "--output", tmp_path / "s.yaml")
    assert res.returncode != 0 and "No HDF5 files found" in res.stderr and not (tmp_path / "s.yaml").exists()


def test_compute_stats_refuses_mixed_dims(tmp_path):
    from episode_files import write_episode

    a = write_episode(tmp_path / "a.h5", length=4)
    b = write_episode(tmp_path / "b.h5", length=4, ee_dim=3)
    with pytest.raises(Exception, match="must share dimensions"):
        compute_stats([a, b], KEYS, progress=False)


def test_missing_stats_file_names_the_command(tmp_path):
    with pytest.raises(Exception, match="compute_dataset_stats_sim.sh"):
        load_stats(tmp_path / "dataset_stats_sim.yaml")


def test_shell_wrapper_takes_environment(tmp_path):
    write_dataset(tmp_path / "data", n=2)
    env = {"PATH": f"{sys.executable.rsplit('/', 1)[0]}:/usr/bin:/bin", "DATASET_ROOT": str(tmp_path / "data"),
           "OUTPUT": str(tmp_path / "w.yaml")}
    res = subprocess.run(["bash", ROOT / "compute_dataset_stats_sim.sh", "--max_episodes", "1"], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert yaml.safe_load((tmp_path / "w.yaml").read_text())["action"]["count"] == 20
