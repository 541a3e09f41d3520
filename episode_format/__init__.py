"""The HDF5 episode format shared by the simulator (sim/, which writes it) and the training library
(insertion_vla/, which reads it). Documented in docs/episode_format.md. One file per episode, `*.h5` or `*.hdf5`:

    observations/images/<camera>  vlen uint8 (T,): one JPEG per frame (RGB when decoded); or uint8 (T, H, W, 3) RGB
    observations/qpos             float32 (T, 6): measured joint positions, rad
    observations/ee_pose          float32 (T, 6): needle-tip x, y, z (m) and mobile XYZ Euler angles (rad)
    action                        float32 (T, 6): commanded joint positions, rad
    timestamp                     float32 (T,): seconds since the episode start
    executed_action               float32 (T, 6), optional: the command actually sent when it differs from `action`
                                  (the collector's --perturb_std noise, --drift_mm offset); readers train on `action`
    attributes: task, format_version, and what the writer adds (the simulator: sim_seed, success, fps, image
    size, jpeg_quality, ee_pose_convention and every sampled scene value).

Frame t holds the observation the action at t was computed from. Files are written under a temporary name
(`<name>.tmp-<pid>`, which no reader globs), fsynced, then renamed: a killed writer leaves no partial `.h5`.

This package depends on nothing of the toolkit (only numpy, h5py and OpenCV), so that both sides can import it:
    episode_format.jpeg     JPEG encoding and decoding of frames
    episode_format.writer   writing one episode
    episode_format.reader   discovery, schema check and lazy reading
    episode_format.atomic   atomic file writes and the removal of stale temporaries
    episode_format.errors   UserError, the toolkit's error for problems the user can fix, and how scripts report it
"""

FORMAT_VERSION = 1
EPISODE_SUFFIXES = (".h5", ".hdf5")

IMAGES_GROUP = "observations/images"  # one dataset per camera below it
QPOS_KEY = "observations/qpos"
EE_POSE_KEY = "observations/ee_pose"
ACTION_KEY = "action"
TIMESTAMP_KEY = "timestamp"
EXECUTED_ACTION_KEY = "executed_action"
