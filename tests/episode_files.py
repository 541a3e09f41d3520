"""Writes real HDF5 episode files in the project's format, for tests."""

import cv2
import h5py
import numpy as np

CAMERAS = ("side_camera", "tool_camera", "top_camera")


def frame(t: int, camera_index: int, height: int, width: int) -> np.ndarray:
    """A deterministic, non-constant RGB frame (a gradient that moves with t)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 4 + t * 3) % 256, (y * 4 + camera_index * 60) % 256, (x + y + t) % 256], axis=-1)
    return img.astype(np.uint8)


def write_episode(path, *, length=20, height=48, width=64, jpeg=True, ee_dim=6, seed=0,
                  cameras=CAMERAS, task="Insert needle into eye trocar in simulation", compression=None):
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float32)
    qpos = (np.sin(t[:, None] * 0.1 + np.arange(6)) * 0.5 + rng.normal(0, 0.01, (length, 6))).astype(np.float32)
    ee = (np.cos(t[:, None] * 0.05 + np.arange(ee_dim)) * 0.1 + seed).astype(np.float32)
    action = (qpos + 0.01).astype(np.float32)
    with h5py.File(path, "w") as f:
        for ci, cam in enumerate(cameras):
            frames = [frame(i, ci, height, width) for i in range(length)]
            if jpeg:
                ds = f.create_dataset(f"observations/images/{cam}", (length,), dtype=h5py.vlen_dtype(np.uint8))
                for i, img in enumerate(frames):
                    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
                    ds[i] = buf.ravel()
            else:
                f.create_dataset(f"observations/images/{cam}", data=np.stack(frames) if length else
                                 np.zeros((0, height, width, 3), np.uint8), compression=compression)
        f.create_dataset("observations/qpos", data=qpos, compression=compression)
        f.create_dataset("observations/ee_pose", data=ee, compression=compression)
        f.create_dataset("action", data=action, compression=compression)
        f.create_dataset("timestamp", data=t / 15.0)
        if task is not None:
            f.attrs["task"] = task
        f.attrs["sim_seed"] = seed
        f.attrs["success"] = True
        f.attrs["format_version"] = 1
    return path


def write_dataset(root, n=4, length=None, **kwargs):
    """n episodes episode_0000.h5 ...; lengths 20, 21, ... unless `length` is given."""
    root.mkdir(parents=True, exist_ok=True)
    return [write_episode(root / f"episode_{i:04d}.h5", seed=i, length=length or 20 + i, **kwargs) for i in range(n)]
