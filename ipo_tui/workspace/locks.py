"""One rule for "someone else is running this": a lock file per piece of work (a training run, a
loop, a prompt set's generate or judge stage) that the process doing it holds while it runs.

An advisory `flock` on the file: the kernel drops it when the holder exits, however it dies (a
`kill -9` leaves no stale lock), and the holder's pid written inside names it in the refusal.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from contextlib import contextmanager
from pathlib import Path

from ipo_tui.errors import IpoError


def run_lock(folder: Path) -> Path:
    """The lock of a training run or a loop: in its folder."""
    return folder / "lock"


def stage_lock(workspace: Path, stage: str, set_id: int) -> Path:
    """The lock of a stage (generate, judge) on a prompt set of a workspace."""
    digest = hashlib.sha256(f"{workspace.resolve()}\0{set_id}".encode()).hexdigest()[:16]
    return workspace.parent / "locks" / f"{stage}-{digest}.lock"


@contextmanager
def held(path: Path, what: str):
    """Hold the lock at `path` for the block; IpoError naming the holder if another process has it."""
    fd = acquire(path, what)
    try:
        yield
    finally:
        os.close(fd)  # closing the file releases the lock


def acquire(path: Path, what: str) -> int:
    """Take the lock at `path` for the rest of this process (or until the returned fd is closed)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise IpoError(f"{what} cannot take its lock {path} ({exc.strerror}); it needs a workspace folder it may "
                       "write: copy the workspace somewhere writable or pass another --workspace") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise IpoError(f"{what} is running already (process {holder}); wait for it to end, or stop it "
                       f"(kill -INT {holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def hand_over(fd: int, pid: int) -> None:
    """After starting a child with `fd` among its `pass_fds`: the child holds the lock now (the same
    open file), named by its pid; this process lets go of its copy."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(pid).encode(), 0)
    os.close(fd)
