"""The MJCF scene, built from primitives: a Meca500 from its DH table, a needle on the flange, an eye
phantom with a trocar on a table, lights, textured backdrops and three cameras.

World frame = robot base frame (origin at the base of J1, z up). The robot faces +y at its home pose;
the phantom sits on the table in front of it at `PHANTOM_NOMINAL_XY` (lateral x, radial y) and is moved
per episode by the environment. Every geom is visual only (no contacts): the insertion is judged
geometrically, and the arm is driven by stiff position servos.
"""

import numpy as np

from sim.kinematics import (
    JOINT_LIMITS_DEG,
    MECA500_DH,
    joint_frame_quat,
    joint_origin,
    look_at_xyaxes,
    quat_from_rotvec,
    rot_z,
)

CAMERA_NAMES = ("side_camera", "tool_camera", "top_camera")
JOINT_NAMES = tuple(f"joint{i}" for i in range(1, 7))
TIP_SITE = "needle_tip"
BACK_SITE = "needle_back"
ENTRY_SITE = "trocar_entry"
DEPTH_SITE = "trocar_depth"
PHANTOM_BODY = "phantom"

PHYSICS_TIMESTEP = 1.0 / 600.0  # s; 40 substeps per 15 Hz frame
TABLE_Z = 0.0  # m; the robot stands on the table, the eye phantom on a stand that puts the eye near its shoulder level
PHANTOM_NOMINAL_XY = (0.0, 0.22)  # m
EYE_RADIUS = 0.0125  # m, a human eye
EYE_CENTER_HEIGHT = 0.12  # m above the table top
TROCAR_POLAR_ANGLE = np.deg2rad(35.0)  # entry point, from the top of the eye towards the robot
TROCAR_HUB_HEIGHT = 0.004  # m, from the sclera to the top of the hub (the entry site)
CANNULA_RADIUS = 0.0008  # m, the trocar's tube through the eye wall, along the insertion axis
CANNULA_INNER_LENGTH = 0.001  # m, how far the tube reaches inside the sclera
INSERTION_DEPTH = 0.0275  # m, from the entry site along the trocar axis
HOLDER_LENGTH = 0.035  # m, flange to needle base
NEEDLE_LENGTH = 0.040  # m
TOOL_LENGTH = HOLDER_LENGTH + NEEDLE_LENGTH  # flange to needle tip along the flange z axis
TIP_FRAME_ROTVEC = np.array([0.0, 0.0, -np.pi / 2])  # tip frame in the flange frame
TIP_FRAME_QUAT = quat_from_rotvec(TIP_FRAME_ROTVEC)

# Servo stiffness (N m / rad) and rotor inertia reflected through the gearbox (kg m^2): stiff enough that the
# arm settles on each 15 Hz command well inside a frame (tip tracking error < 1 mm, see the tests).
SERVO_KP = (1500.0, 1500.0, 1000.0, 150.0, 150.0, 60.0)
ARMATURE = (0.05, 0.05, 0.04, 0.008, 0.008, 0.004)
JOINT_DAMPING = (2.0, 2.0, 1.5, 0.2, 0.2, 0.1)  # N m s / rad, nominal (domain randomization scales it)
HOME_QPOS_DEG = (90.0, 0.0, 0.0, 0.0, 45.0, 0.0)

# Materials whose colour domain randomization perturbs (every visible object has one).
MATERIALS = {
    "robot_white": "0.92 0.92 0.90 1",
    "robot_dark": "0.15 0.15 0.17 1",
    "pedestal": "0.30 0.32 0.35 1",
    "holder": "0.25 0.25 0.28 1",
    "needle": "0.80 0.80 0.82 1",
    "skin": "0.86 0.70 0.60 1",
    "sclera": "0.96 0.95 0.92 1",
    "iris": "0.25 0.45 0.70 1",
    "pupil": "0.03 0.03 0.03 1",
    "trocar": "0.20 0.45 0.90 1",
    "table": "1 1 1 1",
    "backdrop": "1 1 1 1",
}
TEXTURED_MATERIALS = {"table": "table_texture", "backdrop": "backdrop_texture"}
TEXTURE_SIZE = 256

CAMERA_LOOK_AT = {
    # name: (position, target, up), world frame
    "side_camera": ((0.34, 0.30, 0.26), (0.0, 0.18, 0.10), (0.0, 0.0, 1.0)),
    "top_camera": ((0.0, 0.33, 0.50), (0.0, 0.20, 0.10), (0.0, 1.0, 0.0)),
}
TOOL_CAMERA_POSITION = (0.03, 0.0, 0.012)  # flange frame: beside the holder, looking past the tip
TOOL_CAMERA_TARGET = (0.0, 0.0, TOOL_LENGTH + 0.015)


def _fmt(values) -> str:
    return " ".join(f"{v:.6g}" for v in np.ravel(values))


def trocar_frame() -> tuple[np.ndarray, np.ndarray]:
    """Entry point and unit insertion axis of the trocar in the phantom frame (yaw 0: axis points +y, down)."""
    outward = np.array([0.0, -np.sin(TROCAR_POLAR_ANGLE), np.cos(TROCAR_POLAR_ANGLE)])
    eye_center = np.array([0.0, 0.0, EYE_CENTER_HEIGHT])
    entry = eye_center + (EYE_RADIUS + TROCAR_HUB_HEIGHT) * outward
    return entry, -outward


def trocar_in_world(dx: float, dy: float, yaw: float) -> tuple[np.ndarray, np.ndarray]:
    """Entry point and unit insertion axis in the world frame for a placement of the phantom (dx, dy in m from
    PHANTOM_NOMINAL_XY, yaw in rad about the vertical), as sim.randomization places it."""
    entry, axis = trocar_frame()
    turn = rot_z(yaw)
    return turn @ entry + [PHANTOM_NOMINAL_XY[0] + dx, PHANTOM_NOMINAL_XY[1] + dy, TABLE_Z], turn @ axis


def along_and_across(point: np.ndarray, entry: np.ndarray, axis: np.ndarray) -> tuple[float, float]:
    """A point (m, world frame) relative to the trocar: how far past the entry along its unit axis (negative before
    it) and how far from the axis, both in mm."""
    offset = (np.asarray(point, np.float64) - entry) * 1000.0
    along = float(offset @ axis)
    return along, float(np.linalg.norm(offset - along * axis))


def _robot_xml() -> str:
    """Nested bodies from the modified DH table; each joint's axis is its body's z axis."""
    # Visual geoms per link, in that link's frame (the frame of the joint that moves it).
    link_geoms = [
        '<geom type="cylinder" fromto="0 0 -0.045 0 0 0.02" size="0.042" material="robot_white"/>',
        '<geom type="cylinder" fromto="0 0 -0.045 0 0 0.045" size="0.036" material="robot_dark"/>'
        '<geom type="capsule" fromto="0 0 0 0.135 0 0" size="0.027" material="robot_white"/>',
        '<geom type="cylinder" fromto="0 0 -0.038 0 0 0.038" size="0.031" material="robot_dark"/>'
        '<geom type="capsule" fromto="0 0 0 0.038 0 0" size="0.026" material="robot_white"/>'
        '<geom type="capsule" fromto="0.038 0 0 0.038 0.06 0" size="0.024" material="robot_white"/>',
        '<geom type="capsule" fromto="0 0 -0.06 0 0 -0.01" size="0.021" material="robot_white"/>',
        '<geom type="cylinder" fromto="0 0 -0.026 0 0 0.026" size="0.021" material="robot_dark"/>',
        '<geom type="capsule" fromto="0 0 -0.05 0 0 -0.008" size="0.017" material="robot_white"/>'
        '<geom type="cylinder" fromto="0 0 -0.006 0 0 0" size="0.02" material="robot_dark"/>',
    ]
    tool = (
        f'<geom type="cylinder" fromto="0 0 0 0 0 {HOLDER_LENGTH}" size="0.007" material="holder"/>'
        f'<geom type="cylinder" fromto="0 0 {HOLDER_LENGTH - 0.004} 0 0 {HOLDER_LENGTH + 0.004}" size="0.0025"'
        ' material="trocar"/>'
        f'<geom type="cylinder" fromto="0 0 {HOLDER_LENGTH} 0 0 {TOOL_LENGTH}" size="0.0006" material="needle"/>'
        f'<site name="{BACK_SITE}" pos="0 0 {HOLDER_LENGTH}" size="0.001"/>'
        # Tip frame: z along the needle; x, y turned -90 deg about z from the flange's, which centres the ee_pose
        # Euler angle rz on 0 over the workspace (within about +/-75 deg, far from the +/-180 deg wrap).
        f'<site name="{TIP_SITE}" pos="0 0 {TOOL_LENGTH}" quat="{_fmt(TIP_FRAME_QUAT)}" size="0.001"/>'
        f'<geom type="box" pos="{_fmt(TOOL_CAMERA_POSITION)}" size="0.008 0.006 0.006" material="robot_dark"/>'
        f'<camera name="tool_camera" pos="{_fmt(TOOL_CAMERA_POSITION)}" fovy="70" xyaxes="'
        f'{_fmt(look_at_xyaxes(TOOL_CAMERA_POSITION, TOOL_CAMERA_TARGET, (1.0, 0.0, 0.0)))}"/>'
    )
    xml = tool
    for i in reversed(range(6)):
        link = MECA500_DH[i]
        lo, hi = JOINT_LIMITS_DEG[i]
        xml = (
            f'<body name="link{i + 1}" pos="{_fmt(joint_origin(link))}" quat="{_fmt(joint_frame_quat(link))}"'
            ' gravcomp="1">'
            f'<joint name="{JOINT_NAMES[i]}" axis="0 0 1" range="{np.deg2rad(lo):.6f} {np.deg2rad(hi):.6f}"'
            f' armature="{ARMATURE[i]}"'
            f' damping="{JOINT_DAMPING[i]}"/>'
            f"{link_geoms[i]}{xml}</body>"
        )
    return xml


def _phantom_xml() -> str:
    entry, axis = trocar_frame()
    eye_center = np.array([0.0, 0.0, EYE_CENTER_HEIGHT])
    outward = -axis
    sclera_point = eye_center + EYE_RADIUS * outward
    # Rotation taking the site's z axis onto the insertion axis (about x, since the axis lies in the y-z plane).
    site_quat = quat_from_rotvec(np.array([np.pi + TROCAR_POLAR_ANGLE, 0.0, 0.0]))
    depth = entry + INSERTION_DEPTH * axis
    top = eye_center + np.array([0.0, 0.0, EYE_RADIUS])
    face_height = EYE_CENTER_HEIGHT - 0.004  # the face surface: the eye's upper part bulges out of it
    return (
        f'<body name="{PHANTOM_BODY}" pos="{PHANTOM_NOMINAL_XY[0]} {PHANTOM_NOMINAL_XY[1]} {TABLE_Z}">'
        '<geom type="box" pos="0 0 0.005" size="0.06 0.06 0.005" material="pedestal"/>'
        f'<geom type="cylinder" fromto="0 0.01 0 0 0.01 {face_height - 0.03}" size="0.015" material="pedestal"/>'
        f'<geom type="ellipsoid" pos="0 0.02 {face_height - 0.022}" size="0.055 0.075 0.022" material="skin"/>'
        f'<geom type="ellipsoid" pos="0.02 0.055 {face_height - 0.004}" size="0.008 0.022 0.012" material="skin"/>'
        f'<geom type="sphere" pos="{_fmt(eye_center)}" size="{EYE_RADIUS}" material="sclera"/>'
        f'<geom type="cylinder" fromto="{_fmt(top - [0, 0, 0.0012])} {_fmt(top - [0, 0, 0.0002])}" size="0.0055"'
        ' material="iris"/>'
        f'<geom type="cylinder" fromto="{_fmt(top - [0, 0, 0.0010])} {_fmt(top + [0, 0, 0.0001])}" size="0.0022"'
        ' material="pupil"/>'
        f'<geom type="cylinder" fromto="{_fmt(sclera_point - CANNULA_INNER_LENGTH * outward)} {_fmt(entry)}"'
        f' size="{CANNULA_RADIUS}"'
        ' material="needle"/>'
        f'<geom type="cylinder" fromto="{_fmt(entry - 0.0015 * outward)} {_fmt(entry)}" size="0.0019"'
        ' material="trocar"/>'
        f'<site name="{ENTRY_SITE}" pos="{_fmt(entry)}" quat="{_fmt(site_quat)}" size="0.0005"/>'
        f'<site name="{DEPTH_SITE}" pos="{_fmt(depth)}" quat="{_fmt(site_quat)}" size="0.0005"/>'
        "</body>"
    )


def scene_xml(width: int, height: int) -> str:
    """MJCF of the whole scene, with an offscreen buffer large enough for width x height renders."""
    materials = "".join(
        f'<material name="{name}" rgba="{rgba}" specular="0.3" shininess="0.3"'
        + (f' texture="{TEXTURED_MATERIALS[name]}"' if name in TEXTURED_MATERIALS else "")
        + (' texrepeat="2 2"' if name == "table" else "")
        + "/>"
        for name, rgba in MATERIALS.items()
    )
    textures = "".join(
        f'<texture name="{texture}" type="2d" builtin="flat" rgb1="0.5 0.5 0.5" width="{TEXTURE_SIZE}"'
        f' height="{TEXTURE_SIZE}"/>'
        for texture in TEXTURED_MATERIALS.values()
    )
    cameras = "".join(
        f'<camera name="{name}" pos="{_fmt(pos)}" fovy="50" xyaxes="{_fmt(look_at_xyaxes(pos, target, up))}"/>'
        for name, (pos, target, up) in CAMERA_LOOK_AT.items()
    )
    actuators = "".join(
        f'<position name="servo{i + 1}" joint="{JOINT_NAMES[i]}" kp="{SERVO_KP[i]}" dampratio="1"'
        f' ctrlrange="{np.deg2rad(lo):.6f} {np.deg2rad(hi):.6f}"/>'
        for i, (lo, hi) in enumerate(JOINT_LIMITS_DEG)
    )
    look_at_center = f"{PHANTOM_NOMINAL_XY[0]} {PHANTOM_NOMINAL_XY[1]} {TABLE_Z + EYE_CENTER_HEIGHT}"
    return f"""
<mujoco model="meca500_needle_insertion">
  <compiler angle="radian" inertiafromgeom="true"/>
  <option timestep="{PHYSICS_TIMESTEP:.8f}" integrator="implicitfast"/>
  <size memory="4M"/>
  <visual>
    <global offwidth="{max(width, 640)}" offheight="{max(height, 480)}"/>
    <quality shadowsize="1024" offsamples="4"/>  <!-- shadow map set explicitly: 4096 is 2-3x slower on CPU -->
    <headlight ambient="0.25 0.25 0.25" diffuse="0.2 0.2 0.2" specular="0 0 0"/>
    <map znear="0.005" zfar="5" shadowscale="0.35"/>
  </visual>
  <statistic center="0 0.15 0" extent="1"/>
  <default>
    <geom contype="0" conaffinity="0" density="1200"/>
    <site rgba="1 0 0 0" group="5"/>
  </default>
  <asset>{textures}{materials}</asset>
  <worldbody>
    <light name="key_light" pos="0.3 -0.1 1.0" mode="targetbody" target="workspace" castshadow="true"
           diffuse="0.65 0.65 0.65" specular="0.2 0.2 0.2" cutoff="35"/>
    <light name="fill_light" pos="-0.5 0.6 0.7" mode="targetbody" target="workspace" castshadow="false"
           diffuse="0.35 0.35 0.35" specular="0 0 0" cutoff="70"/>
    <body name="workspace" pos="{look_at_center}"/>
    <geom name="table" type="box" pos="0 0.25 {TABLE_Z - 0.02}" size="0.7 0.6 0.02" material="table"/>
    <geom name="backdrop_back" type="box" pos="0 0.95 0.3" size="1.2 0.01 0.9" material="backdrop"/>
    <geom name="backdrop_side" type="box" pos="-0.8 0.2 0.3" size="0.01 1.2 0.9" material="backdrop"/>
    <geom name="base" type="cylinder" fromto="0 0 0 0 0 0.09" size="0.048" material="robot_white"/>
    <geom name="base_plate" type="box" pos="0 0 0.004" size="0.07 0.07 0.004" material="pedestal"/>
    {_robot_xml()}
    {_phantom_xml()}
    {cameras}
  </worldbody>
  <actuator>{actuators}</actuator>
</mujoco>
"""
