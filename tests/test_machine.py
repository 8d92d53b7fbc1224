"""The machine it meets: llama.cpp's repacking follows the CPU, the engines stay quiet, a native
crash is one line and leaves the terminal as it was, training precision follows the hardware."""

import fcntl
import os
import pty
import signal
import subprocess
import sys
import termios
import tempfile
from pathlib import Path

import pytest

from ipo_tui import hardware
from ipo_tui.errors import IpoError
from ipo_tui.supervisor import report, supervise

GENERATE = (
    "from ipo_tui import backends\nfrom ipo_tui.backends import weights\n"
    "from ipo_tui.backends.base import Sampling\n"
    "b = backends.load('llamacpp', weights.resolve(None))\n"
    "print(b._generator.model_params.use_extra_bufts, b.capabilities.dtype)\n"
    "print(repr(b.generate([{'role': 'user', 'content': 'Name a fruit.'}], Sampling(n=1, max_tokens=8, seed=1))[0]))\n"
)


def _python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})


@pytest.mark.parametrize("setting, expected", [("on", "True"), ("off", "False"), ("auto", str(not hardware.has_amx()))])
def test_weight_repacking_follows_the_cpu_or_the_override(setting, expected):
    # the embedded Q4 file generates in every setting; with repacking on, an AMX CPU would crash here
    done = _python(GENERATE, IPO_LLAMA_REPACK=setting)
    assert done.returncode == 0, done.stderr[-2000:]
    flag, _dtype = done.stdout.splitlines()[0].split(" ", 1)
    assert flag == expected
    assert ("no repacking" in done.stdout) == (expected == "False")
    assert done.stdout.splitlines()[1].strip("'\" ")  # some text came out


def test_a_bad_repacking_setting_is_one_line():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IPO_LLAMA_REPACK", "sometimes")
        from ipo_tui.backends.llama_runtime import repacking

        with pytest.raises(IpoError, match="IPO_LLAMA_REPACK=sometimes: choose on, off or auto"):
            repacking()


def test_engines_are_quiet_unless_verbose():
    quiet = _python(GENERATE, IPO_VERBOSE="0")
    loud = _python(GENERATE, IPO_VERBOSE="1")
    assert quiet.returncode == loud.returncode == 0
    assert "llama_" not in quiet.stderr and "load_tensors" not in quiet.stderr, quiet.stderr[-1000:]
    assert "llama_" in loud.stderr  # llama.cpp's own log, let through


CRASH = ("from ipo_tui.supervisor import record_fatal_signals\n"
         "record_fatal_signals()\n"
         "import ctypes, sys, tty\n"
         "tty.setraw(0)\n"  # as the app leaves the terminal, then dies natively
         "sys.stdout.write('\\x1b[?1049h\\x1b[?25l'); sys.stdout.flush()\n"
         "ctypes.string_at(0)\n")


def test_a_native_crash_restores_the_terminal_and_says_so_in_one_line(tmp_path):
    parent, child = pty.openpty()  # the user's terminal
    before = termios.tcgetattr(child)
    log = tmp_path / "crash.log"
    code = (f"import sys, pathlib\nfrom ipo_tui.supervisor import supervise\n"
            f"sys.exit(supervise([sys.executable, '-c', {CRASH!r}], pathlib.Path({str(log)!r})))")
    done = subprocess.run([sys.executable, "-c", code], stdin=child, stdout=child, stderr=subprocess.PIPE,
                          timeout=120, text=True)
    after = termios.tcgetattr(child)
    os.close(child)
    screen = b""
    while True:
        try:
            chunk = os.read(parent, 4096)
        except OSError:  # the terminal's other side is closed: all was read
            break
        if not chunk:
            break
        screen += chunk
    os.close(parent)
    assert done.returncode == 128 + 11
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ipo: died of SIGSEGV") and str(log) in lines[0], lines
    assert "Fatal Python error: Segmentation fault" in log.read_text()
    assert after == before  # the child had put it in raw mode
    assert screen.index(b"\x1b[?1049l") > screen.index(b"\x1b[?1049h")  # the alternate screen was left


def test_the_report_names_the_engine_the_ipo_frame_and_what_to_try(tmp_path):
    log = tmp_path / "crash.log"
    log.write_text(
        "Fatal Python error: Segmentation fault\n\n"
        "Thread 0x00007f01 (most recent call first):\n"
        '  File "/usr/lib/python3.11/threading.py", line 324 in wait\n\n'
        "Current thread 0x00007f02 (most recent call first):\n"
        '  File "/venv/site-packages/llama_cpp/llama.py", line 656 in eval\n'
        '  File "/src/ipo_tui/backends/llamacpp.py", line 105 in last_logprobs\n'
        '  File "/src/ipo_tui/judge.py", line 150 in score_tokens\n\n'
        "Extension modules: numpy.core._multiarray_umath (total: 1)\n")
    line = report(11, log)
    assert line == (f"ipo: died of SIGSEGV in llama.cpp from llamacpp.py:105 last_logprobs; stack in {log}; "
                    "try IPO_LLAMA_REPACK=off, or --backend hf")


def test_an_ordinary_exit_passes_through_the_supervisor(tmp_path):
    assert supervise([sys.executable, "-c", "raise SystemExit(3)"], tmp_path / "crash.log") == 3


def test_the_ipo_command_runs_through_the_supervisor_from_a_pipe():
    code = "import sys; sys.argv = ['ipo', *sys.argv[1:]]; from ipo_tui.supervisor import main; main()"
    for args, status, text in ((["--help"], 0, "Usage: ipo [OPTIONS] COMMAND"), (["models", "remove", "nothing"], 1, "no registered model")):
        done = subprocess.run([sys.executable, "-c", code, *args], stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == status and text in done.stdout + done.stderr, done.stderr


COUNT_SIGINTS = ("import signal, sys, time\n"
                 "seen = []\n"
                 "signal.signal(signal.SIGINT, lambda *a: seen.append(1))\n"
                 "print('ready', flush=True)\n"
                 "while not seen: time.sleep(0.01)\n"
                 "time.sleep(1)\n"  # a second one, if any, comes now
                 "sys.exit(10 + len(seen))\n")


@pytest.mark.parametrize("sent_by", ["terminal", "kill"])
def test_the_child_gets_one_sigint_from_ctrl_c_or_from_a_kill_of_the_ipo_command(tmp_path, sent_by):
    parent, child = pty.openpty()  # the user's terminal, in which Ctrl-C reaches every process of the job
    code = (f"import sys, pathlib\nfrom ipo_tui.supervisor import supervise\n"
            f"sys.exit(supervise([sys.executable, '-c', {COUNT_SIGINTS!r}], pathlib.Path({str(tmp_path / 'c.log')!r})))")
    ipo = subprocess.Popen([sys.executable, "-c", code], stdin=child, stdout=child, stderr=child,
                           start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(child)
    screen = b""
    while b"ready" not in screen:
        screen += os.read(parent, 1024)
    if sent_by == "terminal":
        os.write(parent, b"\x03")
    else:
        os.kill(ipo.pid, signal.SIGINT)
    assert ipo.wait(timeout=30) == 11
    os.close(parent)


@pytest.mark.parametrize("requested, cuda, cuda_bf16, expected", [
    ("bf16", False, False, "bf16"), ("fp32", True, True, "fp32"), (None, True, True, "bf16"),
    ("auto", True, False, "fp16"),
])
def test_training_precision(requested, cuda, cuda_bf16, expected):
    dtype, why = hardware.training_dtype(requested, cuda, cuda_bf16)
    assert dtype == expected and why


def test_training_precision_on_this_cpu_follows_its_flags():
    dtype, why = hardware.training_dtype(None, False, False)
    if hardware.cpu_bf16():
        assert dtype == "bf16" and hardware.cpu_bf16() in why
    else:
        assert dtype == "fp32" and "no native bf16" in why


def test_bad_training_precision():
    with pytest.raises(IpoError, match="--dtype fp8: choose auto, fp32, bf16 or fp16"):
        hardware.training_dtype("fp8", False, False)
    with pytest.raises(IpoError, match="GPU only"):
        hardware.training_dtype("fp16", False, False)


def test_the_crash_log_falls_back_to_the_temp_folder_where_the_data_folder_cannot_be_written(tmp_path):
    """A read-only home or a data folder that cannot be made does not stop `ipo` from starting."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = dict(os.environ, IPO_DATA_DIR=str(blocker / "data"))  # under a file: no folder can be made there
    code = "import sys; sys.argv = ['ipo', *sys.argv[1:]]; from ipo_tui.supervisor import main; main()"
    done = subprocess.run([sys.executable, "-c", code, "--help"], stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=120, env=env)
    assert done.returncode == 0 and "Usage: ipo" in done.stdout, done.stderr
    probe = subprocess.run([sys.executable, "-c", "from ipo_tui.supervisor import crash_log; print(crash_log())"],
                           capture_output=True, text=True, timeout=60, env=env)
    assert Path(probe.stdout.strip()).parent == Path(tempfile.gettempdir()), probe.stderr
