"""The Pairs screen (F4) and its pair detail, driven by Pilot on the fake engine: curation that keeps
the person's intent (the highlighted row, undo, back to proposed, confirmations), what a swap and an
edit show, what export takes, and both at 80x24."""

from __future__ import annotations

import json

import pytest
from test_app_support import FakeEngine, judgement, seed_pairs, wait_for

from ipo_tui.tui.app import IpoApp
from ipo_tui.tui.screens.pairs import ConfirmScreen, ExportScreen, PairScreen, PairsScreen, judge_name
from ipo_tui.workspace.store import TRAINED_STATUSES, Store

SIZE = (120, 40)
SMALL = (80, 24)


def make_app(tmp_path) -> IpoApp:
    app = IpoApp(workspace=tmp_path / "ws.sqlite", engine=FakeEngine(), eval_file="", browse_root=tmp_path,
                 start="pairs")
    app.animation_level = "none"
    return app


def pair(store, pair_id: int):
    return next(r for r in store.pairs() if r["id"] == pair_id)


def cell(screen, pair_id: int, key: str) -> str:
    return str(screen.query_one("#pairs-table").get_cell(str(pair_id), key))


def status_line(screen) -> str:
    return str(screen.query_one("#status").render())


def seed_routed_pair(store, judge_id: str) -> int:
    """A pair whose prompt file says 'writing' while the judge routed it to 'chat'; its id."""
    store.add_prompt_set("essays", "tests", [{"text": "Write two lines on rain.", "category": "writing"}])
    [prompt] = store.prompts("essays")
    store.add_candidates(prompt["id"], judge_id, "", {}, [(0, 0, "Rain taps the roof."), (1, 1, "Rain is wet.")])
    ids = [r["id"] for r in store.candidates(prompt["id"])]
    judged = judgement("Rain taps the roof.", 0.8), judgement("Rain is wet.", 0.3)
    store.add_judgements(judge_id, list(zip(ids, judged)))
    store.propose_pair(prompt["id"], judge_id, ids[0], ids[1], judged[0].score - judged[1].score, category="chat")
    return next(r["id"] for r in store.pairs() if r["prompt"] == "Write two lines on rain.")


async def open_detail(pilot, pair_id: int) -> PairScreen:
    screen = pilot.app.screen
    table = screen.query_one("#pairs-table")
    table.move_cursor(row=table.get_row_index(str(pair_id)), animate=False)
    await pilot.press("enter")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, PairScreen))
    return pilot.app.screen


async def answer(pilot, key: str) -> None:
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
    await pilot.press(key)
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, PairsScreen))


# --- the highlighted row ------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_accept_down_reject_curates_the_rows_the_cursor_shows(tmp_path):
    """`a` moves on to the pair that was below, even where the 'proposed' filter hides the accepted
    pair (the cursor used to jump to the top: `a`, Down, `r` rejected the wrong pair)."""
    ids = seed_pairs(Store(tmp_path / "ws.sqlite"))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen, store = app.screen, app.store
        screen.query_one("#status-filter").value = "proposed"
        await wait_for(pilot, lambda: screen.query_one("#status-filter").value == "proposed")
        await pilot.press("down", "down")
        assert screen.current_id() == ids[2]
        await pilot.press("a")
        assert screen.current_id() == ids[3]  # the next pair, now where the accepted one was
        await pilot.press("down", "r")
        assert {r["id"]: r["status"] for r in store.pairs()} == {
            ids[0]: "proposed", ids[1]: "proposed", ids[2]: "accepted", ids[3]: "proposed", ids[4]: "rejected"}

        assert screen.current_id() == ids[3]  # the rejected pair was the last row: the cursor stays on the last
        await pilot.press("a")
        assert screen.current_id() == ids[1] and [r["id"] for r in screen.rows] == ids[:2]


@pytest.mark.asyncio
async def test_accept_moves_on_to_the_pair_below_when_the_sort_moves_it(tmp_path):
    ids = seed_pairs(Store(tmp_path / "ws.sqlite"))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        screen.sort_key = "status"
        screen.reload()
        await pilot.press("down")  # the second pair; accepting it sorts it first
        assert screen.current_id() == ids[1]
        await pilot.press("a")
        assert screen.rows[0]["id"] == ids[1] and screen.current_id() == ids[2]


# --- what a swap and an edit show ---------------------------------------------------------------


@pytest.mark.asyncio
async def test_swap_shows_edited_swap_with_the_judges_negative_margin(tmp_path):
    ids = seed_pairs(Store(tmp_path / "ws.sqlite"))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        before = pair(app.store, ids[0])
        await pilot.press("s")
        assert cell(screen, ids[0], "status") == "edited (swap)"
        assert cell(screen, ids[0], "margin") == f"{-before['margin']:+.2f}"
        assert screen.current_id() == ids[0]  # a swap stays on its pair
        detail = await open_detail(pilot, ids[0])
        title = str(detail.query_one("#pair-title").render())
        assert "edited (swap): you overruled the judge" in title and f"margin {-before['margin']:+.2f}" in title


@pytest.mark.asyncio
async def test_edit_rescored_by_the_pairs_judge_keeps_its_category(tmp_path):
    app = make_app(tmp_path)
    pair_id = seed_routed_pair(Store(tmp_path / "ws.sqlite"), app.judge.id)
    async with app.run_test(size=SIZE) as pilot:
        detail = await open_detail(pilot, pair_id)
        await pilot.press("e")
        assert "ctrl+s save and re-score" in str(detail.query_one("#pair-keys").render())
        detail.query_one("#rejected-text").load_text("Rain falls; nothing more.")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not detail.editing)
        edited = pair(app.store, pair_id)
        rescored = app.judge.score(edited["prompt"], [edited["chosen"], edited["rejected"]], "chat")
        assert edited["score_rejected"] == pytest.approx(rescored[1].score, abs=1e-4)
        assert edited["margin"] == pytest.approx(edited["score_chosen"] - edited["score_rejected"])
        title = str(detail.query_one("#pair-title").render())
        assert f"margin {edited['margin']:+.2f} · chat" in title
        assert "saved and re-scored" in str(detail.query_one("#pair-note").render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, PairsScreen))
        assert cell(app.screen, pair_id, "category") == "chat"
        assert cell(app.screen, pair_id, "margin") == f"{edited['margin']:+.2f}"


@pytest.mark.asyncio
async def test_edit_another_judge_cannot_score_reads_unknown(tmp_path):
    """The loaded model did not propose the pair: the edit is saved unscored, its side and the margin
    read "—" (the old margin used to stay) and the category stays the judge's, not the file's."""
    pair_id = seed_routed_pair(Store(tmp_path / "ws.sqlite"), "another-judge")
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        detail = await open_detail(pilot, pair_id)
        await pilot.press("e")
        assert "not re-scored (the loaded judge did not propose this pair)" in str(detail.query_one("#pair-keys").render())
        detail.query_one("#chosen-text").load_text("Rain on the roof, a drum for the night.")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not detail.editing)
        assert "margin — · chat" in str(detail.query_one("#pair-title").render())
        assert str(detail.query_one("#chosen-label").render()).endswith("p'yes —")
        assert "a accept" in str(detail.query_one("#pair-keys").render())  # the keys say what works again
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, PairsScreen))
        assert [cell(app.screen, pair_id, k) for k in ("status", "category", "margin")] == ["edited (edit)", "chat", "—"]


@pytest.mark.asyncio
async def test_detail_names_the_judge_as_the_app_names_the_model(tmp_path):
    app = make_app(tmp_path)
    pair_id = seed_routed_pair(Store(tmp_path / "ws.sqlite"), app.judge.id)
    async with app.run_test(size=SIZE) as pilot:
        detail = await open_detail(pilot, pair_id)
        title = str(detail.query_one("#pair-title").render())
        assert title.endswith(f"judge {app.engine.ref.name}") and ".gguf" not in title


def test_judge_name_uses_model_names():
    assert judge_name("SmolLM2-135M-Instruct.Q4_1.gguf", None) == "SmolLM2-135M-Instruct (embedded)"
    assert judge_name("/models/qwen.gguf+runs/dpo-001/adapter#1a2b3c", None) == "qwen.gguf + adapter #1a2b3c"
    assert judge_name("/models/qwen.gguf@SmolLM2-135M-Instruct.Q4_1.gguf", None) == \
        "qwen.gguf judging SmolLM2-135M-Instruct (embedded)"


# --- undo, back to proposed, confirmations ------------------------------------------------------


@pytest.mark.asyncio
async def test_undo_and_back_to_proposed(tmp_path):
    ids = seed_pairs(Store(tmp_path / "ws.sqlite"))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen, store = app.screen, app.store
        judges_pair = pair(store, ids[1])
        await pilot.press("a", "s")  # accept the first, swap the second
        assert [pair(store, i)["status"] for i in ids[:2]] == ["accepted", "edited"]
        await pilot.press("u")
        assert "undid the swap" in status_line(screen)
        assert pair(store, ids[1])["chosen"] == judges_pair["chosen"] and cell(screen, ids[1], "status") == "proposed"
        await pilot.press("u")
        assert "undid the accept" in status_line(screen) and pair(store, ids[0])["status"] == "proposed"
        await pilot.press("u")
        assert "nothing to undo" in status_line(screen)

        await pilot.press("s", "p")  # swap, then back to proposed: the judge's own pair again
        reset = pair(store, ids[1])
        assert (reset["status"], reset["chosen"], reset["margin"]) == ("proposed", judges_pair["chosen"],
                                                                        judges_pair["margin"])
        assert "back to proposed" in status_line(screen)

        detail = await open_detail(pilot, ids[2])
        await pilot.press("r")
        assert pair(store, ids[2])["status"] == "rejected"
        await pilot.press("u")
        assert pair(store, ids[2])["status"] == "proposed"
        assert "undid the reject" in str(detail.query_one("#pair-note").render())
        assert "proposed" in str(detail.query_one("#pair-title").render())


@pytest.mark.asyncio
async def test_bulk_accept_asks_first_and_undoes_as_a_whole(tmp_path):
    seed_pairs(Store(tmp_path / "ws.sqlite"))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen, store = app.screen, app.store
        screen.query_one("#bulk-margin").value = "1"
        await pilot.press("b")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Accept 3 shown proposed pairs with margin ≥ 1" in str(app.screen.query_one("#confirm-question").render())
        await answer(pilot, "n")
        assert not store.pairs(("accepted",)) and "cancelled" in status_line(screen)
        await pilot.press("b")
        await answer(pilot, "y")
        accepted = store.pairs(("accepted",))
        assert len(accepted) == 3 and min(r["margin"] for r in accepted) >= 1
        await pilot.press("u")
        assert not store.pairs(("accepted",)) and "undid the bulk accept of 3 pairs" in status_line(screen)


@pytest.mark.asyncio
async def test_export_takes_what_trains_and_asks_before_overwriting(tmp_path, monkeypatch):
    ids = seed_pairs(Store(tmp_path / "ws.sqlite"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "pairs.jsonl"
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.press("a", "s")  # one accepted, one swapped (edited), three proposed
        assert "2 train (accepted + edited)" in status_line(screen)

        async def export(statuses=None) -> None:
            await pilot.press("x")
            await wait_for(pilot, lambda: isinstance(app.screen, ExportScreen))
            if statuses:
                app.screen.query_one("#export-statuses").value = statuses
            await pilot.press("enter")

        await export()
        await wait_for(pilot, lambda: out.is_file())
        assert [json.loads(line)["prompt"] for line in out.read_text().splitlines()] == \
            [pair(app.store, i)["prompt"] for i in ids[:2]]
        await export(("proposed", *TRAINED_STATUSES))
        await answer(pilot, "n")  # the file is there: keep it
        assert len(out.read_text().splitlines()) == 2 and "left as it was" in status_line(screen)
        await export(("proposed", *TRAINED_STATUSES))
        await answer(pilot, "y")
        assert len(out.read_text().splitlines()) == 5


# --- 80x24 --------------------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_table_and_detail_fit_80x24(tmp_path):
    store = Store(tmp_path / "ws.sqlite")
    seed_pairs(store)
    long_id = seed_routed_pair(store, "another-judge")
    store.edit_pair(long_id, chosen="Rain on the roof. " * 80, rejected="Rain is wet.\n" * 40)
    app = make_app(tmp_path)
    async with app.run_test(size=SMALL) as pilot:
        screen = app.screen
        table = screen.query_one("#pairs-table")
        widths = {str(key.value): column.width for key, column in table.columns.items()}
        assert {"prompt", "chosen", "rejected"} <= set(widths) and min(widths[k] for k in ("prompt", "chosen", "rejected")) >= 10
        assert sum(w + 2 for w in widths.values()) <= SMALL[0]  # no column off to the right
        assert screen.query_one("#search").region.width >= 12

        detail = await open_detail(pilot, long_id)
        screen_region = detail.region
        for part in ("#pair-title", "#chosen-text", "#rejected-text", "#pair-keys"):
            region = detail.query_one(part).region
            assert region.height and screen_region.contains_region(region), part
        assert "u undo" in str(detail.query_one("#pair-keys").render())


@pytest.mark.asyncio
async def test_footer_and_help_say_what_the_keys_do(tmp_path):
    seed_pairs(Store(tmp_path / "ws.sqlite"))
    app = make_app(tmp_path)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        shown = {b.key: b.description for b in screen.BINDINGS if b.show}
        assert shown["a"] == "Accept ↓" and shown["r"] == "Reject ↓"  # fast curation: on to the next pair
        for binding in screen.BINDINGS:
            if binding.key not in ("escape", "slash", "enter"):
                assert f"`{binding.key}`" in screen.HELP, binding.key
        detail = await open_detail(pilot, screen.rows[0]["id"])
        keys = str(detail.query_one("#pair-keys").render())
        for binding in detail.BINDINGS:
            if binding.show:
                assert f"{binding.key} " in keys, binding.key


@pytest.mark.asyncio
async def test_curating_far_down_a_long_list_keeps_the_view_where_it_was(tmp_path):
    """The table is refilled after each action: the view used to jump back to the top, leaving the
    next pair at the bottom edge."""
    store = Store(tmp_path / "ws.sqlite")
    store.add_prompt_set("long", "tests", [{"text": f"Question {i}?"} for i in range(60)])
    for prompt in store.prompts("long"):
        store.add_candidates(prompt["id"], "fake-model", "", {}, [(0, 0, "good"), (1, 1, "bad")])
        good, bad = store.candidates(prompt["id"])
        store.add_judgements("fake-model", [(good["id"], judgement("good", 0.7, "chat")),
                                            (bad["id"], judgement("bad", 0.3, "chat"))])
        store.propose_pair(prompt["id"], "fake-model", good["id"], bad["id"], 2.0, "chat")
    store.close()
    async with make_app(tmp_path).run_test(size=SMALL) as pilot:
        screen = pilot.app.screen
        table = screen.query_one("DataTable")
        screen.query_one("#status-filter").value = "proposed"  # how a curator works: the accepted pair leaves
        await pilot.pause()
        table.focus()
        table.move_cursor(row=40)
        await wait_for(pilot, lambda: table.scroll_y > 20)
        before = table.scroll_y
        await pilot.press("a")
        await wait_for(pilot, lambda: table.row_count == 59)
        await pilot.pause()
        assert table.cursor_row == 40 and table.scroll_y >= before - 1  # the view stays on the next pair
