"""The needle-insertion task as a gymnasium environment: one step = one recorded frame at 15 Hz.

    env = NeedleInsertionEnv(width=640, height=480, dr=DomainRandomization())
    obs, info = env.reset(seed=episode_seed(base_seed, i))
    obs, reward, terminated, truncated, info = env.step(joint_command)   # (6,) rad

Observation (exactly what the recorder stores, before JPEG):
  images   {"side_camera", "tool_camera", "top_camera"}: uint8 (height, width, 3) RGB, image noise included
           (empty while `env.render_images` is False, which may change between steps: the physics and
           the joint noise do not depend on it)
  qpos     float32 (6,): measured joint positions, rad (true positions + sensor noise)
  ee_pose  float32 (6,): needle-tip pose in the robot base frame (= world frame): x, y, z in m, then
           rx, ry, rz in rad = mobile XYZ Euler angles of the tip frame, R = Rx(rx) Ry(ry) Rz(rz) (the Meca500's
           own pose convention). The tip frame's z axis runs along the needle towards the tip; its x and y axes
           are the flange's turned -90 deg about z, which centres rz on 0 over the workspace. Over the
           placement ranges rx stays within about [-150, -134] deg, ry within +/-17 deg, rz within +/-76 deg:
           no angle comes near the +/-180 deg wrap.
           Computed from the true (noise-free) state.
Start: the arm at its home pose (HOME_QPOS_DEG), or, with `start_joint_range_deg` R > 0, each joint uniformly within
+/-R deg of it, drawn from the episode's seed (demonstrations from varied starts, whose joints tell a policy less
of where the target is: sim.collect --start_joint_range_deg).
The action is the commanded joint positions (rad), clipped to the joint limits and held by position servos
for the frame (40 physics steps of 1/600 s).

Success: the tip within 1 mm of the depth target (27.5 mm past the trocar entry along its axis) and the
needle axis within 2 deg of the trocar axis (`in_tolerance`), continuously for `hold_seconds` (1 s).
`terminated` is True at that step (and `info["success"]`); `truncated` when `max_episode_seconds` elapse first.
Reward: 1 while in tolerance, minus the tip distance in cm (a simple dense signal; nothing here trains on it).
Safety: `info["penetration_outside_trocar_mm"]` is how deep (mm) the needle reaches into the eye after entering it
beside the trocar's cannula at this step, 0 when it is outside the eye or went in through the cannula (see
sim/safety.py). The env's success rule ignores it: judging an episode with both is the evaluator's job.
"""

import gymnasium
import mujoco
import numpy as np

from sim.kinematics import JOINT_LIMITS, euler_xyz_from_matrix
from sim.randomization import DomainRandomization, PhantomPlacement, SceneRandomizer
from sim.safety import EyeGeometry, penetration_outside_trocar
from sim.scene import (
    BACK_SITE,
    CAMERA_NAMES,
    CANNULA_INNER_LENGTH,
    CANNULA_RADIUS,
    DEPTH_SITE,
    ENTRY_SITE,
    EYE_CENTER_HEIGHT,
    EYE_RADIUS,
    HOME_QPOS_DEG,
    PHANTOM_BODY,
    PHYSICS_TIMESTEP,
    TIP_SITE,
    TROCAR_HUB_HEIGHT,
    scene_xml,
)

CONTROL_HZ = 15.0
TIP_TOLERANCE_MM = 1.0
AXIS_TOLERANCE_DEG = 2.0


class NeedleInsertionEnv(gymnasium.Env):
    metadata = {"render_modes": [], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        dr: DomainRandomization | None = DomainRandomization(),
        phantom: PhantomPlacement = PhantomPlacement(),
        max_episode_seconds: float = 12.0,
        hold_seconds: float = 1.0,
        render_images: bool = True,
        start_joint_range_deg: float = 0.0,
    ):
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got width={width} height={height}")
        if start_joint_range_deg < 0:
            raise ValueError(f"start_joint_range_deg must be >= 0, got {start_joint_range_deg}")
        self.width, self.height = width, height
        self.dr = dr
        self.render_images = render_images
        self.max_steps = int(round(max_episode_seconds * CONTROL_HZ))
        self.hold_steps = int(round(hold_seconds * CONTROL_HZ))
        self.model = mujoco.MjModel.from_xml_string(scene_xml(width, height))
        self.data = mujoco.MjData(self.model)
        self.substeps = int(round(1.0 / (CONTROL_HZ * PHYSICS_TIMESTEP)))
        self.randomizer = SceneRandomizer(self.model, phantom, dr)
        self._commanded = mujoco.MjData(self.model)  # kinematics of the commanded joints, for the tracking error
        self._tip = self.model.site(TIP_SITE).id
        self._back = self.model.site(BACK_SITE).id
        self._phantom = self.model.body(PHANTOM_BODY).id
        self._entry = self.model.site(ENTRY_SITE).id
        self._depth = self.model.site(DEPTH_SITE).id
        self._renderer: mujoco.Renderer | None = None
        self._renderer_stale = True
        self._home = np.deg2rad(np.array(HOME_QPOS_DEG))
        self.start_joint_range = np.deg2rad(start_joint_range_deg)
        self._params: dict[str, float] = {}
        self._step_count = 0
        self._hold_count = 0

        image_space = gymnasium.spaces.Box(0, 255, shape=(height, width, 3), dtype=np.uint8)
        self.observation_space = gymnasium.spaces.Dict(
            {
                "images": gymnasium.spaces.Dict({name: image_space for name in CAMERA_NAMES} if render_images else {}),
                # Measured positions: the limits, widened for the sensor noise and the servos' overshoot.
                "qpos": gymnasium.spaces.Box(
                    (JOINT_LIMITS[:, 0] - 0.1).astype(np.float32), (JOINT_LIMITS[:, 1] + 0.1).astype(np.float32)
                ),
                "ee_pose": gymnasium.spaces.Box(-np.inf, np.inf, shape=(6,), dtype=np.float32),
            }
        )
        self.action_space = gymnasium.spaces.Box(
            JOINT_LIMITS[:, 0].astype(np.float32), JOINT_LIMITS[:, 1].astype(np.float32), dtype=np.float32
        )

    # -- gymnasium API ---------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**63 - 1))
        # Independent streams, so that switching image rendering off leaves the scene and joint noise unchanged.
        # A fourth stream for the start pose: spawn(4)[:3] are spawn(3)'s, so seeds keep their scenes.
        scene_seq, qpos_seq, image_seq, start_seq = np.random.SeedSequence(seed).spawn(4)
        self._qpos_rng = np.random.default_rng(qpos_seq)
        self._image_rng = np.random.default_rng(image_seq)
        self._params = self.randomizer.sample(np.random.default_rng(scene_seq))
        self.randomizer.apply(self.model, self._params)

        mujoco.mj_resetData(self.model, self.data)
        start = self._home + np.random.default_rng(start_seq).uniform(-1, 1, 6) * self.start_joint_range
        self.data.qpos[:] = start
        self.data.ctrl[:] = start
        mujoco.mj_forward(self.model, self.data)
        self._renderer_stale = True  # the textures changed: the next render uploads them
        self._step_count = 0
        self._hold_count = 0
        info = {"seed": seed, "scene_params": dict(self._params), **self._errors(), "success": False,
                "penetration_outside_trocar_mm": self._penetration_outside_trocar_mm()}
        return self._observation(), info

    def step(self, joint_command):
        if not self._params:
            raise RuntimeError("NeedleInsertionEnv.step called before reset(seed=...)")
        command = np.asarray(joint_command, dtype=np.float64)
        if command.shape != (6,) or not np.all(np.isfinite(command)):
            raise ValueError(
                f"joint command must be 6 finite joint positions in rad, got shape {command.shape}: {command}"
            )
        self.data.ctrl[:] = np.clip(command, JOINT_LIMITS[:, 0], JOINT_LIMITS[:, 1])
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)
        self._step_count += 1

        errors = self._errors()
        in_tolerance = errors["tip_error_mm"] < TIP_TOLERANCE_MM and errors["axis_error_deg"] < AXIS_TOLERANCE_DEG
        self._hold_count = self._hold_count + 1 if in_tolerance else 0
        success = self._hold_count >= self.hold_steps
        truncated = not success and self._step_count >= self.max_steps
        reward = float(in_tolerance) - errors["tip_error_mm"] / 10.0
        info = {
            **errors,
            "in_tolerance": in_tolerance,
            "success": success,
            "tracking_error_mm": self._tracking_error_mm(),
            "penetration_outside_trocar_mm": self._penetration_outside_trocar_mm(),
            "time_s": self._step_count / CONTROL_HZ,
        }
        return self._observation(), reward, success, truncated, info

    def close(self):
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    # -- privileged state (the scripted expert and the evaluator read these) ------------------------------

    @property
    def scene_params(self) -> dict[str, float]:
        """This episode's sampled phantom placement and DR values."""
        return dict(self._params)

    def trocar_target(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entry point, depth target (m, world frame) and unit insertion axis."""
        axis = self.data.site_xmat[self._entry].reshape(3, 3)[:, 2].copy()
        return self.data.site_xpos[self._entry].copy(), self.data.site_xpos[self._depth].copy(), axis

    def eye_geometry(self) -> EyeGeometry:
        """The eye sphere and the trocar's cannula in the world frame (this episode's phantom placement)."""
        center = self.data.xpos[self._phantom] + self.data.xmat[self._phantom].reshape(3, 3) @ [0, 0, EYE_CENTER_HEIGHT]
        entry, _, axis = self.trocar_target()
        inner = entry + (TROCAR_HUB_HEIGHT + CANNULA_INNER_LENGTH) * axis
        return EyeGeometry(center=center, radius=EYE_RADIUS, cannula_outer=entry, cannula_inner=inner,
                           cannula_radius=CANNULA_RADIUS)

    def place_arm(self, q) -> dict:
        """Put the arm at rest at joints q (rad), commanded there, and observe it: a chosen pose to render (e.g.
        benchmarks/bench_near_target_localization.py), not a step of the episode."""
        self.data.qpos[:] = q
        self.data.qvel[:] = 0.0
        self.data.ctrl[:] = q
        mujoco.mj_forward(self.model, self.data)
        return self._observation()

    def commanded_qpos(self) -> np.ndarray:
        """The joint positions the servos currently hold (the start pose right after reset)."""
        return self.data.ctrl.copy()

    # -- internals -------------------------------------------------------------------------------------------

    def _errors(self) -> dict[str, float]:
        _, target, axis = self.trocar_target()
        needle_axis = self.data.site_xmat[self._tip].reshape(3, 3)[:, 2]
        return {
            "tip_error_mm": float(np.linalg.norm(self.data.site_xpos[self._tip] - target) * 1000.0),
            "axis_error_deg": float(np.degrees(np.arccos(np.clip(needle_axis @ axis, -1.0, 1.0)))),
        }

    def _tracking_error_mm(self) -> float:
        """Distance between the tip and where the commanded joints would put it."""
        self._commanded.qpos[:] = self.data.ctrl
        mujoco.mj_kinematics(self.model, self._commanded)
        return float(np.linalg.norm(self.data.site_xpos[self._tip] - self._commanded.site_xpos[self._tip]) * 1000.0)

    def _penetration_outside_trocar_mm(self) -> float:
        base, tip = self.data.site_xpos[self._back], self.data.site_xpos[self._tip]
        return penetration_outside_trocar(base, tip, self.eye_geometry()) * 1000.0

    def _observation(self) -> dict:
        qpos_noise = self._qpos_rng.normal(0.0, self._params["dr_qpos_noise_std"], size=6)
        rotation = self.data.site_xmat[self._tip].reshape(3, 3)
        ee_pose = np.concatenate([self.data.site_xpos[self._tip], euler_xyz_from_matrix(rotation)])
        return {
            "images": self._render() if self.render_images else {},
            "qpos": (self.data.qpos + qpos_noise).astype(np.float32),
            "ee_pose": ee_pose.astype(np.float32),
        }

    def _render(self) -> dict[str, np.ndarray]:
        if self._renderer_stale:
            # A fresh renderer uploads this episode's randomized textures and materials to its GL context.
            if self._renderer is not None:
                self._renderer.close()
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
            self._renderer_stale = False
        noise_std = self._params["dr_image_noise_std"]
        images = {}
        for camera in CAMERA_NAMES:
            self._renderer.update_scene(self.data, camera=camera)
            image = self._renderer.render()
            if noise_std > 0:
                noisy = self._image_rng.standard_normal(image.shape, dtype=np.float32)
                noisy *= noise_std
                noisy += image
                image = np.clip(noisy, 0.0, 255.0, out=noisy).astype(np.uint8)
            images[camera] = image
        return images
