"""The training, runs and evaluation screens driven by Pilot: what fits at 80x24, the form of each
kind, a loop started, followed, stopped and resumed from the app, a run's detail, and how an
evaluation or a benchmark ends (failed, stopped, refused)."""

from __future__ import annotations

import json
import threading

import pytest
from test_app_support import FakeEngine, wait_for

from ipo_tui.tui.app import IpoApp
from ipo_tui.workspace.store import Store

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
SMALL, LARGE = (80, 24), (120, 40)
TINY_TRAINING = {"lora_r": "4", "lora_alpha": "8", "batch_size": "2", "max_length": "64"}


def make_app(tmp_path, engine=None, **kwargs) -> IpoApp:
    app = IpoApp(workspace=tmp_path / "ws.sqlite", engine=engine or FakeEngine(), eval_file="", browse_root=tmp_path,
                 **kwargs)
    app.animation_level = "none"
    return app


def status(screen) -> str:
    return str(screen.query_one("#status").render())


def seed_run(tmp_path, steps: int = 40) -> None:
    """A stopped DPO run whose trainer logged `steps` steps."""
    store = Store(tmp_path / "ws.sqlite")
    folder = tmp_path / "runs" / "dpo-001"
    folder.mkdir(parents=True)
    rows = [{"step": s, "max_steps": 60, "loss": 0.69 - 0.01 * s, "rewards/margins": 0.02 * s,
             "rewards/accuracies": min(1.0, 0.4 + 0.02 * s), "elapsed_s": 1.5 * s, "eta_s": 1.5 * (60 - s)}
            for s in range(1, steps + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "train.log").write_text("the trainer's last line\n")
    store.add_run("dpo-001", "dpo", {"examples": 58, "data_source": "accepted,edited", "model": "m",
                                     "settings": {"beta": 0.1, "epochs": 1}}, folder, status="stopped")
    store.close()


def fill(screen, values: dict) -> None:
    for key, value in values.items():
        screen.query_one(f"#set-{key}").value = value


# --- training -------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_the_training_screen_fits_its_terminal(tmp_path, size):
    """At 80x24 the charts would collapse into overlapping labels: a text summary of loss, margin and
    accuracy takes their place; at 120x40 the charts show. The start button is on screen at both."""
    seed_run(tmp_path)
    app = make_app(tmp_path, start="train")
    async with app.run_test(size=size) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: len(screen.metrics) == 40)
        await pilot.pause()
        charts, text = screen.query_one("#train-plots"), screen.query_one("#run-summary")
        assert charts.display == (size == LARGE) and text.display == (size == SMALL)
        lines = str(text.render()).splitlines()
        assert [line.split()[0] for line in lines] == ["loss", "margin", "accuracy"]
        assert lines[0].split()[1:4] == ["0.680", "→", "0.290"]
        button = screen.query_one("#train-start").region
        assert button.right <= size[0] and button.bottom <= size[1] - 2  # above the status line and the footer


async def test_the_form_shows_the_fields_of_its_kind_and_a_stop_is_prompt(tmp_path, tiny_model):
    """sft asks for a data file and no pairs or beta (it trained on `accepted,edited` before and
    failed); a stop before the first step ends the trainer at once; one after some steps says it is
    finishing the step and saving a checkpoint until the trainer has stopped."""
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {w}.", "response": w}) + "\n" for w in ("hi", "yes", "no", "ok")))
    app = make_app(tmp_path, start="train")
    async with app.run_test(size=SMALL) as pilot:
        screen = app.screen
        shown = {row.children[1].id for row in screen.query(".form-row") if row.display}
        assert {"train-pairs", "set-beta"} <= shown and "train-data" not in shown
        screen.query_one("#train-kind").value = "sft"
        await wait_for(pilot, lambda: screen.query_one("#train-data").parent.display)
        shown = {row.children[1].id for row in screen.query(".form-row") if row.display}
        assert "train-data" in shown and not {"train-pairs", "set-beta", "loop-iterations"} & shown
        screen.query_one("#train-data").value = str(data)
        screen.query_one("#train-model").value = tiny_model
        fill(screen, {**TINY_TRAINING, "epochs": "200", "batch_size": "1"})
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.run is not None or "✗" in status(screen), timeout=120)
        assert screen.run is not None and screen.run.kind == "sft", status(screen)
        await pilot.press("ctrl+t")  # the trainer is loading: nothing to save
        await wait_for(pilot, lambda: screen.run.status == "stopped", timeout=30)
        assert "stopped sft-001 at once" in status(screen)

        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: screen.run.status == "running" and len(screen.metrics) >= 2, timeout=300)
        await pilot.press("ctrl+t")
        await pilot.pause()
        # finishing the step in flight, or at once where a checkpoint was just saved (save_steps)
        assert ("stopping sft-001… finishing step" in status(screen) and "then saving a checkpoint" in status(screen)
                or "stopped sft-001 at once" in status(screen)), status(screen)
        await wait_for(pilot, lambda: screen.run.status == "stopped", timeout=300)
        assert "ctrl+g resumes it" in status(screen)


async def test_a_loop_started_followed_stopped_and_resumed_from_the_app(tmp_path, tiny_model):
    """The form's loop kind records a loop as `ipo loop` does and runs it in a process of its own;
    the screen follows its iteration and stage, stops it (as Ctrl-C does) and resumes it where it
    stopped; the runs screen's detail shows its iterations."""
    from ipo_tui.training import runner

    store = Store(tmp_path / "ws.sqlite")
    store.add_prompt_set("tiny", "tests", [{"text": t} for t in ("Say hi.", "Name a colour.", "Say yes.")])
    store.close()
    app = make_app(tmp_path, start="train")
    async with app.run_test(size=LARGE) as pilot:
        screen = app.screen
        screen.query_one("#train-kind").value = "loop"
        await pilot.pause()
        assert screen.query_one("#loop-prompts").value == "tiny"
        screen.query_one("#loop-n").value = "2"
        screen.query_one("#train-model").value = tiny_model
        fill(screen, {**TINY_TRAINING, "epochs": "1"})
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.run is not None or "✗" in status(screen), timeout=120)
        assert screen.run is not None and screen.run.id == "loop-001", status(screen)
        title = screen.query_one("#run-title")
        await wait_for(pilot, lambda: "iteration 1/1:" in str(title.render()), timeout=120)
        await pilot.press("ctrl+t")
        await pilot.pause()
        assert "stopping loop-001…" in status(screen)
        await wait_for(pilot, lambda: screen.run.status == "stopped", timeout=300)
        assert "ctrl+g resumes it" in status(screen)

        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: screen.run.status != "running", timeout=900, step=0.5)
        assert screen.run.status == "completed", (status(screen), runner.log_tail(screen.run.folder, 30, "loop.log"))
        assert len(screen.run.config["done"]) == 1
        await wait_for(pilot, lambda: "iteration 1 of 1 done" in str(screen.query_one("#run-speed").render()))
        assert str(screen.query_one("#run-summary").render()).startswith("loss")  # its training's figures stay

        await pilot.press("f7")
        runs = app.screen
        await wait_for(pilot, lambda: runs.query_one("#runs-table").row_count == 2)
        runs.query_one("#runs-table").move_cursor(row=0)
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is not runs)
        assert app.screen.query_one("#detail-loop").row_count == 2  # policy 0 and policy 1
        assert "iterations 1 of 1 done" in str(app.screen.query_one("#detail-figures").render())


# --- runs -----------------------------------------------------------------------------------------


async def test_enter_opens_a_runs_detail(tmp_path):
    """enter shows the run, not the training screen: settings, status, figures, folder, log tail;
    escape goes back to the list. At 80x24 the list's first columns tell runs apart."""
    seed_run(tmp_path)
    app = make_app(tmp_path, start="runs")
    async with app.run_test(size=SMALL) as pilot:
        runs = app.screen
        await wait_for(pilot, lambda: runs.query_one("#runs-table").row_count == 1 and runs.last)
        assert runs.query_one("#runs-table").columns and \
            [str(c.label) for c in runs.query_one("#runs-table").columns.values()][:7] == \
            ["run", "kind", "status", "step", "loss", "margin", "acc."]
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is not runs)
        detail = app.screen
        assert app.current_mode == "runs"
        text = " ".join(str(detail.query_one(f"#detail-{part}").render()) for part in ("head", "settings", "figures", "log"))
        for expected in ("dpo-001 · dpo · stopped", str(tmp_path / "runs" / "dpo-001"), "data accepted,edited",
                         "step 40/60", "loss", "the trainer's last line"):
            assert expected in text, expected
        assert detail.query_one("#detail-keys").region.bottom <= SMALL[1]
        await pilot.press("escape")
        assert app.screen is runs


# --- evaluation -----------------------------------------------------------------------------------


async def test_a_failed_evaluation_leaves_the_bar_still(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\nnot json\n')
    app = make_app(tmp_path, start="eval")
    async with app.run_test(size=SMALL) as pilot:
        screen = app.screen
        screen.query_one("#eval-file").value = str(bad)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not screen.running)
        assert "failed" in str(screen.query_one("#eval-progress-label").render())
        assert screen.query_one("#eval-progress").total is not None  # an indeterminate bar animates for ever


async def test_a_benchmark_limit_of_0_is_refused(tmp_path):
    app = make_app(tmp_path, start="eval")
    async with app.run_test(size=SMALL) as pilot:
        screen = app.screen
        screen.query_one("#bench-limit").value = "0"
        await pilot.press("ctrl+b")
        await pilot.pause()
        assert not screen.running and "limit '0': give a number of items (1 or more), or all" in status(screen)


class HeldEngine(FakeEngine):
    """Generation waits until the test lets it go: a benchmark that is answering its first item."""

    def __init__(self):
        super().__init__()
        self.answering, self.go = threading.Event(), threading.Event()

    def generate(self, messages, sampling):
        self.answering.set()
        self.go.wait(30)
        return super().generate(messages, sampling)


async def test_a_benchmark_of_all_items_says_so_and_a_stopped_one_is_marked(tmp_path):
    """`all` says how many items before the first answer; stopped after one, the table shows the
    figures of that one item as 1 of the 541 asked, and `ipo bench list` too."""
    from typer.testing import CliRunner

    from ipo_tui.cli.app import app as cli

    engine = HeldEngine()
    app = make_app(tmp_path, engine, start="eval")
    async with app.run_test(size=SMALL) as pilot:
        screen = app.screen
        screen.query_one("#bench-limit").value = "all"
        await pilot.press("ctrl+b")
        await wait_for(pilot, engine.answering.is_set)
        assert "ifeval 541 items (all)" in status(screen)
        await pilot.press("ctrl+t")
        engine.go.set()
        await wait_for(pilot, lambda: not screen.running)
        table = screen.query_one("#bench-table")
        assert str(table.get_row_at(0)[4]) == "1/541"
        assert "bench-001 stopped: ifeval 1 of 541 items answered, kept" in status(screen)
        assert screen.query_one("#eval-progress").progress == 1
    listed = CliRunner().invoke(cli, ["bench", "list", "-w", str(tmp_path / "ws.sqlite")], env={"COLUMNS": "200"})
    assert "1 of 541 asked: incomplete" in listed.output, listed.output


@pytest.mark.parametrize("typed", ["", "  ", "0", "-3", "ten"])
async def test_a_limit_is_a_number_or_all_never_silently_everything(typed):
    from ipo_tui.errors import IpoError
    from ipo_tui.tui.screens.evaluation import parse_limit

    with pytest.raises(IpoError, match="give a number of items"):
        parse_limit(typed)
    assert parse_limit(" All ") is None and parse_limit("2") == 2
