"""Atomic file writes: a reader sees the old file or the complete new one, never half of one."""

import os
from contextlib import contextmanager
from pathlib import Path


def temp_path_for(path: Path) -> Path:
    # the suffix keeps temporary files out of every glob for the real ones (*.pt, *.yaml, *.h5)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


@contextmanager
def atomic_output(path):
    """Yields a temporary path to write; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(path, text: str):
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)


def _fsync_dir(directory: Path):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
