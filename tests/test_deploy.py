"""deploy/ and run_policy_robot.py without a robot: the sim robot runs the whole loop with a real tiny SmolVLA (sync
and async, recording read back by training's dataset, compute_dataset_stats.py and the offline evaluator); async
inference keeps the control period while a slow policy predicts; every safety check clips or stops as documented;
a stalled camera and SIGTERM (a real subprocess) stop the run with a valid file; the Meca500 adapter's units and
Euler convention against sim.kinematics, its mecademicpy calls against mecademicpy's own API, and a refused
connection on 127.0.0.1 (no test talks to a controller or to any other address).
"""

import ast
import inspect
import json
import math
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import h5py
import mujoco
import numpy as np
import pytest
import yaml
from fixtures_policy import TASK, tiny_vlm_dir  # noqa: F401
from mecademicpy.mx_robot_def import MxRobotSimulationMode
from mecademicpy.robot import Robot as MecademicRobot
from train_runs import ROOT, env, run_dir  # noqa: F401  (run_dir: a pytest fixture)

import evaluate_smolvla_sim as ev
import run_policy_robot as cli
from deploy import meca500
from deploy.cameras import CameraCapture
from deploy.control_loop import ControlLoop, LoopSettings
from deploy.recording import DryRunLog
from deploy.safety import DEFAULT_WORKSPACE, SafetyLimits, SafetyStop, check_command, check_layout, check_observation
from deploy.session import make_robot
from deploy.sim_robot import SimRobot, physics_substeps
from deploy.stop_request import StopRequest
from deploy.tool import ee_pose_from_joints, tip_pose
from episode_format.reader import discover_episodes
from evaluation.drivers import ActionChunkSchedule, PolicyDriver
from evaluation.policy_io import load_policy, policy_inputs, training_config_of_export
from insertion_vla.dataset import EpisodeDataset
from insertion_vla.episodes import keys_from_config
from insertion_vla.errors import UserError
from insertion_vla.export import TRAINING_CONFIG_FILE
from sim.env import NeedleInsertionEnv
from sim.kinematics import flange_pose
from sim.randomization import DomainRandomization, PhantomPlacement
from sim.scene import HOME_QPOS_DEG, TIP_SITE

HOME = np.radians(HOME_QPOS_DEG)
WIDTH, HEIGHT = 64, 48  # the tiny policy's training episodes (episode_files)
HZ = 5  # a period of 200 ms: room for this machine's software rendering of three cameras (~0.1 s each)
WIDE_OPEN = ["--on_violation", "clip", "--max_joint_speed", "400", "--workspace", "-1", "1", "-1", "1", "-1", "1"]
INFERENCE_LINE = "Inference latency: "


@pytest.fixture(scope="module")
def export(run_dir):
    return run_dir / "out" / "checkpoints" / "final_hf"


def sim_robot(hz=HZ, robot_class=SimRobot) -> SimRobot:
    return robot_class(hz, WIDTH, HEIGHT, seed=3, dr=DomainRandomization(), phantom=PhantomPlacement())


class Executed:
    """A sink keeping what the loop executed: the observations and the commands."""

    def __init__(self):
        self.observations, self.commands = [], []

    def add(self, observation, command, time_s):
        self.observations.append(observation)
        self.commands.append(np.array(command))


def run_loop(chunk, *, robot=None, hz=HZ, max_seconds=1.0, on_violation="stop", speed_deg_s=40.0,
             workspace=DEFAULT_WORKSPACE, dry_run=False, sinks=()):
    """The control loop on the sim robot with a hand-made chunk for every prediction (no model)."""
    robot = robot or sim_robot(hz)
    executed = Executed()
    limits = SafetyLimits(np.radians(speed_deg_s) / hz, np.array(workspace), on_violation=on_violation)
    settings = LoopSettings(hz=hz, n_action_steps=len(chunk), max_seconds=max_seconds, dry_run=dry_run)
    robot.connect()
    try:
        stats = ControlLoop(robot, lambda observation: chunk.copy(), len(chunk), settings, limits, StopRequest(),
                            sinks=(executed, *sinks)).run()
    finally:
        robot.close()
    return stats, executed, robot


def test_the_loop_shows_every_observation_to_the_policy_before_predicting_from_it():
    """ControlLoop's observe (PolicyDriver.observe: the placement estimate, fed every frame as training's was) gets
    the first observation and every tick's, each before a chunk is predicted from it."""
    events, chunk = [], steady_chunk(HOME, length=4)

    def predict(observation):
        events.append(("predict", observation["time"]))
        return chunk.copy()

    robot = sim_robot()
    robot.connect()
    try:
        stats = ControlLoop(robot, predict, len(chunk), LoopSettings(hz=HZ, n_action_steps=2, max_seconds=2.0),
                            SafetyLimits(np.radians(40.0) / HZ, np.array(DEFAULT_WORKSPACE)), StopRequest(),
                            observe=lambda observation: events.append(("observe", observation["time"]))).run()
    finally:
        robot.close()
    observed = [time_s for kind, time_s in events if kind == "observe"]
    # the one before the clock starts, then every tick (3 ticks at least: 2 s at 5 Hz leave room for a loaded machine)
    assert len(observed) == stats.steps + 1 and stats.steps >= 3
    predictions = [i for i, (kind, _) in enumerate(events) if kind == "predict"]
    assert len(predictions) >= 2
    assert all(events[i - 1] == ("observe", events[i][1]) for i in predictions)  # right after its observation


def robot_cli(argv) -> int:
    """run_policy_robot.py in this process (no second import of torch and lerobot); returns its exit status."""
    return cli.main([str(a) for a in argv])


def steady_chunk(q, length=10):
    return np.tile(np.asarray(q, dtype=np.float32), (length, 1))


# -- end to end with the tiny policy ----------------------------------------------------------------------------

def test_sim_robot_end_to_end_records_an_episode_that_training_reads(run_dir, export, tmp_path, capsys):
    record = tmp_path / "rollouts"
    status = robot_cli(["--policy", export, "--robot", "sim", "--hz", HZ, "--max_seconds", 3, "--n_action_steps", 4,
                        "--record", record, "--success", "yes", "--device", "cpu", *WIDE_OPEN])
    stdout = capsys.readouterr().out
    assert status == 0, stdout
    episode = record / "episode_000000.h5"
    report = json.loads((record / "runs" / "episode_000000" / "run.json").read_text())
    summary = report["summary"]
    steps = summary["steps"]  # 15 ticks in 3 s, fewer where sync predictions overran
    assert 5 <= steps <= 15 and summary["stops"][0]["kind"] == "max_seconds"
    assert f"Stopped: max_seconds at tick {steps}: 3 s elapsed ({steps} ticks)" in stdout
    assert [c["predicted_at_tick"] for c in summary["chunks"]] == list(range(0, steps, 4))  # receding horizon
    assert summary["inference_latency_ms"]["count"] == len(summary["chunks"]) - 1
    assert summary["control_period_ms"]["count"] == steps and summary["overruns"] <= steps
    assert summary["jitter_ms"]["p99"] >= summary["jitter_ms"]["p50"] >= 0.0
    assert report["settings"]["episode"] == str(episode)
    last = stdout.strip().splitlines()[-1]
    assert last.startswith(INFERENCE_LINE) and f"over {len(summary['chunks']) - 1} chunks" in last, last

    cfg = yaml.safe_load((run_dir / "out" / "config.yaml").read_text())
    keys = keys_from_config(cfg["dataset"])
    dataset = EpisodeDataset([episode], keys, horizon=50, image_size=(64, 64))
    assert len(dataset) == steps
    sample = dataset[3]
    assert sample["observation.state"].shape == (6,) and sample["action"].shape == (50, 6)
    for camera in ("camera1", "camera2", "camera3"):
        assert sample[f"observation.images.{camera}"].shape == (3, 64, 64)
    with h5py.File(episode) as f:
        stamps, actions, qpos = f["timestamp"][()], f["action"][()], f["observations/qpos"][()]
        attrs = dict(f.attrs)
        assert f["observations/images/side_camera"].shape == (steps,)
    assert stamps[0] == 0.0 and np.all(np.diff(stamps) > 0)
    assert np.all(np.diff(stamps) >= 0.9 / HZ)  # a tick is never shorter than its period (overruns make it longer)
    assert attrs["robot"] == "sim" and attrs["success"] and attrs["operator_success"] == "yes"
    assert attrs["fps"] == HZ and attrs["policy"] == str(export.resolve()) and attrs["stop_kind"] == "max_seconds"
    assert attrs["task"] == TASK  # the policy's instruction, which training reads back
    # The recorded action is the target the arm was sent: the next frame's measured joints are there.
    assert np.abs(qpos[1:] - actions[:-1]).max() < np.radians(1.0)

    stats = subprocess.run([sys.executable, ROOT / "compute_dataset_stats.py", "--dataset_root", record, "--output",
                            tmp_path / "stats.yaml"], capture_output=True, text=True, cwd=ROOT)
    assert stats.returncode == 0 and f"observation.state: {steps} frames" in stats.stdout, stats.stdout + stats.stderr
    ev.main(["--policy", str(export), "--episodes_from", str(record), "--device", "cpu",
             "--output_dir", str(tmp_path / "offline")])
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"Per-joint MAE over {steps} frames of 1 episodes")


def test_async_inference_keeps_the_period_while_a_slow_policy_predicts(export):
    """The real tiny policy, slowed by 3 periods of sleep: asynchronous, no tick waits for it and each late chunk is
    applied from its element d >= 3; synchronous, every prediction is an overrun of at least the sleep."""
    hz, sleep_s = 2, 1.5
    loaded = load_policy(export, "cpu")
    driver = PolicyDriver(loaded.policy, loaded.preprocessor, loaded.postprocessor,
                          policy_inputs(loaded.policy, loaded.train_cfg["dataset"]))
    driver.reset(env=None, seed=0)

    def slow_policy(observation):
        time.sleep(sleep_s)
        return driver.predict_chunk(observation)

    limits = SafetyLimits(np.radians(400) / hz, np.array([[-1.0, 1.0]] * 3), on_violation="clip")
    periods = {}
    for mode, k, seconds in (("async", 1, 5.0), ("sync", 4, 3.0)):
        robot = sim_robot(hz)
        robot.connect()
        settings = LoopSettings(hz=hz, n_action_steps=k, async_inference=mode == "async", max_seconds=seconds)
        try:
            stats = ControlLoop(robot, slow_policy, 50, settings, limits, StopRequest()).run()
        finally:
            robot.close()
        assert stats.stop["kind"] == "max_seconds", stats.stop
        assert all(latency >= sleep_s for latency in stats.latencies_s) and stats.latencies_s
        periods[mode] = np.diff(stats.tick_starts)
        if mode == "async":
            assert stats.starved == 0 and len(stats.chunk_ticks) >= 2  # chunk 0 and at least one late chunk
            assert all(arrived - predicted >= sleep_s * hz for predicted, arrived in stats.chunk_ticks[1:])
        else:
            assert stats.overruns >= len(stats.latencies_s)
    assert periods["sync"].max() >= sleep_s
    assert periods["async"].max() < sleep_s, periods["async"]
    assert np.median(periods["async"]) == pytest.approx(1 / hz, rel=0.2), periods["async"]


def test_sigterm_mid_run_stops_the_arm_and_leaves_a_valid_episode(export, tmp_path):
    record = tmp_path / "rollouts"
    process = subprocess.Popen(
        [sys.executable, ROOT / "run_policy_robot.py", "--policy", export, "--robot", "sim", "--hz", str(HZ),
         "--max_seconds", "120", "--async_inference", "--record", record, "--device", "cpu", *WIDE_OPEN],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env(), cwd=ROOT)
    output = []
    for line in process.stdout:
        output.append(line)
        if line.startswith("Clock started"):
            break
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=120)
    stdout = "".join(output) + rest
    assert process.returncode == 0, stdout[-3000:]
    assert "Stopped: operator" in stdout and "SIGTERM" in stdout and stdout.strip().splitlines()[-1].startswith(
        INFERENCE_LINE)

    (episode,) = discover_episodes(record)
    assert not list(record.rglob("*.tmp-*"))
    with h5py.File(episode) as f:
        attrs, length = dict(f.attrs), len(f["action"])
        assert len(f["timestamp"]) == length and f["observations/images/tool_camera"].shape == (length,)
    assert length >= 2 and attrs["stop_reason"] == "SIGTERM" and attrs["operator_success"] == "unknown"
    assert "success" not in attrs and attrs["async_inference"]
    report = json.loads((record / "runs" / episode.stem / "run.json").read_text())
    assert report["summary"]["steps"] == length and report["summary"]["stops"][0]["reason"] == "SIGTERM"


# -- safety --------------------------------------------------------------------------------------------------------

def test_command_checks_by_hand():
    limits = SafetyLimits(max_joint_step=np.radians(8.0), workspace=np.array([[-1.0, 1.0]] * 3), on_violation="clip")
    previous = np.radians([174.0, 0, 0, 0, 45, 0])
    command, violations = check_command(np.radians([200.0, 0, 0, 0, 45, 0]), previous, limits)
    np.testing.assert_allclose(np.degrees(command), [175.0, 0, 0, 0, 45, 0])  # onto the limit, 1 deg: no speed issue
    assert [(v.kind, v.response) for v in violations] == [("joint_limit", "clipped")]
    assert "joint 1 at 200.00 deg is outside its limits [-175.0, 175.0]" in violations[0].detail

    previous = HOME.copy()
    command, violations = check_command(HOME + np.radians([10.0, -5.0, 0, 0, 0, 0]), previous, limits)
    np.testing.assert_allclose(np.degrees(command - previous), [8.0, -4.0, 0, 0, 0, 0])  # scaled: same direction
    assert [(v.kind, v.response) for v in violations] == [("joint_step", "clipped")]

    box = np.array([[v - 0.005, v + 0.005] for v in tip_pose(HOME)[:3, 3]])  # 1 cm around the home tip
    limits = SafetyLimits(max_joint_step=np.radians(8.0), workspace=box, on_violation="clip")
    command, violations = check_command(HOME + np.radians([0, 5.0, 0, 0, 0, 0]), previous, limits)
    np.testing.assert_array_equal(command, previous)
    assert [(v.kind, v.response) for v in violations] == [("workspace", "held")]

    stopping = SafetyLimits(max_joint_step=np.radians(8.0), workspace=box, on_violation="stop")
    with pytest.raises(SafetyStop, match="workspace: the needle tip would be at"):
        check_command(HOME + np.radians([0, 5.0, 0, 0, 0, 0]), previous, stopping)
    with pytest.raises(SafetyStop, match=r"joint_step: joint 6 would move \+9\.00 deg"):
        check_command(HOME + np.radians([0, 0, 0, 0, 0, 9.0]), previous, stopping)
    with pytest.raises(SafetyStop, match="non_finite"):
        check_command(np.array([np.nan, 0, 0, 0, 0, 0]), previous, limits)  # clip mode too: nothing to clip to
    assert check_command(HOME + np.radians([0.5, 0, 0, 0, 0, 0]), previous, stopping)[1] == []


def test_a_chunk_past_the_speed_limit_stops_or_is_slowed_down():
    target = HOME + np.radians([0, 0, 0, 0, 0, 14.0])  # joint 6 only: the tip does not move
    stats, executed, robot = run_loop(steady_chunk(target))
    assert stats.stop["kind"] == "safety:joint_step" and stats.steps == 0, stats.stop
    assert re.search(r"joint 6 would move \+1[34]\.\d\d deg in one tick, more than 8\.00 deg", stats.stop["reason"])
    np.testing.assert_allclose(robot.env.commanded_qpos(), HOME)  # nothing was sent: the arm holds home

    stats, executed, _ = run_loop(steady_chunk(target), on_violation="clip")
    commands = np.array(executed.commands)
    start = executed.observations[0]["qpos"]  # the first step counts from the measured joints
    steps = np.abs(np.diff(np.vstack([start, commands]), axis=0))
    assert steps.max() <= np.radians(8.0) + 1e-9
    assert stats.steps >= 2 and stats.violations["joint_step"] == 1  # 8 deg, then the remaining 6
    np.testing.assert_allclose(commands[1:], np.tile(target, (stats.steps - 1, 1)), atol=1e-6)
    assert stats.stop["kind"] == "max_seconds"


def test_a_chunk_leaving_the_workspace_stops_or_is_held():
    box = [(v - 0.01, v + 0.01) for v in tip_pose(HOME)[:3, 3]]  # 2 cm around the home tip
    away = HOME + np.radians([0, 6.0, 0, 0, 0, 0])  # the shoulder: the tip moves ~3 cm
    stats, _, robot = run_loop(steady_chunk(away), workspace=box)
    assert stats.stop["kind"] == "safety:workspace" and "outside the workspace" in stats.stop["reason"]
    np.testing.assert_allclose(robot.env.commanded_qpos(), HOME)

    stats, executed, _ = run_loop(steady_chunk(away), workspace=box, on_violation="clip")
    start = executed.observations[0]["qpos"]
    np.testing.assert_allclose(np.array(executed.commands), np.tile(start, (stats.steps, 1)), atol=1e-7)  # held
    assert stats.violations["workspace"] == stats.steps >= 1

    stats, _, _ = run_loop(steady_chunk(HOME), workspace=[(0.5, 0.6)] * 3)  # the tip starts outside: no first move
    assert stats.stop["kind"] == "safety:workspace" and "at the start" in stats.stop["reason"] and stats.steps == 0


def test_a_non_finite_prediction_stops_even_when_clipping():
    chunk = steady_chunk(HOME)
    chunk[2, 3] = np.nan
    stats, executed, _ = run_loop(chunk, on_violation="clip", max_seconds=5)
    assert stats.stop["kind"] == "safety:non_finite" and stats.stop["tick"] == 2 and stats.steps == 2


def test_a_model_that_hangs_stops_the_asynchronous_run():
    def predict(observation):  # chunk 0 at once, then predictions that take 5 s, 25 ticks: past a chunk's 4
        if predict.calls:
            time.sleep(5)
        predict.calls += 1
        return steady_chunk(HOME, length=4)
    predict.calls = 0

    robot = sim_robot()
    robot.connect()
    settings = LoopSettings(hz=HZ, n_action_steps=2, async_inference=True, max_seconds=30)
    limits = SafetyLimits(np.radians(40.0) / HZ, np.array(DEFAULT_WORKSPACE))
    try:
        stats = ControlLoop(robot, predict, 4, settings, limits, StopRequest()).run()
    finally:
        robot.close()
    assert stats.stop["kind"] == "safety:model_stalled", stats.stop
    assert stats.steps == 4 and stats.starved == 1  # chunk 0 executed, then a chunk's time of waiting, and stopped
    np.testing.assert_allclose(robot.env.commanded_qpos(), HOME, atol=1e-6)


class FrozenToolCamera(SimRobot):
    """A stand-in for a camera that stops delivering: tool_camera's frame and its time freeze after two ticks."""

    def observe(self):
        observation = super().observe()
        self.seen = getattr(self, "seen", 0) + 1
        if self.seen == 2:
            self.frozen = (observation["images"]["tool_camera"], observation["image_times"]["tool_camera"])
        if self.seen > 2:
            observation["images"]["tool_camera"], observation["image_times"]["tool_camera"] = self.frozen
        return observation


def test_a_stalled_camera_stops_the_run():
    stats, executed, _ = run_loop(steady_chunk(HOME), robot=sim_robot(robot_class=FrozenToolCamera), max_seconds=5)
    assert stats.stop["kind"] == "safety:stale_camera" and "'tool_camera'" in stats.stop["reason"], stats.stop
    assert 1 <= stats.steps <= 3  # the frame is stale two periods after it froze


def test_a_dry_run_sends_nothing_and_logs_predictions_against_the_measured_joints(tmp_path):
    target = HOME + np.radians([0, 0, 0, 0, 0, 5.0])
    log = DryRunLog()
    stats, _, robot = run_loop(steady_chunk(target), dry_run=True, sinks=(log,))
    np.testing.assert_allclose(robot.env.commanded_qpos(), HOME)  # the arm never got a target
    log.write(tmp_path / "dry_run.csv")
    rows = np.loadtxt(tmp_path / "dry_run.csv", delimiter=",", skiprows=1)
    assert len(rows) == stats.steps >= 1
    np.testing.assert_allclose(rows[:, 2:8], np.tile(HOME_QPOS_DEG, (len(rows), 1)), atol=0.5)  # measured: at home
    np.testing.assert_allclose(rows[:, 8:14], np.tile(np.degrees(target), (len(rows), 1)), atol=1e-3)  # would-be
    assert rows[:, 19] == pytest.approx(5.0, abs=0.5)  # joint 6: 5 deg between the two


def test_a_late_chunk_replaces_the_queue_from_its_matching_element():
    schedule = ActionChunkSchedule(chunk_size=4, every=4)
    schedule.add(np.array([[0.0], [1.0], [2.0], [3.0]]))
    executed = [float(schedule.next_action()[0]) for _ in range(2)]
    schedule.add(np.array([[10.0], [11.0], [12.0], [13.0]]), predicted_at=0)  # from tick 0's observation, at tick 2
    executed += [float(schedule.next_action()[0]) for _ in range(2)]
    assert executed == [0.0, 1.0, 12.0, 13.0] and schedule.needs_chunk()
    with pytest.raises(ValueError, match="before it"):
        schedule.add(np.zeros((4, 1)), predicted_at=5)
    late = ActionChunkSchedule(chunk_size=4, every=4)
    late.add(np.zeros((4, 1)))
    late.next_action()
    late.add(np.zeros((4, 1)))  # predicted at step 1
    with pytest.raises(ValueError, match="older than the newest"):
        late.add(np.zeros((4, 1)), predicted_at=0)


def red_video(path: Path, frames: int = 3) -> Path:
    """A short MJPG file: an OpenCV capture source that delivers a few red frames, then ends."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 15, (WIDTH, HEIGHT))
    for _ in range(frames):
        writer.write(np.full((HEIGHT, WIDTH, 3), (0, 0, 255), np.uint8))  # red, in OpenCV's BGR
    writer.release()
    return path


def test_a_camera_that_stops_delivering_shows_as_a_stale_frame(tmp_path):
    capture = CameraCapture("side_camera", str(red_video(tmp_path / "camera.avi")), WIDTH, HEIGHT)
    deadline = time.monotonic() + 5
    while not capture.ended and time.monotonic() < deadline:  # a file ends: the camera stops delivering
        time.sleep(0.01)
    frame, captured = capture.latest()
    capture.close()
    assert capture.ended and frame.shape == (HEIGHT, WIDTH, 3) and frame[0, 0, 0] > 200 and frame[0, 0, 2] < 50  # RGB
    observation = {"image_times": {"side_camera": captured}, "qpos": np.zeros(6), "ee_pose": np.zeros(6)}
    check_observation(observation, captured + 0.1, 0.1, ("side_camera",))
    with pytest.raises(SafetyStop, match="stale_camera: camera 'side_camera': the newest frame is 0.300 s old"):
        check_observation(observation, captured + 0.3, 0.1, ("side_camera",))
    with pytest.raises(UserError, match="camera 'top_camera': cannot open OpenCV capture"):
        CameraCapture("top_camera", str(tmp_path / "missing.avi"), WIDTH, HEIGHT)


# -- the Meca500 adapter -------------------------------------------------------------------------------------------

def rx(a):
    return np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])


def ry(b):
    return np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])


def rz(c):
    return np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])


KNOWN_JOINTS_DEG = ([90, 0, 0, 0, 45, 0], [60, 20, -30, 40, 30, -50], [120, -20, 10, -60, 70, 90], [95, 15, 5, 0, 20, 0])


def test_meca500_units_and_euler_convention_match_the_simulator():
    assert meca500.joints_to_robot(np.radians([90, -45, 0, 30, 45, 180])) == pytest.approx([90, -45, 0, 30, 45, 180])
    np.testing.assert_allclose(meca500.joints_from_robot([90, -45, 0, 30, 45, 180]),
                               [math.pi / 2, -math.pi / 4, 0, math.pi / 6, math.pi / 4, math.pi])
    assert meca500.tool_frame_for_robot() == pytest.approx([0, 0, 75.0, 0, 0, -90.0])  # SetTrf: the needle tip
    # Mecademic's zero pose: the flange at (190, 0, 308) mm, reported as (0, 90, 0) deg = Rx(0) Ry(90) Rz(0).
    np.testing.assert_allclose(flange_pose(np.zeros(6))[:3, :3], ry(np.pi / 2), atol=1e-12)

    env_ = NeedleInsertionEnv(width=32, height=24, dr=None, render_images=False)
    env_.reset(seed=0)
    for q_deg in KNOWN_JOINTS_DEG:
        q = np.radians(q_deg)
        env_.data.qpos[:] = q
        mujoco.mj_kinematics(env_.model, env_.data)
        position, rotation = env_.data.site(TIP_SITE).xpos.copy(), env_.data.site(TIP_SITE).xmat.reshape(3, 3)
        ee_pose = ee_pose_from_joints(q)  # the simulator's kinematics + the tool frame = MuJoCo's needle tip
        np.testing.assert_allclose(ee_pose[:3], position, atol=1e-9)
        # The robot's report of that pose, in its units: what the policy gets must be the simulator's ee_pose, and
        # its angles must be the Meca500's (mobile XYZ: R = Rx(a) Ry(b) Rz(c), |b| <= 90 deg).
        reading = [*(position * 1000.0), *np.degrees(ee_pose[3:])]
        converted = meca500.pose_from_robot(reading)
        np.testing.assert_allclose(converted, ee_pose, atol=1e-12)
        a, b, c = converted[3:]
        assert abs(b) <= np.pi / 2
        np.testing.assert_allclose(rx(a) @ ry(b) @ rz(c), rotation, atol=1e-9)
        meca500.check_pose_feedback(q, converted)  # consistent: accepted

    q = np.radians(KNOWN_JOINTS_DEG[1])
    flange = flange_pose(q)  # the TRF left at the flange: 75 mm off
    no_tool_frame = meca500.pose_from_robot([*(flange[:3, 3] * 1000), *np.degrees(ee_pose_from_joints(q)[3:])])
    with pytest.raises(UserError, match=r"75\.0 mm, 0\.0 deg apart"):
        meca500.check_pose_feedback(q, no_tool_frame)
    with pytest.raises(UserError, match="tool frame or the world frame"):
        meca500.check_pose_feedback(q, np.concatenate([ee_pose_from_joints(q)[:3], np.radians(ee_pose_from_joints(q)[3:])]))


def test_the_controller_simulation_mode_must_be_the_one_asked_for():
    meca500.check_simulation_mode(True, MxRobotSimulationMode.MX_SIM_MODE_REAL_TIME)
    meca500.check_simulation_mode(False, MxRobotSimulationMode.MX_SIM_MODE_DISABLED)
    with pytest.raises(UserError, match="reports its simulation mode off.*nothing was moved"):
        meca500.check_simulation_mode(True, MxRobotSimulationMode.MX_SIM_MODE_DISABLED)
    with pytest.raises(UserError, match="is in its simulation mode.*--robot.controller_sim"):
        meca500.check_simulation_mode(False, MxRobotSimulationMode.MX_SIM_MODE_FAST)


def test_the_adapter_calls_only_what_mecademicpy_offers():
    """Every robot method deploy/meca500.py calls exists in the pinned mecademicpy, with those arguments."""
    tree = ast.parse((ROOT / "deploy" / "meca500.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and isinstance(node.func.value, ast.Attribute) and node.func.value.attr == "_robot"]
    names = {call.func.attr for call in calls}
    assert {"Connect", "ActivateAndHome", "SetTrf", "MoveJoints", "PauseMotion", "ClearMotion", "GetRobotRtData",
            "ConnectionWatchdog", "Disconnect"} <= names
    for call in calls:
        method = getattr(MecademicRobot, call.func.attr, None)
        assert callable(method), call.func.attr
        if not any(isinstance(arg, ast.Starred) for arg in call.args):
            inspect.signature(method).bind(None, *call.args, **{k.arg: None for k in call.keywords})


def test_meca500_refuses_a_camera_layout_the_policy_was_not_trained_on(export, capsys):
    with pytest.raises(UserError, match=r"\['tool_camera', 'top_camera'\] missing.*--cameras \"\{side_camera: DEVICE"):
        robot_cli(["--policy", export, "--robot", "meca500", "--robot.address", "127.0.0.1", "--cameras",
                  "{side_camera: 0, wrist: 1}", "--device", "cpu"])


def test_meca500_refuses_a_policy_that_sees_the_simulated_placement_estimate(export):
    """dataset.placement_estimate is a localizer trained on rendered frames: on the real robot, refused before
    anything connects, as dataset.true_placement is on any robot (the same policy and config without them pass the
    same check)."""
    loaded = load_policy(export, "cpu")
    dataset_cfg = training_config_of_export(export)[0]["dataset"]
    argv = ["--policy", export, "--robot", "meca500", "--robot.address", "127.0.0.1", "--cameras",
            "{side_camera: 0, tool_camera: 1, top_camera: 2}"]
    robot = make_robot(cli.parse_args([str(a) for a in argv]), dataset_cfg)  # builds, connects to nothing
    with pytest.raises(UserError, match="placement estimate of /any/vlm .*on the real robot.*placement_estimate: null"):
        check_layout(loaded.policy, {**dataset_cfg, "placement_estimate": "/any/vlm"}, robot, 90)
    sim = make_robot(cli.parse_args([str(a) for a in ("--policy", export, "--robot", "sim")]),
                     dataset_cfg)
    for each in (robot, sim):
        with pytest.raises(UserError, match="true placement .*which no robot can give it.*trained without it"):
            check_layout(loaded.policy, {**dataset_cfg, "true_placement": True}, each, 90)
    sim.close()
    check_layout(loaded.policy, dataset_cfg, robot, 90)


def test_the_meca500_cameras_are_asked_for_the_size_of_the_training_frames(export):
    train_cfg, source = training_config_of_export(export)
    assert source == str(export / TRAINING_CONFIG_FILE)  # training kept its config in the export
    dataset_cfg = train_cfg["dataset"]
    base = ["--policy", export, "--robot", "meca500", "--robot.address", "127.0.0.1", "--cameras", "{side_camera: 0}"]
    robot = make_robot(cli.parse_args([str(a) for a in base]), dataset_cfg)  # builds, connects to nothing
    assert (robot.width, robot.height) == (WIDTH, HEIGHT)
    robot = make_robot(cli.parse_args([str(a) for a in base] + ["--width", "320", "--height", "240"]), dataset_cfg)
    assert (robot.width, robot.height) == (320, 240)


def test_meca500_connection_refused_on_loopback_is_a_clear_error(export, tmp_path):
    """Cameras from video files (opened first, before anything moves), then mecademicpy's Connect to a port of
    127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    video = red_video(tmp_path / "camera.avi")
    cameras = "{" + ", ".join(f"{name}: {video}" for name in ("side_camera", "tool_camera", "top_camera")) + "}"
    with pytest.raises(UserError, match=f"Meca500 at 127.0.0.1:{port}: .*--robot.address"):
        robot_cli(["--policy", export, "--robot", "meca500", "--robot.address", f"127.0.0.1:{port}", "--cameras",
                   cameras, "--device", "cpu"])


def test_command_line_refusals(capsys):
    for argv, message in (
        (["--hz", "7"], "--hz 7.0: the simulator steps physics in 1/600 s"),
        (["--cameras", "{side_camera: 0}"], "--cameras is for --robot meca500"),
        (["--dry_run", "--record", "x"], "--dry_run moves nothing"),
        (["--success", "yes"], "--success labels the recorded episode"),
    ):
        with pytest.raises(SystemExit):
            cli.parse_args(["--policy", "p", "--robot", "sim", *argv])
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(["--policy", "p", "--robot", "meca500"])
    assert "--robot meca500 needs --cameras" in capsys.readouterr().err
    assert physics_substeps(15) == 40 and physics_substeps(2) == 300  # 1/600 s physics steps per tick
