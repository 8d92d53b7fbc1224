"""How an ipo process stops: by a signal, or because the process that owns it is gone.

A stop signal (INT, TERM, HUP) becomes a KeyboardInterrupt in the main thread, so the work under
way unwinds through its `finally` and `except` blocks and what is stored stays whole. Python drops
a KeyboardInterrupt raised inside a finalizer (`__del__`), so the request is remembered and
`check()` raises it again at the next step. The process then exits as a shell reports a death by
that signal: 128 + its number.

Only the standard library is imported here.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PARENT_ENV = "IPO_PARENT_PID"  # set for a child that must stop when this process is gone
PR_SET_PDEATHSIG = 1


class StopRequest:
    """The stop signal this process received, if any (the first one sets the exit status)."""

    def __init__(self):
        self.signum: int | None = None

    def install(self) -> StopRequest:
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.signum = self.signum or signum
        raise KeyboardInterrupt

    def check(self) -> None:
        """Raise the stop again where a finalizer swallowed it."""
        if self.signum is not None:
            raise KeyboardInterrupt

    def checked(self, callback):
        """`callback`, checking for a stop before each call (progress steps, events)."""
        def call(*args):
            self.check()
            return callback(*args)
        return call

    def quiet(self) -> None:
        """From here on a stop signal is only recorded: the process is finishing its way out."""
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._record)

    def _record(self, signum, frame) -> None:
        self.record(signum)

    def record(self, signum: int) -> None:
        """A stop by `signum` that its receiver handles itself (the app closes), kept for the exit status."""
        self.signum = self.signum or signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum or signal.SIGINT).name

    @property
    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


REQUEST = StopRequest()  # the process's one; the command line installs it


def owned_env(owned: bool) -> dict[str, str]:
    """The environment of a child process: with `owned`, it stops when this process is gone."""
    env = {k: v for k, v in os.environ.items() if k != PARENT_ENV}
    return {**env, PARENT_ENV: str(os.getpid())} if owned else env


def stop_with_parent() -> None:
    """In a child started with `owned_env(True)`: SIGTERM to itself once that process is gone, so a
    `kill -9` of it stops the worker (cleanly, as a SIGTERM does) before it writes more. Linux tells
    a direct child at once (PR_SET_PDEATHSIG); a thread watches an owner further up (the trainers of
    an `accelerate launch`), or on another system."""
    owner = int(os.environ.get(PARENT_ENV) or 0)
    if not owner:
        return
    if sys.platform.startswith("linux") and os.getppid() == owner:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != owner:  # gone before the kernel was told
            os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_watch, args=(owner,), name="ipo-owner-watch", daemon=True).start()


def _watch(owner: int) -> None:
    while _alive(owner):
        threading.Event().wait(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        return True
    return True
