"""One deployment run, from the exported policy to the recorded rollout (run_policy_robot.py's logic):
load the policy and its training config, build the robot, refuse unless their layouts match, connect, run the
control loop under Ctrl-C / SIGTERM, ask the operator whether it succeeded, write the episode, the dry-run log and
run.json, print the figures. Returns the exit status: 0 when the run reached --max_seconds or the operator stopped
it, 2 when a safety check or a robot fault stopped it, 1 on an error (the episode and report are written all the
same)."""

import argparse
import datetime
import json
import sys
from pathlib import Path

import numpy as np
import yaml

from deploy.control_loop import ControlLoop, LoopSettings
from deploy.recording import DryRunLog, RolloutRecording, next_episode_path
from deploy.report import summarize, summary_lines, write_run_report
from deploy.safety import SafetyLimits, check_layout
from deploy.sim_robot import SimRobot
from deploy.stop_request import StopOnSignals, StopRequest
from evaluation.drivers import PolicyDriver, check_n_action_steps
from evaluation.policy_io import load_policy
from evaluation.training_data import DEFAULT_SIZE, training_data_facts
from sim.randomization import randomization_from_args

EXIT_STATUS = {"max_seconds": 0, "operator": 0, "robot_fault": 2, "error": 1}  # safety:* -> 2


def parse_cameras(text: str) -> dict:
    """--cameras "{side_camera: 0, tool_camera: /dev/video2}" -> {name: device index or path / URL}."""
    try:
        cameras = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise argparse.ArgumentTypeError(f"not a YAML mapping: {err}") from None
    if not isinstance(cameras, dict) or not cameras or not all(
            isinstance(k, str) and isinstance(v, (int, str)) for k, v in cameras.items()):
        raise argparse.ArgumentTypeError(f"expected {{camera name: device index or URL, ...}}, got {text!r}")
    return cameras


def make_robot(args, dataset_cfg: dict):
    if args.width is None:  # render, or ask the cameras for, the size the policy's training frames had
        facts = training_data_facts(dataset_cfg)
        args.width, args.height = facts["image_size"] if facts else DEFAULT_SIZE
    if args.robot == "sim":
        phantom, dr = randomization_from_args(args)
        return SimRobot(args.hz, args.width, args.height, args.seed, dr, phantom)
    from deploy.meca500 import Meca500Robot  # mecademicpy only where the robot is used

    return Meca500Robot(args.robot_address, args.cameras, args.width, args.height, args.hz, args.robot_joint_vel_limit,
                        args.robot_feedback_timeout_s, args.robot_watchdog_s, args.robot_controller_sim)


def output_paths(args) -> tuple[Path, Path | None]:
    """(output dir for run.json and dry_run.csv, episode file or None)."""
    episode = next_episode_path(args.record) if args.record else None
    if args.output_dir:
        return args.output_dir, episode
    if episode is not None:
        return args.record / "runs" / episode.stem, episode
    return Path("outputs/deploy") / datetime.datetime.now().strftime("run_%Y%m%d_%H%M%S"), None


def operator_success(flag: str | None, stop: dict) -> str:
    """--success, else the operator's answer on stdin; 'unknown' after a SIGTERM or without an answer."""
    if flag:
        return flag
    if stop["reason"] == "SIGTERM":
        return "unknown"
    while True:
        try:
            answer = input("Was this rollout a success? [y/n] ").strip().lower()
        except (EOFError, KeyboardInterrupt):
            print("note: no answer on stdin: the episode's success is recorded as unknown (pass --success yes|no)")
            return "unknown"
        if answer in ("y", "yes", "n", "no"):
            return "yes" if answer.startswith("y") else "no"


def episode_attrs(args, loop_settings: LoopSettings, stop: dict, success: str, robot, task: str) -> dict:
    attrs = {
        "task": task,  # the instruction the policy was given (the recorder's default is the simulator's)
        "policy": str(Path(args.policy).resolve()), "robot": robot.name, "fps": float(args.hz),
        "operator_success": success, "stop_kind": stop["kind"], "stop_reason": stop["reason"],
        "async_inference": loop_settings.async_inference, "n_action_steps": loop_settings.n_action_steps,
        "recorded_by": "run_policy_robot.py", "recorded_at": datetime.datetime.now().isoformat(timespec="seconds"),
    }
    if success != "unknown":
        attrs["success"] = success == "yes"
    for key, value in robot.facts().items():  # HDF5 attributes are scalars or strings
        attrs[key] = value if isinstance(value, (bool, int, float, str)) else json.dumps(value)
    return attrs


def run(args) -> int:
    loaded = load_policy(args.policy, args.device, args.config)
    dataset_cfg = loaded.train_cfg["dataset"]
    robot = make_robot(args, dataset_cfg)
    inputs = check_layout(loaded.policy, dataset_cfg, robot, args.jpeg_quality)  # before anything moves
    driver = PolicyDriver(loaded.policy, loaded.preprocessor, loaded.postprocessor, inputs, None,
                          args.temporal_ensemble_coeff)
    driver.reset(env=None, seed=args.seed)
    chunk_size = loaded.policy.config.chunk_size
    default_steps = chunk_size // 2 if args.async_inference else driver.n_action_steps
    settings = LoopSettings(hz=args.hz, n_action_steps=args.n_action_steps or default_steps,
                            async_inference=args.async_inference, max_seconds=args.max_seconds,
                            dry_run=args.dry_run, temporal_ensemble_coeff=args.temporal_ensemble_coeff)
    check_n_action_steps(settings.n_action_steps, chunk_size)
    box = np.asarray(args.workspace, dtype=np.float64).reshape(3, 2)
    limits = SafetyLimits(max_joint_step=np.radians(args.max_joint_speed) / args.hz, workspace=box,
                          on_violation=args.on_violation)
    output_dir, episode_path = output_paths(args)
    recording = RolloutRecording(episode_path, robot.cameras, args.jpeg_quality) if episode_path else None
    dry_log = DryRunLog() if args.dry_run else None

    print(f"Policy: {args.policy} (inputs from {loaded.config_source}; cameras {inputs.cameras}, state "
          f"{list(inputs.state)}, chunk {chunk_size})")
    print(f"Robot: {robot.name} at {args.hz:g} Hz, {'asynchronous' if args.async_inference else 'synchronous'} "
          f"inference, a chunk every {settings.n_action_steps} steps; speed limit {args.max_joint_speed:g} deg/s "
          f"({np.degrees(limits.max_joint_step):.2f} deg per tick), on violation: {args.on_violation}"
          + ("; DRY RUN: no motion is sent" if args.dry_run else ""))
    try:
        robot.connect()
        request = StopRequest()
        with StopOnSignals(request):
            loop = ControlLoop(robot, driver.predict_chunk, chunk_size, settings, limits, request,
                               sinks=tuple(s for s in (recording, dry_log) if s is not None), observe=driver.observe)
            stats = loop.run()
    finally:
        robot.close()

    summary = summarize(stats, settings)
    stop = stats.stop
    if recording is not None:
        if len(recording):
            success = operator_success(args.success, stop)
            recording.write(episode_attrs(args, settings, stop, success, robot, inputs.task))
            print(f"Episode: {recording.path} ({len(recording)} frames, success: {success})")
        else:
            print(f"Episode: none written ({recording.path} would have no frame: nothing was executed)")
    if dry_log is not None:
        dry_log.write(output_dir / "dry_run.csv")
        print(f"Dry run: measured joints vs. the commands the policy would have sent in {output_dir / 'dry_run.csv'}")
    run_settings = {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                    "n_action_steps": settings.n_action_steps, "config_source": loaded.config_source,
                    "episode": str(recording.path) if recording is not None and len(recording) else None}
    write_run_report(output_dir / "run.json", run_settings, summary, robot.facts())
    print(f"Report: {output_dir / 'run.json'}")
    for line in summary_lines(summary, settings):
        print(line)
    sys.stdout.flush()
    return EXIT_STATUS.get(stop["kind"], 2)
