"""The `ipo` command as a user meets it: output shapes and one-line errors, never a traceback."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def ipo(*args: str, env_dirs) -> subprocess.CompletedProcess:
    env = dict(os.environ, IPO_CONFIG_DIR=str(env_dirs / "config"), IPO_DATA_DIR=str(env_dirs / "data"), COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "ipo_tui", *args], capture_output=True, text=True, env=env, timeout=600)


def assert_one_line_error(result, *needles):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    for needle in needles:
        assert needle in lines[0]


def test_score_json_ranks_candidates(user_dirs):
    result = ipo("score", "-b", "llamacpp", "--json", "-p", "What is 12 + 30?", "-r", "42", "-r", "12 + 30 = 52", env_dirs=user_dirs)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["rank"] for r in rows] == [1, 2]
    assert rows[0]["score"] >= rows[1]["score"] and rows[0]["probability"]
    for row in rows:
        assert {"response", "p_yes", "mass", "category"} <= row.keys() and row["category"] == "math"


def test_score_table_and_file(user_dirs, tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"response": "Paris."}) + "\n" + json.dumps({"response": "Rome.", "category": "generic"}) + "\n")
    result = ipo("score", "-p", "Capital of France?", "-f", str(path), env_dirs=user_dirs)
    assert result.returncode == 0, result.stderr
    assert "p'yes" in result.stdout and "Paris." in result.stdout and "generic" in result.stdout


def test_models_lists_embedded_and_recent(user_dirs, tmp_path):
    result = ipo("models", env_dirs=user_dirs)
    assert result.returncode == 0 and "embedded" in result.stdout and "llama" in result.stdout and "8192" in result.stdout


@pytest.mark.parametrize("args,needles", [
    (["score", "-m", "/no/such/model.gguf", "-p", "q", "-r", "a"], ["/no/such/model.gguf", "not found"]),
    (["score", "-p", "q", "-r", ""], ["--response number 1 is empty"]),
    (["score", "-p", "", "-r", "a"], ["--prompt"]),
    (["score", "-p", "q"], ["no candidates"]),
    (["score", "-b", "vllm", "-p", "q", "-r", "a"], ["unknown backend"]),
    (["score", "-c", "poetry", "-p", "q", "-r", "a"], ["poetry"]),
])
def test_bad_input_is_one_line(user_dirs, args, needles):
    assert_one_line_error(ipo(*args, env_dirs=user_dirs), *needles)


def test_not_gguf_and_bad_line(user_dirs, tmp_path):
    fake = tmp_path / "weights.gguf"
    fake.write_text("not a model")
    assert_one_line_error(ipo("score", "-m", str(fake), "-p", "q", "-r", "a", env_dirs=user_dirs), "not a GGUF file")
    bad = tmp_path / "c.jsonl"
    bad.write_text('{"response": "ok"}\n{"response": "unterminated}\n')
    assert_one_line_error(ipo("score", "-p", "q", "-f", str(bad), env_dirs=user_dirs), "line 2", "not valid JSON")


def test_a_benchmark_on_an_unknown_model_is_one_line(user_dirs):
    """benchmarks/ are run by users too: a model that is not there is the CLI's one line, not a traceback."""
    env = dict(os.environ, IPO_CONFIG_DIR=str(user_dirs / "config"), IPO_DATA_DIR=str(user_dirs / "data"))
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "judge.py"
    result = subprocess.run([sys.executable, str(path), "-m", "no-such-model"], capture_output=True, text=True,
                            env=env, timeout=600)
    assert_one_line_error(result, "no-such-model", "not found")


SUPERVISED = "import sys; sys.argv = ['ipo', *sys.argv[1:]]; from ipo_tui.supervisor import main; main()"


@pytest.mark.parametrize("signum, to", [(signal.SIGINT, "the ipo command"), (signal.SIGTERM, "the loop's process")])
def test_a_signalled_loop_stops_as_ctrl_c_does(user_dirs, tmp_path, signum, to):
    """`kill -INT` on the `ipo` command (a script's send_signal: no terminal reaches the child), or a
    SIGTERM on the loop's own process, stops a loop mid-benchmark: recorded stopped, resumable."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Name {n} fruits."}) + "\n" for n in range(2, 6)))
    assert ipo("prompts", "import", str(prompts), "--name", "fruits", env_dirs=user_dirs).returncode == 0
    env = dict(os.environ, IPO_CONFIG_DIR=str(user_dirs / "config"), IPO_DATA_DIR=str(user_dirs / "data"))
    loop = subprocess.Popen([sys.executable, "-c", SUPERVISED, "loop", "--prompts", "fruits", "-n", "2",
                             "--bench", "ifeval", "--bench-limit", "50", "--bench-max-tokens", "64"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    workspace = user_dirs / "data" / "workspace.sqlite"
    deadline = time.monotonic() + 600
    while bench_answers(workspace) == 0:  # wait for a state: policy 0's first benchmark answer stored
        assert loop.poll() is None and time.monotonic() < deadline, loop.stderr.read()
        time.sleep(0.1)
    folder = user_dirs / "data" / "runs" / "loop-001"
    os.kill(loop.pid if to == "the ipo command" else int((folder / "pid").read_text()), signum)
    _, error = loop.communicate(timeout=60)
    assert loop.returncode == 128 + signum, error  # as a shell reports a death by that signal
    last = error.strip().splitlines()[-1]
    assert last == f"loop-001 stopped ({signal.Signals(signum).name}); continue with `ipo loop --resume loop-001`", error
    shown = ipo("runs", env_dirs=user_dirs)
    assert re.search(r"loop-001\s.*stopped", shown.stdout), shown.stdout


def bench_answers(workspace: Path) -> int:
    import sqlite3

    db = sqlite3.connect(f"file:{workspace}?mode=ro", uri=True, timeout=30)
    try:
        return db.execute("SELECT COUNT(*) FROM bench_items").fetchone()[0]
    except sqlite3.OperationalError:  # no benchmark table yet
        return 0
    finally:
        db.close()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the dropped interrupt
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_that_a_finalizer_swallowed_is_raised_at_the_next_step(signum):
    """The signal lands while a `__del__` runs (as it did in CI, mid-benchmark): Python prints the
    KeyboardInterrupt and drops it, and the loop's next progress step raises it again."""
    from ipo_tui.stopping import StopRequest

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signum)
            time.sleep(0.01)  # the handler runs here, inside the finalizer

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        stop = StopRequest().install()
        steps = []
        step = stop.checked(lambda done, total: steps.append(done))
        step(1, 3)
        Finalized()  # the interrupt is dropped here
        with pytest.raises(KeyboardInterrupt):
            step(2, 3)
        assert steps == [1]
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def test_runs_with_a_missing_folder_or_a_loop_record_cut_short(user_dirs, tmp_path):
    """A NULL `runs.folder` and a loop record without its `done` list (a damaged or hand-edited
    workspace) list and show; they do not crash `ipo runs`."""
    from ipo_tui.workspace.store import Store

    workspace = tmp_path / "ws.sqlite"
    store = Store(workspace)
    store.add_run("dpo-001", "dpo", {"examples": 4}, tmp_path / "runs" / "dpo-001", status="stopped")
    store.add_run("loop-001", "loop", {"iterations": 2}, tmp_path / "runs" / "loop-001", status="stopped")
    store.db.execute("UPDATE runs SET folder = NULL WHERE id = 'dpo-001'")
    store.close()
    listed = ipo("runs", "-w", str(workspace), env_dirs=user_dirs)
    assert listed.returncode == 0 and "dpo-001" in listed.stdout and "loop-001" in listed.stdout, listed.stderr
    for run_id in ("dpo-001", "loop-001"):
        shown = ipo("runs", run_id, "-w", str(workspace), env_dirs=user_dirs)
        assert shown.returncode == 0 and run_id in shown.stdout and "Traceback" not in shown.stderr, shown.stderr


def test_import_skips_and_names_duplicate_prompts_unless_kept(user_dirs, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ("a", "b", "a", "c", "b")))
    skipped = ipo("prompts", "import", str(path), "--name", "once", env_dirs=user_dirs)
    assert skipped.returncode == 0 and "imported 3 prompts" in skipped.stdout
    assert "skipped 2 duplicate prompts (lines 3, 5)" in skipped.stderr and "--keep-duplicates" in skipped.stderr
    kept = ipo("prompts", "import", str(path), "--name", "all", "--keep-duplicates", env_dirs=user_dirs)
    assert kept.returncode == 0 and "imported 5 prompts" in kept.stdout and not kept.stderr
