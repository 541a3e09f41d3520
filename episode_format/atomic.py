"""Atomic file writes: a reader sees the old file or the complete new one, never half of one."""

import contextlib
import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from episode_format.errors import UserError

TEMP_MARK = ".tmp-"
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def temp_path_for(path: Path) -> Path:
    # the suffix keeps temporary files out of every glob for the real ones (*.pt, *.yaml, *.h5)
    return path.with_name(f"{path.name}{TEMP_MARK}{os.getpid()}")


@contextmanager
def atomic_output(path):
    """Yields a temporary path to write; on success it is fsynced and renamed onto `path`.

    An OSError (disk full, file-size limit, a directory that is a file or read-only) becomes a UserError that
    names `path` and the fix; the temporary file is removed either way.
    """
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as err:
        reason, fix = err.strerror or str(err), f"make {path.parent} a writable directory, or write somewhere else"
        if err.errno in _FULL_DISK:
            fix = f"free space on the disk of {path.parent}, or raise the quota / file-size limit (ulimit -f)"
        elif isinstance(err, (FileExistsError, NotADirectoryError)):  # from mkdir: a file stands in the way
            reason = "a part of its folder path is a file, not a directory"
        raise UserError(f"cannot write {path}: {reason}. To fix: {fix}.") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_text(path, text: str):
    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)


def remove_stale_temporaries(directory):
    """Delete the temporary files and folders (NAME.tmp-PID) of writers that are gone: a process killed during a
    write (kill -9, OOM, node failure) leaves its temporary behind, as large as a checkpoint. The PID is looked up on
    this machine: another node's writer whose PID happens to exist here only keeps its stale file."""
    directory = Path(directory)
    if not directory.is_dir():
        return
    for tmp in directory.glob(f"*{TEMP_MARK}*"):
        pid = tmp.name.rsplit(TEMP_MARK, 1)[1]
        if not pid.isdigit() or _process_exists(int(pid)):
            continue
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _fsync_dir(directory: Path):
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
