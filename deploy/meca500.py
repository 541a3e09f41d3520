"""The Mecademic Meca500 through mecademicpy (pinned in requirements.txt), in the toolkit's units and conventions.

The robot speaks degrees and millimetres; the toolkit radians and metres. Its poses are the tool frame (TRF) in
the world frame (WRF, left at the base frame BRF) as x, y, z and mobile XYZ Euler angles R = Rx(a) Ry(b) Rz(c),
the convention of sim/env.py's ee_pose (sim.kinematics.euler_xyz_from_matrix), so setting the TRF to the needle
tip (deploy.tool, from sim/scene.py) makes the robot's own pose feedback the policy's ee_pose state. At connection
the reported pose is compared with the simulator's kinematics at the reported joints: a wrong tool frame or unit
refuses to start.

Motion: MoveJoints in time-based mode (SetMoveMode duration, SetMoveDuration = one control period, an error if the
robot cannot make it in time), one target per tick, blended (the default 100 %), under a controller-side joint
velocity limit (SetJointVelLimit). The connection watchdog is refreshed with every target: if this program hangs
or dies, the robot pauses motion by itself. Feedback: joint positions (encoders) and the TRF pose from the
robot's real-time monitoring, timestamped by the robot; a stalled feed, a robot error or a safety stop raises
RobotFault. Stopping pauses and clears the motion queue and leaves the arm activated, holding its pose (the next
connection resumes the queue). Connecting activates and homes the robot: on a Meca500 homing turns every joint by
a few degrees, the only motion of a dry run (none at all with the controller's simulation mode, ActivateSim).

The conversions are tested against sim.kinematics; the connection and motion code is verified on the robot by the
user (docs/deployment.md has the checklist): no test here talks to a controller.
"""

import contextlib
import time

import numpy as np
from mecademicpy.mx_robot_def import MxEventSeverity, MxMoveMode, MxRobotSimulationMode, MxRobotStatusCode
from mecademicpy.robot import Robot
from mecademicpy.robot_classes import MecademicException

from deploy.cameras import open_cameras
from deploy.robot import RobotFault
from deploy.tool import TIP_IN_FLANGE, ee_pose_from_joints, rotation_angle_between, tip_pose
from episode_format.errors import UserError
from sim.kinematics import euler_xyz_from_matrix, matrix_from_euler_xyz

POSE_CHECK_MM, POSE_CHECK_DEG = 2.0, 1.0  # reported pose vs. the simulator's kinematics, at connection
MONITORING_INTERVAL_S = 0.005  # real-time feedback period asked of the robot


# -- units and conventions (pure functions, tested against sim.kinematics) ---------------------------------------

def joints_to_robot(q: np.ndarray) -> list[float]:
    """Joint positions rad -> the robot's degrees (MoveJoints)."""
    return np.degrees(np.asarray(q, dtype=np.float64)).tolist()


def joints_from_robot(degrees) -> np.ndarray:
    """The robot's joint positions (deg) -> rad."""
    return np.radians(np.asarray(degrees, dtype=np.float64))


def pose_from_robot(pose) -> np.ndarray:
    """The robot's pose [x, y, z (mm), a, b, c (deg, mobile XYZ)] -> ee_pose [m, rad], the same Euler convention."""
    pose = np.asarray(pose, dtype=np.float64)
    return np.concatenate([pose[:3] / 1000.0, np.radians(pose[3:])])


def tool_frame_for_robot() -> list[float]:
    """SetTrf's arguments: the needle-tip frame in the flange frame, [mm, mm, mm, deg, deg, deg] mobile XYZ."""
    position_mm = TIP_IN_FLANGE[:3, 3] * 1000.0
    angles_deg = np.degrees(euler_xyz_from_matrix(TIP_IN_FLANGE[:3, :3]))
    return np.concatenate([position_mm, angles_deg]).round(6).tolist()


def check_simulation_mode(requested: bool, reported) -> None:
    """Refuse a controller whose simulation mode is not the one asked for: motors that would move although
    --robot.controller_sim asked them not to, or a run (and its recording) that the controller only simulates."""
    simulating = int(reported) != MxRobotSimulationMode.MX_SIM_MODE_DISABLED
    if requested and not simulating:
        raise UserError(f"--robot.controller_sim: the controller reports its simulation mode off ({reported!r}) after "
                        "ActivateSim; nothing was moved. Activate it on the robot's web interface and run again, or "
                        "run without --robot.controller_sim once the arm may move")
    if simulating and not requested:
        raise UserError(f"the Meca500's controller is in its simulation mode ({reported!r}, left on by another client): "
                        "the arm would not move and the recording would hold simulated feedback. Deactivate it on the "
                        "robot's web interface, or pass --robot.controller_sim to run in it")


def check_pose_feedback(q: np.ndarray, ee_pose: np.ndarray) -> None:
    """Refuse when the robot's reported tip pose is not the simulator's kinematics of its reported joints."""
    expected, simulated = tip_pose(q), ee_pose_from_joints(q)
    distance_mm = float(np.linalg.norm(ee_pose[:3] - expected[:3, 3]) * 1000.0)
    angle_deg = float(np.degrees(rotation_angle_between(matrix_from_euler_xyz(ee_pose[3:]), expected[:3, :3])))
    if distance_mm > POSE_CHECK_MM or angle_deg > POSE_CHECK_DEG:
        raise UserError(
            f"the Meca500 reports the needle tip at {np.round(ee_pose[:3] * 1000, 1).tolist()} mm, "
            f"{np.round(np.degrees(ee_pose[3:]), 1).tolist()} deg, but the simulator's kinematics put it at "
            f"{np.round(simulated[:3] * 1000, 1).tolist()} mm, "
            f"{np.round(np.degrees(simulated[3:]), 1).tolist()} deg for the same joints ({distance_mm:.1f} "
            f"mm, {angle_deg:.1f} deg apart; tolerance {POSE_CHECK_MM} mm, {POSE_CHECK_DEG} deg). The tool frame or the "
            "world frame on the robot is not the one the policy was trained with: reset the WRF to the base frame "
            f"(SetWrf 0,0,0,0,0,0) and check that nothing else sets the TRF (this program sets {tool_frame_for_robot()})."
        )


# -- the robot ------------------------------------------------------------------------------------------------------

class Meca500Robot:
    name = "meca500"

    def __init__(self, address: str, camera_sources: dict, width: int, height: int, hz: float,
                 joint_vel_limit_pct: float, feedback_timeout_s: float, watchdog_s: float, controller_sim: bool):
        self.address, self.camera_sources = address, dict(camera_sources)
        self.cameras = tuple(camera_sources)
        self.width, self.height, self.period = width, height, 1.0 / hz
        self.joint_vel_limit_pct, self.feedback_timeout_s = joint_vel_limit_pct, feedback_timeout_s
        self.watchdog_s, self.controller_sim = watchdog_s, controller_sim
        self._robot = None
        self._captures: dict = {}
        self._feedback_stamp = None  # the robot's timestamp (us) of the newest feedback, and when it was first seen
        self._feedback_seen_at = 0.0

    def connect(self) -> None:
        self._captures = open_cameras(self.camera_sources, self.width, self.height)  # before anything moves
        self._robot = Robot()
        try:
            self._robot.Connect(address=self.address, disconnect_on_exception=True, timeout=5.0)
            status = self._robot.GetStatusRobot(synchronous_update=True)
            if status.error_status:
                raise UserError(f"the Meca500 at {self.address} is in error ({status.error_code}: {status.error_msg}): "
                                "find the cause, reset the error on its web interface, then run again")
            safety = self._robot.GetSafetyStatus(synchronous_update=True)
            if safety.stop_mask:
                raise UserError(f"the Meca500 at {self.address} is in a safety stop (stop mask {safety.stop_mask:#x}: "
                                "e-stop, p-stop, ...): release and reset it on the robot, then run again")
            if self.controller_sim:
                self._robot.ActivateSim()  # the controller runs every command, the motors stay still
                self._robot.WaitSimActivated(timeout=10)
            # read back before anything moves (homing does): the mode asked for must be the controller's
            check_simulation_mode(self.controller_sim, self._robot.GetStatusRobot(synchronous_update=True).simulation_mode)
            self._robot.ActivateAndHome()
            self._robot.WaitHomed(timeout=60)
            self._robot.ResumeMotion()  # a previous run's stop left the motion queue paused
            self._robot.SetRealTimeMonitoring(MxRobotStatusCode.MX_ST_RT_JOINT_POS, MxRobotStatusCode.MX_ST_RT_CART_POS)
            self._robot.SetMonitoringInterval(MONITORING_INTERVAL_S)
            self._robot.SetTrf(*tool_frame_for_robot())
            self._robot.SetJointVelLimit(self.joint_vel_limit_pct)
            self._robot.SetMoveMode(MxMoveMode.MX_MOVE_MODE_DURATION)
            self._robot.SetMoveDuration(self.period)
            self._robot.SetMoveDurationCfg(MxEventSeverity.MX_EVENT_SEVERITY_ERROR)
            self._robot.WaitIdle(timeout=30)
            rt = self._robot.GetRobotRtData(synchronous_update=True)
            check_pose_feedback(joints_from_robot(rt.rt_joint_pos.data), pose_from_robot(rt.rt_cart_pos.data))
        except MecademicException as err:
            raise UserError(f"Meca500 at {self.address}: {type(err).__name__}: {err}. Check the address "
                            "(--robot.address), the network cable, that no other client holds the robot, and its "
                            "state on the web interface.") from None

    def observe(self) -> dict:
        try:
            if not self._robot.IsConnected():
                raise RobotFault("the connection to the robot was lost")
            status = self._robot.GetStatusRobot()
            if status.error_status:
                raise RobotFault(f"robot error {status.error_code}: {status.error_msg}")
            safety = self._robot.GetSafetyStatus()
            if safety.stop_mask:
                raise RobotFault(f"robot safety stop (stop mask {safety.stop_mask:#x}): e-stop, p-stop or dropped link")
            rt = self._robot.GetRobotRtData()
            # The watchdog pauses the arm if this loop stops ticking; armed at the first observation and refreshed
            # at every one, so dry runs (which send nothing) and ticks waiting for a chunk keep it alive too.
            self._robot.ConnectionWatchdog(self.watchdog_s)
        except MecademicException as err:
            raise RobotFault(f"{type(err).__name__}: {err}") from None
        now = time.monotonic()
        if rt.rt_joint_pos.timestamp != self._feedback_stamp:
            self._feedback_stamp, self._feedback_seen_at = rt.rt_joint_pos.timestamp, now
        elif now - self._feedback_seen_at > self.feedback_timeout_s:
            raise RobotFault(f"no new joint feedback for {now - self._feedback_seen_at:.3f} s "
                             f"(> --robot.feedback_timeout_s {self.feedback_timeout_s})")
        images, image_times = {}, {}
        for name, capture in self._captures.items():
            images[name], image_times[name] = capture.latest()
        return {
            "images": images, "image_times": image_times,
            "qpos": joints_from_robot(rt.rt_joint_pos.data).astype(np.float32),
            "ee_pose": pose_from_robot(rt.rt_cart_pos.data).astype(np.float32),
            "time": self._feedback_seen_at,
        }

    def send_joints(self, q: np.ndarray) -> None:
        try:
            self._robot.MoveJoints(*joints_to_robot(q))
        except MecademicException as err:
            raise RobotFault(f"MoveJoints refused: {type(err).__name__}: {err}") from None

    def stop(self, reason: str) -> None:
        if self._robot is None or not self._robot.IsConnected():
            return  # a lost connection already paused the robot (its watchdog / dropped-link stop)
        try:
            self._robot.PauseMotion()
            self._robot.ClearMotion()
        except MecademicException as err:
            print(f"warning: stopping the Meca500 ({reason}) failed: {err}; it pauses by itself when the connection "
                  f"watchdog ({self.watchdog_s} s) expires. Use the e-stop if it moves.")

    def close(self) -> None:
        for capture in self._captures.values():
            capture.close()
        if self._robot is not None:
            if self._robot.IsConnected():
                with contextlib.suppress(MecademicException):
                    self._robot.ConnectionWatchdog(0)  # a clean exit must not end in a dropped-connection safety stop
            self._robot.Disconnect()

    def facts(self) -> dict:
        return {"robot_address": self.address, "controller_sim": self.controller_sim,
                "cameras": {name: str(source) for name, source in self.camera_sources.items()},
                "joint_vel_limit_pct": self.joint_vel_limit_pct, "tool_frame": tool_frame_for_robot()}
