#!/usr/bin/env python
"""Run a trained policy on a robot, safely, measure it, and record every rollout as a training episode.

    python run_policy_robot.py --policy outputs/train/RUN/checkpoints/final_hf --robot sim --record data/rollouts
    python run_policy_robot.py --policy .../final_hf --robot meca500 --robot.address 192.168.0.100 \\
        --cameras "{side_camera: 0, tool_camera: 2, top_camera: 4}" --dry_run
    python run_policy_robot.py --policy .../final_hf --robot meca500 --cameras "{...}" --max_joint_speed 10 \\
        --on_violation clip --async_inference --record data/real_robot

One control loop for both robots (deploy/control_loop.py): every tick (--hz) it observes the robot (cameras,
joints, needle-tip pose, with timestamps), takes the next action of the policy's chunk queue, checks it, sends it
as a joint target and records the frame. The policy sees exactly what the evaluator feeds it (evaluation/
policy_io.py: cameras mapped as in its training config's dataset.cameras, JPEG round trip, resize with padding,
the same state and task). Chunks: receding horizon (a chunk every --n_action_steps ticks, predicted in the tick
that needs it), or with --async_inference predicted in a background thread while the current chunk executes;
a chunk predicted from tick t's observation that arrives at tick t + d is applied from its element d.

Robots: `sim` is sim/'s NeedleInsertionEnv (the collector's scene, cameras and domain randomization) stepped on
the wall clock, one physics period per tick; `meca500` is the Mecademic arm through mecademicpy (activated,
homed, tool frame at the needle tip, MoveJoints every tick) with OpenCV cameras.

Safety (deploy/safety.py): nothing moves unless the policy's cameras, state and action match the robot; every
command is checked for non-finite values (stop), joint limits, a joint speed limit (--max_joint_speed) and a
workspace box for the needle tip (--workspace), then clipped or stopped (--on_violation); a camera frame older
than 2 ticks, a feedback timeout, a robot error, Ctrl-C or SIGTERM stop the run: motion paused and cleared, the
arm holding where it is, the recording closed cleanly. --dry_run does everything but send motion.

Outputs: with --record DIR, each rollout is DIR/episode_NNNNNN.h5 in the toolkit's format (read by
compute_dataset_stats.py, training and evaluate_smolvla_sim.py --episodes_from as they are), its success flag from
--success or asked on stdin at the end. run.json (--output_dir, default DIR/runs/episode_NNNNNN/ when recording,
else outputs/deploy/run_<time>/) holds the settings, the control period and its jitter, overruns, inference
latency per chunk, steps, safety violations and the stop. The console ends with `Inference latency: ...`.
Exit status: 0 at --max_seconds or an operator's stop, 2 when a safety check or a robot fault stopped the run,
1 on bad input or an error. The deployment steps and the checklist: docs/deployment.md.
"""

import argparse
from pathlib import Path

import torch

from deploy.safety import DEFAULT_MAX_JOINT_SPEED_DEG_S, DEFAULT_WORKSPACE
from deploy.session import parse_cameras, run
from deploy.sim_robot import physics_substeps
from episode_format.errors import UserError, exit_on_user_error
from episode_format.jpeg import DEFAULT_JPEG_QUALITY
from evaluation.rollout import EVAL_BASE_SEED
from sim.randomization import add_randomization_args


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", type=Path, required=True, metavar="PATH",
                        help="the policy: an exported final_hf/ folder (or a training checkpoint_*.pt)")
    parser.add_argument("--robot", choices=["sim", "meca500"], required=True,
                        help="sim: the simulator on the wall clock; meca500: the real arm")
    parser.add_argument("--config", type=Path,
                        help="training config whose dataset section (cameras, state, task) describes the policy's "
                             "inputs (default: the checkpoint's own, or final_hf/training_config.yaml; an older export: the "
                             "run's config.yaml two folders up)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the policy runs (default here: %(default)s)")

    loop = parser.add_argument_group("control loop")
    loop.add_argument("--hz", type=float, default=15.0,
                      help="control rate: one joint target per tick (default: %(default)s, the training data's; the "
                           "simulator needs a divisor of 600)")
    loop.add_argument("--n_action_steps", type=int, metavar="K",
                      help="synchronous: ticks between two predictions (default: the policy's n_action_steps); "
                           "asynchronous: ticks after a chunk's observation before the next prediction starts "
                           "(default: half the chunk, so a prediction may take up to chunk_size - K ticks)")
    loop.add_argument("--async_inference", action="store_true",
                      help="predict the next chunk in a background thread while the current one executes; it "
                           "replaces the queue from the tick it arrives at (default: off, receding horizon)")
    loop.add_argument("--temporal_ensemble_coeff", type=float, metavar="M",
                      help="temporal ensembling of overlapping chunks (ACT), as in the evaluator: each tick's action "
                           "the average of all chunks' predictions for it, weighted exp(-M * i), i = 0 the oldest "
                           "(default: off)")
    loop.add_argument("--max_seconds", type=float, default=20.0,
                      help="the run stops this many wall-clock seconds after the clock started (default: %(default)s)")
    loop.add_argument("--dry_run", action="store_true",
                      help="everything but sending motion: the arm stays still, the commands the policy would send "
                           "are logged against the measured joints in OUTPUT_DIR/dry_run.csv")
    loop.add_argument("--seed", type=int, default=EVAL_BASE_SEED,
                      help="the sampler's noise, and the simulated scene's seed (default: %(default)s)")

    safety = parser.add_argument_group("safety")
    safety.add_argument("--max_joint_speed", type=float, default=DEFAULT_MAX_JOINT_SPEED_DEG_S, metavar="DEG_S",
                        help="the largest joint move per tick is this / --hz; start low on a real robot (default: "
                             "%(default)s deg/s; the scripted expert's fastest joint moves about 32 deg/s)")
    safety.add_argument("--workspace", type=float, nargs=6, default=[v for r in DEFAULT_WORKSPACE for v in r],
                        metavar=("XMIN", "XMAX", "YMIN", "YMAX", "ZMIN", "ZMAX"),
                        help="box (m, robot base frame) the needle tip must stay in, by the simulator's kinematics of "
                             "each command (default: the simulated scene's, %(default)s; measure your own setup)")
    safety.add_argument("--on_violation", choices=["stop", "clip"], default="stop",
                        help="a command past a limit stops the run, or is clipped (joint limits: onto them; speed: "
                             "the step scaled down; workspace: the previous target held); non-finite values always "
                             "stop (default: %(default)s)")

    record = parser.add_argument_group("recording and report")
    record.add_argument("--record", type=Path, metavar="DIR",
                        help="write the rollout as DIR/episode_NNNNNN.h5 (the toolkit's episode format)")
    record.add_argument("--success", choices=["yes", "no"],
                        help="the operator's verdict, stored with the episode (default: asked on stdin at the end)")
    record.add_argument("--output_dir", type=Path,
                        help="run.json and dry_run.csv (default: DIR/runs/episode_NNNNNN/ with --record, else "
                             "outputs/deploy/run_<time>/)")
    record.add_argument("--jpeg_quality", type=int, default=DEFAULT_JPEG_QUALITY,
                        help="JPEG quality of the recorded frames, and of the policy's round trip as the collector "
                             "stores frames (default: %(default)s)")

    images = parser.add_argument_group("images")
    images.add_argument("--width", type=int, help="image width: the simulator's render size, or what is asked of the "
                                                  "cameras (default: the training data's, else 640)")
    images.add_argument("--height", type=int, help="image height (default: the training data's, else 480)")
    images.add_argument("--cameras", type=parse_cameras, metavar="YAML",
                        help='meca500: camera name (as in the training episodes, dataset.cameras) -> OpenCV device '
                             'index or video URL, e.g. "{side_camera: 0, tool_camera: 2, top_camera: 4}"')

    meca = parser.add_argument_group("meca500")
    meca.add_argument("--robot.address", dest="robot_address", default="192.168.0.100",
                      help="the robot's IP address (default: %(default)s, Mecademic's factory setting)")
    meca.add_argument("--robot.joint_vel_limit", dest="robot_joint_vel_limit", type=float, default=25.0,
                      metavar="PERCENT", help="the controller's own joint velocity limit, %% of the rated maximum "
                                              "(SetJointVelLimit; default: %(default)s)")
    meca.add_argument("--robot.feedback_timeout_s", dest="robot_feedback_timeout_s", type=float, default=0.2,
                      help="stop when the joint feedback has not changed for this long (default: %(default)s s)")
    meca.add_argument("--robot.watchdog_s", dest="robot_watchdog_s", type=float, default=1.0,
                      help="connection watchdog: the robot pauses by itself when no target arrives for this long; "
                           "must exceed a synchronous prediction (default: %(default)s s)")
    meca.add_argument("--robot.controller_sim", dest="robot_controller_sim", action="store_true",
                      help="the controller's own simulation mode (ActivateSim): every command runs, no motor moves")
    add_randomization_args(parser)  # --robot sim: the collector's phantom placement and domain randomization

    args = parser.parse_args(argv)
    if args.hz <= 0 or args.max_seconds <= 0 or args.max_joint_speed <= 0:
        parser.error("--hz, --max_seconds and --max_joint_speed must be > 0")
    if args.robot == "sim":
        try:
            physics_substeps(args.hz)
        except UserError as err:
            parser.error(str(err))
        if args.cameras:
            parser.error("--cameras is for --robot meca500: the simulator renders its own cameras")
    elif not args.cameras:
        parser.error('--robot meca500 needs --cameras "{NAME: DEVICE, ...}" with the training episodes\' camera names')
    if (args.width is None) != (args.height is None) or (args.width is not None and min(args.width, args.height) < 1):
        parser.error("give --width and --height together, both positive")
    if args.record and args.dry_run:
        parser.error("--dry_run moves nothing, so its frames are no demonstration: drop --record (the dry run's log "
                     "is OUTPUT_DIR/dry_run.csv)")
    if args.success and not args.record:
        parser.error("--success labels the recorded episode: give --record DIR")
    if not 1 <= args.jpeg_quality <= 100:
        parser.error(f"--jpeg_quality must be in [1, 100], got {args.jpeg_quality}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu")
    return args


def main(argv=None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(exit_on_user_error(main))
