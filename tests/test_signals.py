"""Signals, as a shell and a user see them: `ipo` stopped by INT, TERM or HUP (to the `ipo` command
or to its worker) exits 128+n with one line saying what stopped; KILL exits 137; a worker whose
`ipo` parent is killed with -9 stops itself; a second process on the same work is refused.

Each test waits for a state (a stored row, a step on disk, a process gone), never for a time.
"""

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipo_tui.errors import IpoError
from ipo_tui.workspace import locks

SUPERVISED = "import sys; sys.argv = ['ipo', *sys.argv[1:]]; from ipo_tui.supervisor import main; main()"
STOPS = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}


def wait_for(condition, timeout=300.0, what="a state"):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)  # the polling interval, not a guess at how long anything takes


def env_of(dirs: Path) -> dict:
    return dict(os.environ, IPO_CONFIG_DIR=str(dirs / "config"), IPO_DATA_DIR=str(dirs / "data"), COLUMNS="200")


def supervised(dirs: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SUPERVISED, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env_of(dirs), start_new_session=True)


def child_of(pid: int) -> int:
    """The worker the `ipo` command started (its one child)."""
    def children():
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    wait_for(lambda: children(), 60, "the worker")
    return int(children()[0])


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"  # a zombie has stopped; only its parent's wait is missing


def count(workspace: Path, sql: str) -> int:
    db = sqlite3.connect(f"file:{workspace}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute(sql).fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0
    finally:
        db.close()


@pytest.fixture
def fruit_prompts(user_dirs, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Name {n} fruits and say why you like each."}) + "\n"
                               for n in range(2, 40)))
    done = subprocess.run([sys.executable, "-m", "ipo_tui", "prompts", "import", str(prompts), "--name", "fruits"],
                          env=env_of(user_dirs), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return user_dirs / "data" / "workspace.sqlite"


def start_generating(user_dirs, workspace):
    ipo = supervised(user_dirs, "generate", "--prompts", "fruits", "-n", "2", "--max-tokens", "48", "-b", "llamacpp")
    wait_for(lambda: count(workspace, "SELECT COUNT(*) FROM candidates") > 0 or ipo.poll() is not None, 300,
             "the first stored candidates")
    assert ipo.poll() is None, ipo.communicate()[1]
    return ipo


@pytest.mark.parametrize("to", ["ipo", "worker"])
@pytest.mark.parametrize("signum", list(STOPS))
def test_a_stop_signal_exits_as_a_shell_reports_it_with_one_line(user_dirs, fruit_prompts, signum, to):
    ipo = start_generating(user_dirs, fruit_prompts)
    os.kill(ipo.pid if to == "ipo" else child_of(ipo.pid), signum)
    _, error = ipo.communicate(timeout=120)
    assert ipo.returncode == STOPS[signum], error
    last = error.strip().splitlines()[-1]
    assert "stopped" in last and signal.Signals(signum).name in last, error
    assert "Traceback" not in error
    assert count(fruit_prompts, "SELECT COUNT(*) FROM candidates") % 2 == 0  # whole prompts only


def test_a_killed_worker_exits_137_and_says_so(user_dirs, fruit_prompts):
    ipo = start_generating(user_dirs, fruit_prompts)
    os.kill(child_of(ipo.pid), signal.SIGKILL)
    _, error = ipo.communicate(timeout=60)
    assert ipo.returncode == 137
    assert error.strip().splitlines()[-1].startswith("ipo: killed (SIGKILL)"), error


def test_a_worker_whose_ipo_is_killed_stops_itself(user_dirs, fruit_prompts):
    ipo = start_generating(user_dirs, fruit_prompts)
    worker = child_of(ipo.pid)
    os.kill(ipo.pid, signal.SIGKILL)
    assert ipo.wait(timeout=30) == -signal.SIGKILL  # a shell shows 137
    wait_for(lambda: gone(worker), 120, "the orphaned worker to stop")
    stored = count(fruit_prompts, "SELECT COUNT(*) FROM candidates")
    assert stored < 2 * 38, "the worker ran to the end instead of stopping"
    db = sqlite3.connect(fruit_prompts)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


# --- training: the foreground command owns its trainer ----------------------------------------------

@pytest.fixture
def pair_file(tmp_path):
    pairs = [{"prompt": f"What is {n} + {n}?", "chosen": f"{2 * n}.", "rejected": f"It is {n} bananas, I think."}
             for n in range(16)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return str(path)


def start_training(user_dirs, pair_file, tiny_model):
    ipo = supervised(user_dirs, "train", "dpo", "--pairs", pair_file, "--model", tiny_model, "--set", "epochs=50",
                     "--set", "batch_size=2", "--set", "save_steps=2", "--set", "lora_r=8")
    folder = user_dirs / "data" / "runs" / "dpo-001"
    wait_for(lambda: (folder / "progress.json").exists() and json.loads((folder / "progress.json").read_text() or "{}")
             .get("step", 0) >= 1 or ipo.poll() is not None, 300, "the first training step")
    assert ipo.poll() is None, ipo.communicate()[1]
    return ipo, folder


def run_status(user_dirs) -> str:
    from ipo_tui.training import runner
    from ipo_tui.workspace.store import Store

    store = Store(user_dirs / "data" / "workspace.sqlite")
    try:
        return runner.info(store, "dpo-001").status
    finally:
        store.close()


def test_sigterm_to_a_foreground_training_stops_its_trainer_and_exits_143(user_dirs, pair_file, tiny_model):
    ipo, folder = start_training(user_dirs, pair_file, tiny_model)
    trainer = int((folder / "pid").read_text())
    ipo.send_signal(signal.SIGTERM)
    _, error = ipo.communicate(timeout=300)
    assert ipo.returncode == 143, error
    assert "dpo-001 stopped at step" in error.strip().splitlines()[-1], error
    assert gone(trainer) and run_status(user_dirs) == "stopped"


def test_a_trainer_whose_ipo_is_killed_stops_with_a_checkpoint(user_dirs, pair_file, tiny_model):
    ipo, folder = start_training(user_dirs, pair_file, tiny_model)
    trainer = int((folder / "pid").read_text())
    os.kill(ipo.pid, signal.SIGKILL)
    ipo.wait(timeout=30)
    wait_for(lambda: gone(trainer), 300, "the orphaned trainer to stop")
    assert run_status(user_dirs) == "stopped"  # it saved a checkpoint and said so, as a SIGTERM asks


def test_a_run_that_is_training_is_not_started_twice(user_dirs, pair_file, tiny_model):
    from ipo_tui.training import runner
    from ipo_tui.workspace.store import Store

    ipo, folder = start_training(user_dirs, pair_file, tiny_model)
    store = Store(user_dirs / "data" / "workspace.sqlite")
    try:
        run = runner.info(store, "dpo-001")
        with pytest.raises(IpoError, match=r"run dpo-001 is running already \(process \d+\)"):
            runner.launch(run, store)  # what a loop's resume did while the trainer still ran
    finally:
        store.close()
        ipo.send_signal(signal.SIGINT)
        _, error = ipo.communicate(timeout=300)
    assert ipo.returncode == 130, error


HOLD = ("import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, str(os.getpid()).encode()); print('held', flush=True); "
        "sys.stdin.read()")


def test_a_loop_resumed_while_another_process_runs_it_is_refused(user_dirs, tmp_path):
    from ipo_tui.loop import iterations
    from ipo_tui.workspace.store import Store

    store = Store(tmp_path / "ws" / "workspace.sqlite")
    store.add_prompt_set("p", "test", [{"text": "Say hi."}])
    folder = tmp_path / "ws" / "runs" / "loop-001"
    folder.mkdir(parents=True)
    store.add_run("loop-001", "loop", {"done": [], "iterations": 1}, folder, status="stopped")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(locks.run_lock(folder))], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(IpoError, match=rf"loop-001 is running already \(process {holder.pid}\)"):
            iterations.run(store, "loop-001")
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
        store.close()


def test_a_prompt_sets_generate_or_judge_while_another_process_runs_it_is_refused(tmp_path, llama_backend):
    from ipo_tui.backends.base import Sampling
    from ipo_tui.judge.scoring import Judge
    from ipo_tui.loop import stages
    from ipo_tui.workspace.store import Store

    store = Store(tmp_path / "ws" / "workspace.sqlite")
    store.add_prompt_set("fruits", "test", [{"text": "Name a fruit."}])
    prompts = store.prompts("fruits")
    policy = stages.policy_of(llama_backend)
    try:
        for stage, run in (("generate", lambda: stages.generate(store, llama_backend, policy, prompts, 1,
                                                                  Sampling(1, 0.8, 0.95, 8, 0))),
                           ("judge", lambda: stages.judge(store, Judge(llama_backend), policy, prompts))):
            lock = locks.stage_lock(store.path, stage, prompts[0]["set_id"])
            lock.parent.mkdir(parents=True, exist_ok=True)
            holder = subprocess.Popen([sys.executable, "-c", HOLD, str(lock)], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert holder.stdout.readline().strip() == "held"
                with pytest.raises(IpoError, match=rf"{stage} on prompt set 'fruits' is running already "
                                                   rf"\(process {holder.pid}\)"):
                    run()
            finally:
                holder.stdin.close()
                holder.wait(timeout=30)
            run()  # free again once the holder is gone
    finally:
        store.close()


@pytest.mark.parametrize("how,status", [("terminal closed", 129), ("SIGTERM", 143)])
def test_the_app_closes_when_its_terminal_closes_or_it_is_stopped(user_dirs, tmp_path, how, status):
    """`ipo` as a terminal's own process (a tmux pane's, an ssh command's): the kernel tells a
    hangup to it alone. The app used to run on, its terminal gone, spinning on a dead input."""
    import pty
    import select

    args = [sys.executable, "-c", SUPERVISED, "tui", "--workspace", str(tmp_path / "ws.sqlite"), "--start", "pairs"]
    pid, terminal = pty.fork()
    if pid == 0:  # the child: the session leader, the pseudo-terminal its controlling one
        try:
            os.execve(sys.executable, args, env_of(user_dirs))
        finally:
            os._exit(127)  # never run on as a second pytest
    drawn = bytearray()

    def read_screen() -> bytes:
        if select.select([terminal], [], [], 0.2)[0]:
            with contextlib.suppress(OSError):  # EIO once the app is gone
                drawn.extend(os.read(terminal, 65536))
        return drawn

    ended = []

    def exited() -> bool:
        if how == "SIGTERM":
            read_screen()  # a full terminal would hold up the app's last writes
        done, code = os.waitpid(pid, os.WNOHANG)
        ended.extend([code] if done else [])
        return bool(done)

    try:
        wait_for(lambda: b"Help" in read_screen(), 120, "the app's footer")
        if how == "SIGTERM":
            os.kill(pid, signal.SIGTERM)
        else:
            os.close(terminal)
            terminal = -1
        wait_for(exited, 60, f"ipo tui to close after {how}")
        assert os.waitstatus_to_exitcode(ended[0]) == status
    finally:
        if terminal >= 0:
            os.close(terminal)
        if not ended:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
