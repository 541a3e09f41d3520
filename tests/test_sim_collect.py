"""`python -m sim.collect` and `python -m sim.replay` end to end, at 64x48: the file format, re-runs,
reproducibility from the seed, no partial file after SIGKILL."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import imageio.v2 as imageio
import numpy as np
import psutil
import pytest

from deploy.tool import tip_pose
from episode_format.jpeg import decode_jpeg
from sim.collect import EpisodeOutcome, tip_drift, unsafe_warning
from sim.kinematics import flange_pose
from sim.randomization import DomainRandomization, PhantomPlacement
from sim.recorder import TASK_INSTRUCTION, EpisodeRecorder
from sim.scene import CAMERA_NAMES
from sim.seeding import episode_seed

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--width", "64", "--height", "48"]


def run_module(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def collect(out: Path, episodes: int, seed: int = 7, *extra: str) -> subprocess.CompletedProcess:
    return run_module(
        "sim.collect", "--episodes", str(episodes), "--out", str(out), "--seed", str(seed), *SMALL, *extra
    )


@pytest.fixture(scope="module")
def collected(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "data"
    result = collect(out, 2, 7, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "2 new episodes saved" in result.stdout
    return out


def test_files_follow_the_episode_format(collected):
    files = sorted(p.name for p in collected.iterdir())
    assert files == ["episode_000000.h5", "episode_000001.h5"]
    dr, phantom = DomainRandomization(), PhantomPlacement()
    for index, name in enumerate(files):
        with h5py.File(collected / name, "r") as f:
            length = len(f["action"])
            assert length >= 60
            for camera in CAMERA_NAMES:
                frames = f[f"observations/images/{camera}"]
                assert frames.shape == (length,) and h5py.check_vlen_dtype(frames.dtype) == np.uint8
                for t in (0, length - 1):
                    image = decode_jpeg(frames[t])
                    assert image.shape == (48, 64, 3) and image.std() > 5
            for key in ("observations/qpos", "observations/ee_pose", "action"):
                assert f[key].dtype == np.float32 and f[key].shape == (length, 6)
                assert np.all(np.isfinite(f[key][()]))
            np.testing.assert_allclose(f["timestamp"][()], np.arange(length) / 15.0, atol=1e-5)
            assert f["timestamp"].dtype == np.float32

            attrs = dict(f.attrs)
            assert attrs["task"] == TASK_INSTRUCTION
            assert attrs["format_version"] == 1 and bool(attrs["success"]) is True
            assert attrs["sim_seed"] == episode_seed(7, index, int(attrs["attempt"]))
            assert attrs["image_width"] == 64 and attrs["image_height"] == 48
            assert abs(attrs["phantom_dx"]) <= phantom.x_range
            assert abs(attrs["dr_key_light_dx"]) <= dr.light_position
            assert attrs["dr_image_noise_std"] == dr.image_noise_std
            for key, value in attrs.items():
                if key.startswith(("dr_", "phantom_")):
                    assert np.isscalar(value) and np.issubdtype(np.asarray(value).dtype, np.number), key

            # Frame t+1 measures where the command of frame t sent the arm (up to the qpos noise).
            qpos, action = f["observations/qpos"][()], f["action"][()]
            assert np.abs(qpos[1:] - action[:-1]).max() < 6 * dr.qpos_noise_std
            # The episode ends with the tip at the target.
            tip = f["observations/ee_pose"][-1, :3]
            assert np.linalg.norm(tip - attrs["trocar_target"]) < 1e-3


def test_rerun_skips_episodes_already_written(collected):
    before = {p: p.stat().st_mtime_ns for p in collected.iterdir()}
    result = collect(collected, episodes=2)
    assert result.returncode == 0, result.stderr
    assert "0 new episodes saved" in result.stdout and "2 already there" in result.stdout
    assert {p: p.stat().st_mtime_ns for p in collected.iterdir()} == before


def test_same_seed_gives_the_same_arrays_whatever_the_worker_count(collected, tmp_path):
    result = collect(tmp_path, 1, 7, "--workers", "1")
    assert result.returncode == 0, result.stderr
    with h5py.File(collected / "episode_000000.h5") as a, h5py.File(tmp_path / "episode_000000.h5") as b:
        for key in ("observations/qpos", "observations/ee_pose", "action", "timestamp"):
            np.testing.assert_array_equal(a[key][()], b[key][()])
        for camera in CAMERA_NAMES:
            key = f"observations/images/{camera}"
            assert all(np.array_equal(x, y) for x, y in zip(a[key][()], b[key][()]))
        assert dict(a.attrs).keys() == dict(b.attrs).keys()
        assert a.attrs["sim_seed"] == b.attrs["sim_seed"] and a.attrs["phantom_dx"] == b.attrs["phantom_dx"]


def test_another_seed_into_the_same_directory_is_refused(collected):
    result = collect(collected, 2, 8)
    assert result.returncode != 0
    assert "episode_000000.h5" in result.stderr and "--seed" in result.stderr


def test_hold_seconds_records_the_expert_staying_at_the_target(collected, tmp_path):
    result = collect(tmp_path, 1, 7, "--hold_seconds", "1")
    assert result.returncode == 0, result.stderr
    with h5py.File(collected / "episode_000000.h5") as plain, h5py.File(tmp_path / "episode_000000.h5") as held:
        length = len(plain["action"])
        assert len(held["action"]) == length + 15  # 1 s at 15 Hz past the step that decided success
        for key in ("observations/qpos", "observations/ee_pose", "action"):
            np.testing.assert_array_equal(held[key][:length], plain[key][()])  # the same episode up to there
        np.testing.assert_allclose(held["action"][length:], np.repeat(plain["action"][-1:], 15, axis=0), atol=1e-6)
        assert held.attrs["hold_seconds"] == 1.0 and held.attrs["success"]
        assert "executed_action" not in held  # nothing was perturbed: the sent command is the action


def test_perturbed_demonstrations_record_the_expert_correction(collected, tmp_path):
    result = collect(tmp_path, 1, 7, "--perturb_std", "0.004")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "episode_000000.h5") as f, h5py.File(collected / "episode_000000.h5") as plain:
        action, sent, clean = f["action"][()], f["executed_action"][()], plain["action"][()]
        assert f.attrs["success"] and f.attrs["perturb_std"] == 0.004 and f.attrs["perturb_stops_at_stand_off"] == 1
        # The noise stops at the stand-off, so the needle enters the eye through the cannula (noise on the
        # insertion made it cross the eye wall beside it) and the collector has nothing to warn about.
        assert f.attrs["max_penetration_outside_trocar_mm"] == 0
    assert "entered the eye beside" not in result.stderr
    approach = int(round(3.5 * 15))  # the expert's align phase: from the start to the stand-off
    noise = sent[:approach] - action[:approach]
    assert 0.003 < noise.std() < 0.005 and np.abs(sent[approach:] - action[approach:]).max() == 0
    # Each recorded action is solved from the perturbed command before it, and still puts the flange back on the
    # expert's path of the unperturbed episode of the same seed (the needle's roll, which the IK leaves free, may
    # differ); the commands sent are off that path by the noise.
    def flange(q):
        return np.array([flange_pose(row)[:3, 3] for row in q[:approach]])
    assert np.abs(flange(action) - flange(clean)).max() < 1e-5  # m
    assert np.abs(flange(sent) - flange(clean)).mean() > 2e-4
    refused = collect(tmp_path, 2, 7, "--perturb_std", "0.002")
    assert refused.returncode != 0 and "collected with {'perturb_std': " in refused.stderr
    # A perturbed collection from before the noise stopped at the stand-off (no attribute) is not extended.
    with h5py.File(tmp_path / "episode_000000.h5", "a") as f:
        del f.attrs["perturb_stops_at_stand_off"]
    refused = collect(tmp_path, 2, 7, "--perturb_std", "0.004")
    assert refused.returncode != 0 and "whose noise went on during the insertion" in refused.stderr
    assert "Collect into another --out directory, or delete that directory's episode_*.h5 files" in refused.stderr
    assert not (tmp_path / "episode_000001.h5").exists()


def test_the_collector_warns_about_unsafe_demonstrations_only():
    safe = [EpisodeOutcome(0, 1, saved=True), EpisodeOutcome(1, 10, saved=False)]
    assert unsafe_warning(safe) is None
    warning = unsafe_warning([*safe, EpisodeOutcome(2, 2, saved=True, unsafe=True)])
    assert warning.startswith("warning: in 1 of the 2 new episodes the needle entered the eye beside the trocar")
    assert "remove episodes [2] before training" in warning


def test_drift_keeps_the_arm_off_its_path_on_the_approach_and_records_the_path(collected, tmp_path):
    result = collect(tmp_path, 1, 7, "--drift_mm", "3")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "episode_000000.h5") as f, h5py.File(collected / "episode_000000.h5") as plain:
        action, sent, clean = f["action"][()], f["executed_action"][()], plain["action"][()]
        assert f.attrs["success"] and f.attrs["drift_mm"] == 3 and f.attrs["drift_seconds"] == 1
        assert f.attrs["attempt"] == plain.attrs["attempt"]  # the same scene and path as the plain episode
        # Sent back onto the path at the stand-off, the needle still enters the eye through the cannula.
        assert f.attrs["max_penetration_outside_trocar_mm"] == 0 == plain.attrs["max_penetration_outside_trocar_mm"]
    approach = int(round(3.5 * 15))  # the expert's align phase: from the start to the stand-off

    def flange(q):
        return np.array([flange_pose(row)[:3, 3] for row in q]) * 1000.0  # mm

    # The recorded actions are the expert's path of the undrifted episode of the same seed, up to the needle's roll.
    assert np.abs(flange(action[:approach]) - flange(clean[:approach])).max() < 0.01
    # The commands sent are off it by millimetres, and the deviation lasts (white noise would decorrelate each frame).
    deviation = flange(sent[:approach]) - flange(action[:approach])
    assert 1.0 < deviation[approach // 2:].std() < 6.0
    lag1 = [np.corrcoef(deviation[1:, axis], deviation[:-1, axis])[0, 1] for axis in range(3)]
    assert min(lag1) > 0.8, lag1
    assert np.abs(deviation[0]).max() == 0  # it starts on the path: no jump at the first frame
    # From the stand-off on the arm is sent the expert's own commands: the needle enters the eye on the path.
    assert np.abs(sent[approach:] - action[approach:]).max() == 0
    refused = collect(tmp_path, 2, 7)
    assert refused.returncode != 0 and "collected with {'drift_mm': " in refused.stderr


def test_drift_until_mm_goes_on_into_the_insertion_and_ends_before_the_entry(tmp_path):
    """--drift_until_mm 8: the arm stays off the path into the insertion, until the expert's path is 8 mm before the
    entry; then it is sent back onto it, and the needle enters the eye through the cannula."""
    result = collect(tmp_path, 1, 7, "--drift_mm", "3", "--drift_until_mm", "8")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "episode_000000.h5") as f:
        action, sent, attrs = f["action"][()], f["executed_action"][()], dict(f.attrs)
    assert attrs["success"] and attrs["drift_until_mm"] == 8 and attrs["max_penetration_outside_trocar_mm"] == 0
    # the tip on the expert's path (the recorded actions), mm before the entry along the trocar axis
    before_entry = np.array([(attrs["trocar_entry"] - tip_pose(q)[:3, 3]) @ attrs["trocar_axis"] for q in action]) * 1e3
    drifted = np.flatnonzero(np.any(sent != action, axis=1))
    np.testing.assert_array_equal(drifted, np.arange(1, drifted[-1] + 1))  # from the second frame on, without a gap
    assert drifted[-1] > int(round(3.5 * 15))  # past the approach (the default's end)
    assert before_entry[drifted[-1]] > 8 >= before_entry[drifted[-1] + 1]
    refused = collect(tmp_path, 2, 7, "--drift_mm", "3")  # the approach-only drift is another collection
    assert refused.returncode != 0 and "collected with {'drift_until_mm': " in refused.stderr
    refused = collect(tmp_path / "other", 1, 7, "--drift_until_mm", "8")
    assert refused.returncode != 0 and "--drift_until_mm acts only on a drift" in refused.stderr


def test_tip_drift_has_the_asked_spread_and_correlation_time():
    for seconds in (0.5, 2.0):
        path = tip_drift(np.random.default_rng(0), 20000, 0.003, seconds)
        assert np.all(path[0] == 0)
        np.testing.assert_allclose(path[1000:].std(0), 0.003, rtol=0.15)
        lag1 = [np.corrcoef(path[1001:, axis], path[1000:-1, axis])[0, 1] for axis in range(3)]
        np.testing.assert_allclose(lag1, np.exp(-1.0 / (15.0 * seconds)), atol=0.01)


def test_drift_seconds_without_a_drift_is_refused(tmp_path):
    result = collect(tmp_path / "eps", 1, 7, "--drift_seconds", "2")
    assert result.returncode != 0 and "--drift_seconds acts only on a drift: add --drift_mm" in result.stderr
    assert not (tmp_path / "eps").exists()


def test_varied_starts_are_recorded_and_kept_apart_from_home_starts(collected, tmp_path):
    result = collect(tmp_path, 1, 7, "--start_joint_range_deg", "5")
    assert result.returncode == 0, result.stderr
    with h5py.File(tmp_path / "episode_000000.h5") as f, h5py.File(collected / "episode_000000.h5") as plain:
        assert f.attrs["success"] and f.attrs["start_joint_range_deg"] == 5 and plain.attrs["start_joint_range_deg"] == 0
        start, home = np.degrees(f["action"][0]), np.degrees(plain["action"][0])  # the first command: near the start
        assert 0.5 < np.abs(start - home).max() < 6
    refused = collect(tmp_path, 2, 7)
    assert refused.returncode != 0 and "collected with {'start_joint_range_deg': " in refused.stderr


def test_help_names_every_range_flag():
    result = run_module("sim.collect", "--help")
    assert result.returncode == 0
    for flag in (
        "--episodes", "--out", "--seed", "--workers", "--width", "--height", "--jpeg_quality", "--no_dr",
        "--backgrounds", "--light_position", "--camera_position", "--camera_rotation", "--color",
        "--image_noise_std", "--qpos_noise_std", "--damping", "--phantom_x_range", "--phantom_y_min", "--phantom_y_max",
        "--phantom_yaw_range_deg", "--drift_mm", "--drift_seconds", "--drift_until_mm",
    ):
        assert flag in result.stdout, flag


def wait_while_running(process: subprocess.Popen, done, seconds: float = 240) -> None:
    """Until done() is true, the process has ended, or `seconds` have passed."""
    deadline = time.monotonic() + seconds
    while not done() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)


def test_no_partial_file_after_sigkill_and_the_rerun_completes(tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "sim.collect", "--episodes", "2", "--out", str(tmp_path), "--seed", "3", *SMALL],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    first = tmp_path / "episode_000000.h5"
    wait_while_running(process, first.exists)
    assert first.exists(), "the collector wrote no episode"
    time.sleep(1.0)  # into the second episode
    os.kill(process.pid, signal.SIGKILL)
    process.wait()

    for path in tmp_path.glob("*.h5"):
        with h5py.File(path, "r") as f:  # opens: not truncated
            length = len(f["action"])
            assert bool(f.attrs["success"])
            for key in ("observations/qpos", "observations/ee_pose", "timestamp", *(
                f"observations/images/{c}" for c in CAMERA_NAMES
            )):
                assert len(f[key]) == length
    first_mtime = first.stat().st_mtime_ns

    result = collect(tmp_path, 2, 3)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode_000000.h5", "episode_000001.h5"]
    assert first.stat().st_mtime_ns == first_mtime


def cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:  # it ended in between
        return []


def kill_a_worker_of(tmp_path, *flags: str) -> tuple[int, str]:
    """A 4-episode collection with 2 workers, one of them SIGKILLed once the first episode is saved (as a renderer
    crash kills one): (exit status, stderr). Fails on a hang."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sim.collect", "--episodes", "4", "--out", str(tmp_path), "--seed", "3", "--workers",
         "2", *SMALL, *flags], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    wait_while_running(process, lambda: any(tmp_path.glob("episode_*.h5")))
    children = psutil.Process(process.pid).children(recursive=True)
    try:
        workers = [child for child in children if "spawn_main" in " ".join(cmdline(child))]
        assert len(workers) == 2, "the collector runs no worker processes"
        workers[0].send_signal(signal.SIGKILL)
        _, stderr = process.communicate(timeout=180)  # a hang fails here
    finally:  # nothing left running, whatever happened: the collector, its first workers and any new ones
        if process.poll() is None:
            with contextlib.suppress(psutil.Error):
                children += psutil.Process(process.pid).children(recursive=True)
            process.kill()
        for child in children:
            if child.is_running():
                child.kill()
    return process.returncode, stderr


def test_a_worker_that_dies_is_replaced_and_the_collection_completes(tmp_path):
    """A renderer crash (a segfault in libc) killed a worker of three 160-320-episode collections: new workers record
    the episodes it left, and the collection completes."""
    returncode, stderr = kill_a_worker_of(tmp_path)
    assert returncode == 0, stderr[-3000:]
    assert "warning: a worker process died (it crashed or was killed); its pool's" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"episode_{i:06d}.h5" for i in range(4)]


def test_a_worker_that_dies_past_the_restarts_ends_the_collection_with_an_error_and_the_rerun_completes(tmp_path):
    """With no restart left (--worker_restarts 0) the collector stops, says what was lost, and keeps what was saved
    (multiprocessing.Pool used to wait forever for the dead worker's episode)."""
    returncode, stderr = kill_a_worker_of(tmp_path, "--worker_restarts", "0")
    assert returncode == 1
    assert "error: a worker process died (it crashed or was killed) while recording episodes of" in stderr
    assert "Re-run the same command to record the missing ones." in stderr
    saved = sorted(tmp_path.glob("episode_*.h5"))
    assert 1 <= len(saved) < 4
    result = collect(tmp_path, 4, 3, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert f"({len(saved)} already there)" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"episode_{i:06d}.h5" for i in range(4)]
    assert "--worker_restarts must be >= 0" in collect(tmp_path, 4, 3, "--worker_restarts", "-1").stderr


def test_the_workers_of_a_collector_stopped_with_sigterm_exit_and_the_rerun_completes(tmp_path):
    """SIGTERM (pkill, a job scheduler) ends the collector at once, with no clean-up: its workers used to go on
    recording episodes and then spin for over an hour."""
    process = subprocess.Popen(
        [sys.executable, "-m", "sim.collect", "--episodes", "6", "--out", str(tmp_path), "--seed", "3", "--workers",
         "2", *SMALL], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_while_running(process, lambda: any(tmp_path.glob("episode_*.h5")))
    workers = [child for child in psutil.Process(process.pid).children(recursive=True)
               if "spawn_main" in " ".join(cmdline(child))]
    try:
        assert len(workers) == 2, "the collector runs no worker processes"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == -signal.SIGTERM
        gone, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers {[p.pid for p in alive]} outlived their collector"
    finally:
        for worker in workers:
            if worker.is_running():
                worker.kill()
    saved = len(list(tmp_path.glob("episode_*.h5")))
    assert saved < 6  # stopped mid-way: the re-run has episodes to record
    result = collect(tmp_path, 6, 3, "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert f"({saved} already there)" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"episode_{i:06d}.h5" for i in range(6)]


def test_a_failed_write_leaves_no_file(tmp_path):
    recorder = EpisodeRecorder(CAMERA_NAMES, jpeg_quality=90)
    image = np.zeros((8, 8, 3), np.uint8)
    observation = {"images": {c: image for c in CAMERA_NAMES}, "qpos": np.zeros(6), "ee_pose": np.zeros(6)}
    recorder.add(observation, np.zeros(6), 0.0)
    with pytest.raises(TypeError):
        recorder.write(tmp_path / "episode_000000.h5", {"not_storable": object()})  # fails after the datasets
    assert list(tmp_path.iterdir()) == []


def test_replay_writes_a_png_and_an_mp4(collected, tmp_path):
    episode = collected / "episode_000000.h5"
    with h5py.File(episode) as f:
        length = len(f["action"])
    result = run_module("sim.replay", str(episode), "--out", str(tmp_path / "episode.png"))
    assert result.returncode == 0, result.stderr
    png = cv2.imread(str(tmp_path / "episode.png"))
    assert png is not None and png.shape[0] > 500 and png.std() > 10
    result = run_module("sim.replay", str(episode), "--out", str(tmp_path / "episode.mp4"))
    assert result.returncode == 0, result.stderr
    with imageio.get_reader(tmp_path / "episode.mp4") as reader:
        frames = [frame for frame in reader]
    assert len(frames) == length and frames[0].shape[1] >= 3 * 64
    assert sorted(p.name for p in tmp_path.iterdir()) == ["episode.mp4", "episode.png"]
