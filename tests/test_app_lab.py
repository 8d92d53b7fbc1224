"""The score lab, the app shell and the Model screen, driven by Pilot on the fake engine: what a
curator does there keeps their work (typed text, saved pairs, the judge of the other screens),
a crash is reported, and every screen fits an 80x24 terminal."""

from __future__ import annotations

import threading

import pytest
from test_app_support import FakeEngine, wait_for

from ipo_tui.tui.app import IpoApp
from ipo_tui.workspace.store import Store

SMALL, LARGE = (80, 24), (120, 40)


def make_app(tmp_path, engine, **kwargs) -> IpoApp:
    app = IpoApp(workspace=tmp_path / "ws.sqlite", engine=engine, eval_file="", browse_root=tmp_path, **kwargs)
    app.animation_level = "none"
    return app


def status(screen) -> str:
    return str(screen.query_one("#status").render())


async def scored(pilot, before: int | None = None) -> None:
    """Wait until the bars show the latest edit (once the edits' messages are handled): with `before`
    (the version before the edit), until the edit itself has been seen, however slow the machine."""
    screen = pilot.app.screen
    await pilot.pause()
    if before is not None:
        await wait_for(pilot, lambda: screen.version > before)
    await wait_for(pilot, lambda: screen.scored_version == screen.version and screen._timer is None)


async def fill(pilot, instruction: str, *candidates: str) -> None:
    """The instruction and the first boxes' texts, as typed (load_text: one edit each), then scored."""
    screen = pilot.app.screen
    before = screen.version
    screen.query_one("#instruction").load_text(instruction)
    for card, text in zip(screen.cards, candidates):
        card.editor.load_text(text)
    await scored(pilot, before)


async def generate(pilot, n: int) -> None:
    screen = pilot.app.screen
    screen.query_one("#gen-n").value = str(n)
    await pilot.press("ctrl+g")
    await wait_for(pilot, lambda: not screen.generating)
    await pilot.pause()


# --- generating ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_generating_more_candidates_than_boxes_adds_boxes(tmp_path):
    """n above the number of boxes (4 boxes and n=6; a box removed, then n=4) made the app die on
    `NoMatches: ScoreBar`; the lab adds the boxes the samples need."""
    app = make_app(tmp_path, FakeEngine())
    async with app.run_test(size=LARGE) as pilot:
        screen = app.screen
        await fill(pilot, "Name a colour.")
        await generate(pilot, 6)
        assert len(screen.cards) == 6 and all(c.text.startswith("Sample ") for c in screen.cards)
        await pilot.press("ctrl+r", "ctrl+r", "ctrl+r")  # three boxes left, all the model's
        await generate(pilot, 4)
        assert len(screen.cards) == 4 and all(c.text.startswith("Sample ") for c in screen.cards)
        await scored(pilot)
        assert app.is_running and all(c.judgement is not None for c in screen.cards)


@pytest.mark.asyncio
async def test_generating_never_replaces_what_a_person_typed(tmp_path):
    """Samples go to empty boxes and to boxes holding the model's earlier samples unchanged; typed
    text, and a sample a person edited, stay where they are."""
    app = make_app(tmp_path, FakeEngine())
    async with app.run_test(size=LARGE) as pilot:
        screen = app.screen
        await fill(pilot, "Name a colour.", "Blue, I typed it.")
        await generate(pilot, 2)
        texts = [c.text for c in screen.cards]
        assert texts[0] == "Blue, I typed it." and texts[1].startswith("Sample 0") and texts[2].startswith("Sample 1")
        assert texts[3] == ""

        screen.query_one("#gen-seed").value = "10"
        await generate(pilot, 2)  # again: the model's own samples are re-drawn in place
        texts = [c.text for c in screen.cards]
        assert texts[0] == "Blue, I typed it." and texts[1].startswith("Sample 10") and texts[2].startswith("Sample 11")

        screen.cards[1].editor.load_text("Sample 10, edited by hand.")
        screen.query_one("#gen-seed").value = "20"
        await generate(pilot, 3)  # boxes 3 and 4 take two samples, a new fifth box the third
        texts = [c.text for c in screen.cards]
        assert texts[:2] == ["Blue, I typed it.", "Sample 10, edited by hand."]
        assert [t.split(":")[0] for t in texts[2:]] == ["Sample 20", "Sample 21", "Sample 22"]


@pytest.mark.asyncio
async def test_the_footer_says_stop_while_generating(tmp_path):
    app = make_app(tmp_path, FakeEngine())
    async with app.run_test(size=SMALL):
        screen = app.screen
        shown = lambda: {b.description for _, b, enabled, _ in screen.active_bindings.values() if b.show and enabled}  # noqa: E731
        assert "Generate" in shown() and "Stop" not in shown()
        screen.generating = True
        screen.refresh_bindings()
        assert "Stop" in shown() and "Generate" not in shown()


# --- saving ---------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_saving_the_same_pair_twice_writes_it_once(tmp_path):
    app = make_app(tmp_path, FakeEngine())
    async with app.run_test(size=LARGE) as pilot:
        screen = app.screen
        await fill(pilot, "Say hi.", "hello", "bye")
        await pilot.press("ctrl+s")
        assert "saved pair #" in status(screen)
        await pilot.press("ctrl+s")
        assert "already saved as pair #" in status(screen)
    store = Store(tmp_path / "ws.sqlite")
    assert len(store.pairs()) == 1 and len(store.prompts("lab")) == 1


@pytest.mark.asyncio
async def test_saving_after_a_change_updates_the_pair(tmp_path):
    """Needs the core's save_scored_pair to return (pair_id, created) and update a lab pair in place."""
    app = make_app(tmp_path, FakeEngine())
    async with app.run_test(size=LARGE) as pilot:
        screen = app.screen
        await fill(pilot, "Say hi.", "hello", "bye")
        await pilot.press("ctrl+s")
        pair_id = screen.saved[1]
        screen.cards[1].editor.load_text("goodbye, then")
        await scored(pilot)
        await pilot.press("ctrl+s")
        assert f"updated pair #{pair_id}" in status(screen)
    store = Store(tmp_path / "ws.sqlite")
    [pair] = store.pairs()
    assert pair["id"] == pair_id and "goodbye, then" in (pair["chosen"], pair["rejected"])


# --- templates ------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_template_edits_are_the_labs_own(tmp_path):
    """An edit changes how the lab scores, never the app's judge (Evaluation and Pairs use it); an
    invalid edit marks the scores stale and saves nothing; ctrl+l goes back to the loaded judge's."""
    app = make_app(tmp_path, FakeEngine())
    async with app.run_test(size=LARGE) as pilot:
        screen = app.screen
        judge, loaded_id = app.judge, app.judge.id
        await fill(pilot, "Say hi.", "hello", "bye")
        before = [c.judgement.score for c in screen.cards[:2]]

        version = screen.version
        screen.query_one("#tpl-user").load_text("Request: {instruction}\nReply: {response}\nGood? Yes or No.")
        await scored(pilot, version)
        assert app.judge is judge and app.judge.id == loaded_id  # the other screens' judge is untouched
        assert screen.scored_judge.id != loaded_id  # the lab scores (and saves) under its own
        assert [c.judgement.score for c in screen.cards[:2]] != before
        assert "edited" in str(screen.query_one("#template-title").render())
        assert any(b.action == "reset_templates" for _, b, enabled, _ in screen.active_bindings.values() if enabled)

        screen.query_one("#tpl-user").load_text("Is this good? {response}")  # no {instruction}
        await wait_for(pilot, lambda: all("stale" in str(c.bar.render()) for c in screen.cards[:2]))
        await pilot.press("ctrl+s")
        assert "template is invalid" in status(screen)

        await pilot.press("ctrl+l")
        await scored(pilot)
        assert not screen.edits and screen.scored_judge is app.judge
        assert screen.query_one("#tpl-user").text == app.judge.template_for(screen.category()).user
        assert [c.judgement.score for c in screen.cards[:2]] == before
        assert not any("stale" in str(c.bar.render()) for c in screen.cards[:2])
    assert Store(tmp_path / "ws.sqlite").pairs() == []


@pytest.mark.asyncio
async def test_one_candidate_is_singular(tmp_path):
    app = make_app(tmp_path, FakeEngine())
    async with app.run_test(size=LARGE) as pilot:
        await fill(pilot, "Say hi.", "hello")
        assert "scored 1 candidate ·" in status(app.screen)


# --- the app shell: crashes, loading, the footer at 80x24 -------------------------------------------


def test_an_exception_in_the_app_exits_1_with_its_traceback_in_the_crash_log(tmp_path, monkeypatch, capsys):
    """`run` (what `ipo tui` calls) on a headless app whose key handler raises: status 1, one line
    on stderr naming the crash log, and the traceback in it."""
    from textual.app import App

    from ipo_tui.supervisor import crash_log
    from ipo_tui.tui import app as app_module
    from ipo_tui.tui.screens.lab import LabScreen

    def broken(self) -> None:
        raise RuntimeError("a bug in a key's handler")

    async def press(pilot) -> None:
        await pilot.press("ctrl+t")

    monkeypatch.setattr(LabScreen, "action_cycle_category", broken)
    monkeypatch.setattr(IpoApp, "run", lambda self: App.run(self, headless=True, size=SMALL, auto_pilot=press))
    with pytest.raises(SystemExit) as stopped:
        app_module.run(workspace=tmp_path / "ws.sqlite", engine=FakeEngine())
    assert stopped.value.code == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "RuntimeError: a bug in a key's handler" in line and str(crash_log()) in line
    log = crash_log().read_text()
    assert "Traceback" in log and "in broken" in log and "RuntimeError: a bug in a key's handler" in log


@pytest.mark.asyncio
async def test_the_app_loads_a_gguf_on_llamacpp_as_the_cli_does_and_says_it_is_loading(tmp_path, monkeypatch):
    """No backend named: the embedded GGUF goes to llama.cpp (the CLI's rule), and while it loads
    the lab's status says so."""
    from ipo_tui import backends

    release, asked = threading.Event(), []

    def load(name, ref, **options):
        asked.append(name)
        release.wait(30)
        return FakeEngine()

    monkeypatch.setattr(backends, "load", load)
    app = IpoApp(workspace=tmp_path / "ws.sqlite", eval_file="", browse_root=tmp_path)
    async with app.run_test(size=LARGE) as pilot:
        await wait_for(pilot, lambda: asked)
        await pilot.pause()
        assert asked == ["llamacpp"] and "loading the model" in status(app.screen)
        release.set()
        await wait_for(pilot, lambda: app.engine_state == "ready")
        await pilot.pause()
        assert "loading" not in status(app.screen)
        await pilot.press("f2")
        assert app.screen.query_one("#backend").pressed_button.id == "backend-llamacpp"


def footer_keys(screen) -> dict[str, object]:
    """The footer's keys by their key name, with their place on the screen."""
    from textual.widgets._footer import FooterKey

    return {key.key: key.region for key in screen.query(FooterKey)}


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["model", "lab", "pairs", "eval", "train", "runs"])
async def test_f1_help_is_in_every_footer_at_80x24(tmp_path, mode):
    """Every screen's bindings start with F1 Help (only a focused widget's own come before it)."""
    app = make_app(tmp_path, FakeEngine(), start=mode)
    async with app.run_test(size=SMALL) as pilot:
        await pilot.pause()
        f1 = footer_keys(app.screen)["f1"]
        assert f1.width and f1.right <= SMALL[0]


@pytest.mark.asyncio
@pytest.mark.parametrize("size", [SMALL, LARGE])
async def test_the_lab_and_model_screens_fit(tmp_path, size):
    """Every footer key of the lab and the Model screen is on screen; the Model screen's Load button
    and Loaded panel are visible without scrolling; a score line takes one line."""
    app = make_app(tmp_path, FakeEngine(), start="model")
    async with app.run_test(size=size) as pilot:
        await pilot.pause()
        screen = app.screen
        assert all(region.right <= size[0] for region in footer_keys(screen).values())
        body = screen.query_one("#model-right").region
        for selector in ("#load", "#loaded"):
            region = screen.query_one(selector).region
            assert region.height and body.contains_region(region), selector
        assert screen.query_one("#loaded").region.height >= 4  # model, engine, context, train
        await pilot.press("f3")
        lab = app.screen
        assert {"ctrl+g", "ctrl+s", "ctrl+n", "ctrl+r"} <= set(footer_keys(lab))
        assert all(region.right <= size[0] for region in footer_keys(lab).values())
        await fill(pilot, "What is 12 + 30?", "42", "12 + 30 = 52")
        assert lab.cards[0].bar.region.height == 1 and "p'yes" in str(lab.cards[0].bar.render())


@pytest.mark.asyncio
@pytest.mark.parametrize("mode", ["lab", "model"])
async def test_help_names_every_key_of_the_screen(tmp_path, mode):
    app = make_app(tmp_path, FakeEngine(), start=mode)
    async with app.run_test(size=SMALL) as pilot:
        screen = app.screen
        keys = {b.key for b in screen.BINDINGS if b.key != "f1"}
        await pilot.press("f1")
        text = app.screen.query_one("#help-text").source
        assert all(f"`{key}`" in text for key in keys), keys
        box = app.screen.query_one("#help-box").region
        assert box.right <= SMALL[0] and box.bottom <= SMALL[1]


# --- the Model screen -------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_browse_goes_up_to_the_parent_folder(tmp_path):
    inner = tmp_path / "models" / "inner"
    inner.mkdir(parents=True)
    app = make_app(tmp_path, FakeEngine(), start="model")
    async with app.run_test(size=SMALL) as pilot:
        app.screen.query_one("#model-path").value = str(inner / "x.gguf")
        await pilot.press("ctrl+o")
        browse = app.screen
        tree = browse.query_one("#browse-tree")
        assert tree.path == inner
        await pilot.press("backspace")
        await pilot.pause()
        assert tree.path == inner.parent and str(inner.parent) in str(browse.query_one("#browse-note").render())
        await pilot.press("escape")


def test_docs_app_lists_the_keys_that_f1_shows():
    """docs/app.md says what the app's help says, screen by screen; regenerate its key tables with
    `python -c "from ipo_tui.tui.app import keys_markdown; print(keys_markdown())"`."""
    from pathlib import Path

    from ipo_tui.tui.app import keys_markdown

    doc = Path(__file__).resolve().parents[1] / "docs" / "app.md"
    assert keys_markdown() in doc.read_text(), f"{doc} is behind the app's F1 help: regenerate its key tables"
