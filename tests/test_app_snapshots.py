"""Snapshots of every screen at 120x40 and at 80x24, the smallest terminal the app is made for
(pytest-textual-snapshot), on a fake engine and fixed data, so they are the same on every machine. Update with `pytest tests/test_app_snapshots.py --snapshot-update`."""

from __future__ import annotations

import json
import os

import pytest
from test_app_support import FakeEngine, seed_pairs, write_eval_file

from ipo_tui.tui.app import IpoApp
from ipo_tui.tui.screens import model as model_screen
from ipo_tui.workspace import store as store_module
from ipo_tui.workspace.store import Store

STAMP = "2026-01-02T03:04:05+00:00"


@pytest.fixture(params=[(120, 40), (80, 24)], ids=["120x40", "80x24"])
def size(request):
    return request.param


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the fields, the same in every run
    monkeypatch.setattr(store_module, "now", lambda: STAMP)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(model_screen, "torch_has_cuda", lambda: False)
    return tmp_path


def make_app(tmp_path, **kwargs) -> IpoApp:
    kwargs.setdefault("engine", FakeEngine())
    kwargs.setdefault("eval_file", "")
    app = IpoApp(workspace=tmp_path / "ws.sqlite", browse_root=tmp_path, **kwargs)
    app.animation_level = "none"
    return app


def steady(pilot) -> None:
    """No blinking cursors: a blink caught mid-phase would make the snapshot flaky."""
    from textual.widgets import Input, TextArea

    for screen in pilot.app.screen_stack:
        for widget in screen.query("TextArea, Input"):
            if isinstance(widget, (TextArea, Input)):
                widget.cursor_blink = False


def pressing(*keys):
    async def run_before(pilot) -> None:
        await pilot.press(*keys)
        await pilot.pause()
        steady(pilot)

    return run_before


async def settle(pilot) -> None:
    steady(pilot)
    await pilot.pause(0.4)
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


def seed_run(tmp_path) -> None:
    store = Store(tmp_path / "ws.sqlite")
    folder = tmp_path / "runs" / "dpo-001"
    folder.mkdir(parents=True)
    rows = []
    for step in range(1, 13):
        rows.append({"step": step, "max_steps": 12, "epoch": step / 12, "loss": 0.69 - 0.04 * step + 0.01 * (step % 3),
                     "rewards/margins": 0.05 * step, "rewards/accuracies": min(1.0, 0.4 + 0.05 * step),
                     "learning_rate": 5e-5, "elapsed_s": 4.5 * step, "eta_s": 4.5 * (12 - step)})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "progress.json").write_text(json.dumps({"step": 12, "max_steps": 12}))
    (folder / "train.log").write_text("loading the model\ntraining 12 steps on 48 pairs\ncompleted\n")
    spec = {"id": "dpo-001", "kind": "dpo", "model": "fake", "model_identity": "fake", "data_source": "accepted,edited",
            "examples": 48, "settings": {}}
    store.add_run("dpo-001", "dpo", spec, folder, status="completed")
    store.close()


def test_model_screen(workspace, size, snap_compare):
    assert snap_compare(make_app(workspace, start="model"), terminal_size=size, run_before=steady)


def test_lab_screen(workspace, size, snap_compare):
    async def type_text(pilot):
        screen = pilot.app.screen
        screen.query_one("#instruction").load_text("What is 12 + 30?")
        screen.query_one("#cand-text-1").load_text("12 + 30 = 42.")
        screen.query_one("#cand-text-2").load_text("12 + 30 = 52.")
        screen.query_one("#cand-text-3").load_text("Forty-two: add the tens (10 + 30 = 40), then the units (2).")
        await settle(pilot)
        steady(pilot)

    assert snap_compare(make_app(workspace), terminal_size=size, run_before=type_text)


def test_lab_screen_low_mass_and_template_error(workspace, size, snap_compare):
    async def break_template(pilot):
        screen = pilot.app.screen
        pilot.app.judge.min_mass = 0.5  # every fake score is below it: the warning shows
        screen.query_one("#instruction").load_text("Tell me a joke.")
        screen.query_one("#cand-text-1").load_text("Why did the chicken cross the road?")
        screen.query_one("#cand-text-2").load_text("No.")
        await settle(pilot)
        screen.query_one("#tpl-user").load_text("Is this reply good? {response}")
        await settle(pilot)
        steady(pilot)

    assert snap_compare(make_app(workspace), terminal_size=size, run_before=break_template)


def test_pairs_screen(workspace, size, snap_compare):
    store = Store(workspace / "ws.sqlite")
    ids = seed_pairs(store)
    store.set_pair_status(ids[1], "accepted")
    store.set_pair_status(ids[3], "rejected")
    store.close()
    assert snap_compare(make_app(workspace, start="pairs"), terminal_size=size, run_before=steady)


def test_pair_detail(workspace, size, snap_compare):
    store = Store(workspace / "ws.sqlite")
    seed_pairs(store)
    store.close()
    assert snap_compare(make_app(workspace, start="pairs"), terminal_size=size, run_before=pressing("down", "enter"))


def test_eval_screen(workspace, size, snap_compare):
    write_eval_file(workspace / "pairs.jsonl")

    async def evaluate(pilot):
        await pilot.press("ctrl+r")
        await settle(pilot)
        steady(pilot)

    app = make_app(workspace, start="eval", eval_file="pairs.jsonl")
    assert snap_compare(app, terminal_size=size, run_before=evaluate)


def test_train_screen(workspace, size, snap_compare):
    seed_run(workspace)
    assert snap_compare(make_app(workspace, start="train"), terminal_size=size, run_before=settle)


def test_runs_screen(workspace, size, snap_compare):
    seed_run(workspace)
    assert snap_compare(make_app(workspace, start="runs"), terminal_size=size, run_before=settle)


def test_help_screen(workspace, size, snap_compare):
    assert snap_compare(make_app(workspace, start="pairs"), terminal_size=size, run_before=pressing("f1"))
