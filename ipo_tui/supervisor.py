"""The `ipo` command: a native crash is reported, not silent.

A segmentation fault in an engine (llama.cpp, torch) ends the process before Python can restore
the terminal that the app (or a progress bar) changed. So `ipo` runs the real command line,
`python -m ipo_tui`, in a child process on the same terminal, which writes the Python stack of a
fatal signal to a crash log (faulthandler). When the child dies of a signal, this parent puts the
terminal back and says in one line what died, where the stack is, and what to try.

Only the standard library is imported here: the parent costs a few milliseconds.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from ipo_tui.stopping import owned_env

LOG_ENV = "IPO_CRASH_LOG"
# leave the alternate screen, show the cursor, stop mouse reports, bracketed paste, focus events, kitty keys
RESET = "\x1b[?1049l\x1b[?25h\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1015l\x1b[?2004l\x1b[?1004l\x1b[<u\x1b[0m\r\n"
ENGINES = (("llama_cpp", "llama.cpp"), ("torch", "torch"), ("transformers", "transformers"))
SI_KERNEL = 0x80  # siginfo's si_code of a signal the kernel raised: Ctrl-C at a terminal
HINTS = {"llama.cpp": "try IPO_LLAMA_REPACK=off, or --backend hf",
         "torch": "try --dtype fp32, or --backend llamacpp on a GGUF file"}


def crash_log() -> Path:
    """In the data folder, or the temporary one where that cannot be written (a read-only home)."""
    from ipo_tui import config

    folder = config.data_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if os.access(folder, os.W_OK):
            return folder / "crash.log"
    except OSError:
        pass
    return Path(tempfile.gettempdir()) / f"ipo-crash-{os.getuid() if hasattr(os, 'getuid') else 0}.log"


def record_fatal_signals() -> None:
    """In the child: the Python stack of every thread goes to the crash log on a fatal signal."""
    import faulthandler

    path = os.environ.get(LOG_ENV)
    if path:
        faulthandler.enable(file=open(path, "w"), all_threads=True)  # noqa: SIM115 (open for the process's life)


def supervise(command: list[str], log: Path) -> int:
    """Run `command` with the crash log set; its exit status, after a report if it died of a signal."""
    log.unlink(missing_ok=True)
    saved = _terminal_state()
    child = subprocess.Popen(command, env={**owned_env(True), LOG_ENV: str(log)})
    status = _wait(child) if hasattr(signal, "sigtimedwait") else _wait_portably(child)
    if status >= 0:
        return status
    if -status == signal.SIGKILL:  # it could not say so itself; often the kernel, out of memory
        _restore_terminal(saved)
        sys.stderr.write("ipo: killed (SIGKILL), by a user or by the system when memory ran out; "
                         "what was finished is stored, and a rerun continues\n")
    elif -status not in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # a crash, not a stop
        _restore_terminal(saved)
        sys.stderr.write(report(-status, log) + "\n")
    return 128 - status  # as a shell reports a death by signal n


def _wait(child: subprocess.Popen) -> int:
    """The child's exit status, passing on the signals sent to this process. A Ctrl-C typed at the
    terminal, or the hangup of a closed one, reaches the child as well (one process group), so that
    one is not passed on: the child would see it twice. The kernel marks it (SI_KERNEL); a `kill`
    or a script's send_signal is marked as sent by a process, and reached only this one. The one
    exception: where this process leads its session (`ipo` started as a tmux pane's or an ssh
    command's own process), the kernel tells a hangup to it alone."""
    watched = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD}
    leads_session = os.getsid(0) == os.getpid()
    signal.pthread_sigmask(signal.SIG_BLOCK, watched)  # after Popen: the child keeps its own mask
    try:
        while (status := child.poll()) is None:
            info = signal.sigtimedwait(watched, 1.0)  # SIGCHLD wakes it when the child ends
            if info and info.si_signo != signal.SIGCHLD and (
                    info.si_code != SI_KERNEL or (info.si_signo == signal.SIGHUP and leads_session)):
                child.send_signal(info.si_signo)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, watched)
    return status


def _wait_portably(child: subprocess.Popen) -> int:
    """Where signals cannot be told apart (macOS): Ctrl-C is left to the child, SIGTERM and SIGHUP passed on."""
    forward = lambda signum, frame: child.send_signal(signum)  # noqa: E731
    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        while True:
            try:
                return child.wait()
            except KeyboardInterrupt:  # Ctrl-C reached the child too; it decides how to stop
                continue
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def report(signum: int, log: Path) -> str:
    """One line: the signal, the engine and ipo code it died in (from the stack), the log, a hint."""
    name = signal.Signals(signum).name
    stack = log.read_text(errors="replace") if log.is_file() else ""
    blocks = stack.split("\n\n")
    current = next((b for b in blocks if b.startswith("Current thread")), stack)  # the thread that died
    frames = re.findall(r'File "([^"]+)", line (\d+) in (\S+)', current)
    engine = next((label for path, _, _ in frames for key, label in ENGINES if f"/{key}/" in path), None)
    ours = next((f"{Path(path).name}:{line} {func}" for path, line, func in frames if "/ipo_tui/" in path), None)
    where = " in " + " from ".join(x for x in (engine, ours) if x) if (engine or ours) else ""
    hint = "; " + HINTS.get(engine, "try the other backend (--backend hf or llamacpp); `ipo --verbose` shows the engines' logs")
    stack_note = f"; stack in {log}" if stack else ""
    return f"ipo: died of {name}{where}{stack_note}{hint}"


def _terminal_state():
    try:
        import termios
    except ImportError:  # not a POSIX system
        return None
    try:
        return termios.tcgetattr(sys.stdin.fileno())
    except (termios.error, OSError, ValueError):
        return None  # not a terminal


def _restore_terminal(saved) -> None:
    if saved is None:
        return
    import termios

    try:
        termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        sys.stdout.write(RESET)
        sys.stdout.flush()
    except (termios.error, OSError):
        pass  # the terminal is gone (a hangup): nothing left to restore


def main() -> None:
    sys.exit(supervise([sys.executable, "-m", "ipo_tui", *sys.argv[1:]], crash_log()))
