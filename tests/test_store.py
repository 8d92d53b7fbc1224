"""The workspace: migrations, all-or-nothing imports, curated pairs kept, exports; opened at once by
several processes, read-only, full, damaged or foreign."""

import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from contextlib import closing
from pathlib import Path

import pytest

from ipo_tui.errors import IpoError
from ipo_tui.judge.scoring import Judgement
from ipo_tui.loop.stages import Policy, build_pairs
from ipo_tui.workspace.records import load_prompts, pair_records, write_records
from ipo_tui.workspace.store import MIGRATIONS, Store, _tables


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "ws.sqlite")
    yield s
    s.close()


def _judgement(score):
    return Judgement(response="", score=score, mass=0.3, category="chat", template="chat", low_mass=False)


def test_new_workspace_is_migrated_and_in_wal_mode(store):
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert store.db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    Store(store.path).close()  # reopening applies nothing twice


def test_not_a_workspace(tmp_path):
    bogus = tmp_path / "notes.sqlite"
    bogus.write_text("hello, this is not a database file at all" * 10)
    with pytest.raises(IpoError, match="not an ipo workspace"):
        Store(bogus)


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet"])
def test_import_formats(tmp_path, store, suffix):
    rows = [{"question": "What is 2+2?", "kind": "math"}, {"question": "Say hi.", "kind": ""}]
    path = tmp_path / f"p.{suffix}"
    if suffix == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == "json":
        path.write_text(json.dumps(rows))
    elif suffix == "csv":
        path.write_text("question,kind\nWhat is 2+2?,math\nSay hi.,\n")
    else:
        write_records(path, rows)
    prompts = load_prompts(str(path), "question", "kind")
    store.add_prompt_set("s", str(path), prompts)
    stored = store.prompts("s")
    assert [(p["text"], p["category"]) for p in stored] == [("What is 2+2?", "math"), ("Say hi.", None)]


def test_malformed_import_names_line_and_field_and_stores_nothing(tmp_path, store):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "ok"}) + "\n" + json.dumps({"prompt": "fine"}) + "\n" + json.dumps({"text": "x"}) + "\n")
    with pytest.raises(IpoError, match=r"bad.jsonl line 3: field 'prompt' is missing"):
        store.add_prompt_set("s", str(path), load_prompts(str(path)))
    assert store.prompt_sets() == []
    with pytest.raises(IpoError, match="no prompt set named 's'"):
        store.prompts("s")


def test_failed_write_rolls_back(store):
    store.add_prompt_set("s", "test", [{"text": "a"}])
    with pytest.raises(sqlite3.IntegrityError):
        store.add_candidates(999, "m", "", {}, [(0, 0, "x")])  # no such prompt
    assert store.db.execute("SELECT COUNT(*) FROM candidates").fetchone()[0] == 0


def test_pairs_policy_and_curation(store):
    store.add_prompt_set("s", "test", [{"text": "q1"}, {"text": "q2"}, {"text": "q3"}])
    policy = Policy("m")
    scores = {"q1": [0.2, 0.9, 0.5], "q2": [0.4, 0.4, 0.4], "q3": [0.7]}
    for prompt in store.prompts("s"):
        values = scores[prompt["text"]]
        store.add_candidates(prompt["id"], "m", "", {}, [(i, i, f"{prompt['text']}-a{i}") for i in range(len(values))])
        cands = store.candidates(prompt["id"])
        store.add_judgements("m", [(c["id"], _judgement(v)) for c, v in zip(cands, values)])
    report = build_pairs(store, "m", policy, store.prompts("s"), min_margin=0.1)
    assert (report.proposed, report.too_close, report.too_few) == (1, 1, 1)
    [pair] = store.pairs()
    assert (pair["chosen"], pair["rejected"]) == ("q1-a1", "q1-a0")
    assert pair["margin"] == pytest.approx(0.7) and pair["score_chosen"] == pytest.approx(0.9)

    store.set_pair_status(pair["id"], "accepted")
    build_pairs(store, "m", policy, store.prompts("s"), min_margin=0.0)  # a rebuild keeps the curated pair
    assert [p["status"] for p in store.pairs(("accepted",))] == ["accepted"]
    with pytest.raises(IpoError, match="accepted or rejected, not 'maybe'"):
        store.set_pair_status(pair["id"], "maybe")

    trl = pair_records(store.pairs(("accepted",)), "trl")
    assert trl == [{"prompt": "q1", "chosen": "q1-a1", "rejected": "q1-a0", "score_chosen": pytest.approx(0.9),
                    "score_rejected": pytest.approx(0.2), "category": "chat"}]
    conv = pair_records(store.pairs(("accepted",)), "trl", conversational=True)[0]
    assert conv["prompt"] == [{"role": "user", "content": "q1"}] and conv["chosen"][0]["role"] == "assistant"
    assert pair_records(store.pairs(("accepted",)), "llamafactory")[0]["instruction"] == "q1"


def test_swap_and_edit_keep_the_sampled_texts(store):
    store.add_prompt_set("s", "test", [{"text": "q"}])
    [prompt] = store.prompts("s")
    store.add_candidates(prompt["id"], "m", "", {}, [(0, 0, "good"), (1, 1, "bad")])
    good, bad = store.candidates(prompt["id"])
    store.add_judgements("m", [(good["id"], _judgement(0.8)), (bad["id"], _judgement(0.3))])
    store.propose_pair(prompt["id"], "m", good["id"], bad["id"], 0.5)
    [pair] = store.pairs()

    store.swap_pair(pair["id"])
    [swapped] = store.pairs()
    assert (swapped["chosen"], swapped["rejected"], swapped["status"]) == ("bad", "good", "edited")
    assert swapped["margin"] == pytest.approx(-0.5)

    store.edit_pair(pair["id"], chosen="better", judgements={"chosen": _judgement(0.95)})
    [edited] = store.pairs()
    assert (edited["chosen"], edited["rejected"]) == ("better", "good")
    assert edited["margin"] == pytest.approx(0.15) and edited["score_chosen"] == pytest.approx(0.95)
    assert {c["text"] for c in store.candidates(prompt["id"])} == {"good", "bad", "better"}
    with pytest.raises(IpoError, match="empty"):
        store.edit_pair(pair["id"], rejected="  ")
    assert store.pairs()[0]["rejected"] == "good"
    with pytest.raises(IpoError, match="no pair"):
        store.swap_pair(999)


def _one_pair(store, category="code"):
    store.add_prompt_set("s", "test", [{"text": "Write a poem.", "category": "writing"}])
    [prompt] = store.prompts("s")
    store.add_candidates(prompt["id"], "m", "", {}, [(0, 0, "good"), (1, 1, "bad")])
    good, bad = store.candidates(prompt["id"])
    store.add_judgements("m", [(good["id"], _judgement(0.8)), (bad["id"], _judgement(0.3))])
    store.propose_pair(prompt["id"], "m", good["id"], bad["id"], 0.5, category)
    return store.pairs()[0]


def test_an_edit_keeps_the_judges_category_and_an_unscored_side_makes_the_margin_unknown(store):
    pair = _one_pair(store)
    store.edit_pair(pair["id"], chosen="better, but not scored")
    [edited] = store.pairs()
    assert (edited["status"], edited["curation"], edited["category"]) == ("edited", "edit", "code")
    assert edited["margin"] is None and edited["score_chosen"] is None  # never the old margin beside a new text


def test_accepting_a_swapped_pair_keeps_the_swap_on_record(store):
    pair = _one_pair(store)
    store.swap_pair(pair["id"])
    store.set_pair_status(pair["id"], "accepted")
    [row] = store.pairs()
    assert (row["status"], row["curation"], row["chosen"]) == ("edited", "swap", "bad")
    store.set_pair_status(pair["id"], "rejected")
    assert (store.pairs()[0]["status"], store.pairs()[0]["curation"]) == ("rejected", "reject")


def test_back_to_proposed_restores_the_judges_pair_and_undo_takes_back_each_action(store):
    pair = _one_pair(store)
    store.swap_pair(pair["id"])
    store.edit_pair(pair["id"], rejected="worse", judgements={"rejected": _judgement(0.1)})
    store.reset_pairs([pair["id"]])
    [row] = store.pairs()
    assert (row["status"], row["curation"], row["chosen"], row["rejected"]) == ("proposed", None, "good", "bad")
    assert row["margin"] == pytest.approx(0.5)

    assert store.undo_curation() == f"undid the back to proposed of pair {pair['id']}"
    assert (store.pairs()[0]["chosen"], store.pairs()[0]["rejected"], store.pairs()[0]["curation"]) == ("bad", "worse", "edit")
    assert store.undo_curation() == f"undid the edit of pair {pair['id']}"
    assert (store.pairs()[0]["rejected"], store.pairs()[0]["margin"]) == ("good", pytest.approx(-0.5))
    assert store.undo_curation() == f"undid the swap of pair {pair['id']}"
    assert (store.pairs()[0]["status"], store.pairs()[0]["chosen"]) == ("proposed", "good")
    assert store.undo_curation() is None


def test_a_bulk_accept_undoes_as_a_whole(store):
    store.add_prompt_set("s", "test", [{"text": "q1"}, {"text": "q2"}])
    for prompt in store.prompts("s"):
        store.add_candidates(prompt["id"], "m", "", {}, [(0, 0, "a"), (1, 1, "b")])
        a, b = store.candidates(prompt["id"])
        store.propose_pair(prompt["id"], "m", a["id"], b["id"], 0.8)
    ids = [p["id"] for p in store.pairs()]
    store.set_pair_status(ids[0], "rejected")
    store.set_pair_status(ids, "accepted", bulk=True)
    assert store.undo_curation() == "undid the bulk accept of 2 pairs"
    assert [p["status"] for p in store.pairs()] == ["rejected", "proposed"]


def test_a_lab_pair_saved_twice_is_one_pair(store):
    from ipo_tui.loop.stages import LAB_SET

    def save(best, worst):
        rows = [("typed", "", i, 0, text, _judgement(p)) for i, (text, p) in enumerate((("a", 0.9), ("b", 0.2), ("c", 0.5)))]
        return store.save_chosen_pair(LAB_SET, "Name a colour.", "chat", "m", {}, rows, best, worst, 0.7)

    first, created = save(0, 1)
    again, created_again = save(0, 2)  # the person's new pick for the same prompt replaces the old one
    assert created and not created_again and again == first
    [pair] = store.pairs(set_name=LAB_SET)
    assert (pair["chosen"], pair["rejected"], pair["status"]) == ("a", "c", "accepted")
    assert len(store.prompts(LAB_SET)) == 1 and len(store.candidates(pair["prompt_id"])) == 3


def test_bulk_curation_is_all_or_nothing(store):
    store.add_prompt_set("s", "test", [{"text": "q1"}, {"text": "q2"}])
    for prompt in store.prompts("s"):
        store.add_candidates(prompt["id"], "m", "", {}, [(0, 0, "a"), (1, 1, "b")])
        a, b = store.candidates(prompt["id"])
        store.add_judgements("m", [(a["id"], _judgement(0.9)), (b["id"], _judgement(0.1))])
        store.propose_pair(prompt["id"], "m", a["id"], b["id"], 0.8)
    ids = [p["id"] for p in store.pairs()]
    with pytest.raises(IpoError, match="no pair with id 999; nothing was changed"):
        store.set_pair_status([*ids, 999], "accepted")
    assert {p["status"] for p in store.pairs()} == {"proposed"}
    store.set_pair_status(ids, "accepted")
    assert {p["status"] for p in store.pairs()} == {"accepted"}


def test_prompts_added_one_at_a_time_join_one_set(store):
    first = store.add_prompt("lab", "Name a color.", "chat", source="score lab")
    second = store.add_prompt("lab", "What is 2 + 2?", "math")
    rows = store.prompts("lab")
    assert [(r["id"], r["position"], r["text"], r["category"]) for r in rows] == [
        (first, 0, "Name a color.", "chat"), (second, 1, "What is 2 + 2?", "math")]
    assert [(s["name"], s["source"], s["prompts"]) for s in store.prompt_sets()] == [("lab", "score lab", 2)]


def test_person_agreement_per_judge_and_category(store):
    from ipo_tui.evaluation.agreement import person_agreement

    store.add_prompt_set("s", "test", [{"text": f"q{i}"} for i in range(6)])
    ids = []
    for prompt in store.prompts("s"):
        store.add_candidates(prompt["id"], "m", "", {}, [(0, 0, "a"), (1, 1, "b")])
        a, b = store.candidates(prompt["id"])
        judge = "m#pmi" if prompt["position"] == 5 else "m"
        store.add_judgements(judge, [(a["id"], _judgement(0.9)), (b["id"], _judgement(0.1))],
                             {"categories": {"chat": {"templates": ["chat"], "pmi": 1.0}}} if judge != "m" else None)
        store.propose_pair(prompt["id"], judge, a["id"], b["id"], 0.8)
    ids = [p["id"] for p in store.pairs()]
    store.set_pair_status(ids[:2], "accepted")  # agreed twice
    store.swap_pair(ids[2])  # disagreed once
    store.set_pair_status(ids[3], "rejected")  # neither reply: not an order check
    store.set_pair_status(ids[4], "accepted", bulk=True)  # a bulk accept checks nothing
    store.set_pair_status(ids[5], "accepted")
    rows = {(a.judge, a.category): a for a in person_agreement(store)}
    plain = rows[("m", "chat")]
    assert (plain.accept, plain.swap, plain.reject, plain.checked) == (2, 1, 1, 3)
    assert plain.rate == pytest.approx(2 / 3) and plain.interval95[0] < 2 / 3 < plain.interval95[1]
    other = rows[("m#pmi", "chat")]
    assert other.accept == 1 and other.rate == 1.0 and "pmi 1" in other.settings and plain.settings == "plain recipe"


def test_a_schema_1_workspace_keeps_its_curation(tmp_path):
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + ";PRAGMA user_version=1;")
    db.execute("INSERT INTO prompt_sets (name, created_at) VALUES ('s', 'now')")
    db.execute("INSERT INTO prompts (set_id, position, text) VALUES (1, 0, 'q')")
    for i in (0, 1):
        db.execute("INSERT INTO candidates (prompt_id, text, model, sample_index, seed, sampling, created_at) "
                   f"VALUES (1, 't{i}', 'm', {i}, 0, '{{}}', 'now')")
    db.execute("INSERT INTO pairs (prompt_id, chosen_id, rejected_id, judge, margin, status, updated_at) "
               "VALUES (1, 1, 2, 'm', 0.5, 'accepted', 'now')")
    db.commit()
    db.close()
    store = Store(path)
    [pair] = store.pairs()
    assert pair["status"] == "accepted" and [r["curation"] for r in store.curation_counts()] == ["accept"]
    store.close()


def test_a_schema_3_workspace_reads_its_pair_margins_as_score_differences(tmp_path):
    """Before the score ordered judgements, a pair's margin was a p'yes difference: two fitted-setting
    answers at log-odds 40 and 38 both had p'yes 1.0 and margin 0. Opened now, every pair whose sides
    are judged gets its margin from their scores; a rule's margin (random's 0) stays."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(";".join(MIGRATIONS[:3]) + ";PRAGMA user_version=3;")
    db.execute("INSERT INTO prompt_sets (name, created_at) VALUES ('s', 'now')")
    db.execute("INSERT INTO prompts (set_id, position, text) VALUES (1, 0, 'q')")
    for i in range(4):
        db.execute("INSERT INTO candidates (prompt_id, text, model, sample_index, seed, sampling, created_at) "
                   f"VALUES (1, 't{i}', 'm', {i}, 0, '{{}}', 'now')")
    judged = [(1, "m#0123456789", "code+code-run", 1.0, 40.0), (2, "m#0123456789", "code+code-run", 1.0, 38.0),
              (3, "m", "chat", 0.7311, 1.0), (4, "m", "chat", 0.2689, -1.0)]
    db.executemany("INSERT INTO judgements (candidate_id, judge, template, category, p_yes, mass, logit_margin, "
                   "created_at) VALUES (?, ?, ?, 'code', ?, 0.5, ?, 'now')", judged)
    db.executemany("INSERT INTO pairs (prompt_id, chosen_id, rejected_id, judge, margin, status, updated_at) "
                   "VALUES (1, ?, ?, ?, ?, 'accepted', 'now')",
                   [(1, 2, "m#0123456789", 0.0), (3, 4, "m", 0.4622), (1, 3, "random#0:m", 0.0)])
    db.commit()
    db.close()
    store = Store(path)
    pairs = {r["judge"]: r for r in store.pairs()}
    assert pairs["m#0123456789"]["margin"] == pytest.approx(2.0) and pairs["m"]["margin"] == pytest.approx(2.0)
    assert pairs["random#0:m"]["margin"] == 0.0
    # p'yes is a probability only where the score is one template's own log-odds (the plain recipe's id)
    assert pairs["m"]["probability"] == 1 and pairs["m#0123456789"]["probability"] == 0
    assert [r["score"] for r in store.judgements(1, "m#0123456789", "m", "")][:2] == [40.0, 38.0]
    store.close()


def test_a_schema_4_workspace_keeps_its_pairs_and_can_take_back_a_swap(tmp_path):
    """Opened now, a pair remembers the judge's own proposal (a swapped one: the other way round) and the
    judge's category, so back to proposed and undo work on pairs curated before they existed."""
    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.executescript(";".join(MIGRATIONS[:4]) + ";PRAGMA user_version=4;")
    db.execute("INSERT INTO prompt_sets (name, created_at) VALUES ('s', 'now')")
    db.execute("INSERT INTO prompts (set_id, position, text, category) VALUES (1, 0, 'q', 'writing')")
    for i in range(2):
        db.execute("INSERT INTO candidates (prompt_id, text, model, sample_index, seed, sampling, created_at) "
                   f"VALUES (1, 't{i}', 'm', {i}, 0, '{{}}', 'now')")
    db.executemany("INSERT INTO judgements (candidate_id, judge, template, category, p_yes, mass, logit_margin, "
                   "created_at) VALUES (?, 'm', 'chat', 'chat', 0.5, 0.5, ?, 'now')", [(1, 1.0), (2, -1.0)])
    db.execute("INSERT INTO pairs (prompt_id, chosen_id, rejected_id, judge, margin, status, updated_at, curation) "
               "VALUES (1, 2, 1, 'm', -2.0, 'edited', 'now', 'swap')")
    db.commit()
    db.close()
    store = Store(path)
    [pair] = store.pairs()
    assert (pair["chosen"], pair["status"], pair["curation"], pair["category"]) == ("t1", "edited", "swap", "chat")
    store.reset_pairs(pair["id"])
    [pair] = store.pairs()
    assert (pair["chosen"], pair["rejected"], pair["status"], pair["margin"]) == ("t0", "t1", "proposed", 2.0)
    assert store.undo_curation() == f"undid the back to proposed of pair {pair['id']}"
    store.close()


# --- opened at once, read-only, full, damaged, foreign ------------------------------------------------------

_OPEN_WHEN_RELEASED = """
import os, sys
from ipo_tui.workspace.store import Store
print("ready", flush=True)
os.read(int(sys.argv[2]), 1)  # blocks until the test closes the pipe's other end: all start together
Store(sys.argv[1]).close()
"""


def test_processes_opening_a_new_workspace_at_once_all_succeed(tmp_path):
    path = tmp_path / "new.sqlite"
    gate, release = os.pipe()
    opens = [subprocess.Popen([sys.executable, "-c", _OPEN_WHEN_RELEASED, str(path), str(gate)], pass_fds=(gate,),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(6)]
    os.close(gate)
    try:
        assert [p.stdout.readline() for p in opens] == ["ready\n"] * 6
    finally:
        os.close(release)
    results = [(p.wait(timeout=120), p.stderr.read()) for p in opens]
    assert results == [(0, "")] * 6
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    assert tables == sorted(_tables(len(MIGRATIONS)))
    db.close()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unprivileged(folder: Path, action):
    """action() in a child process working in `folder`, which it may not write: root writes anything, so
    a root child first becomes nobody. Returns what action returns, or (exception name, message)."""
    ctx = multiprocessing.get_context("fork")
    receive, send = ctx.Pipe(duplex=False)

    def child():
        os.chdir(folder)
        try:
            if os.geteuid() == 0:
                os.setgid(65534)
                os.setuid(65534)
        except PermissionError as exc:
            send.send(("skip", f"cannot become nobody to make a read-only file ({exc})"))
            return
        try:
            send.send(action())
        except Exception as exc:
            send.send((type(exc).__name__, str(exc)))

    process = ctx.Process(target=child)
    process.start()
    send.close()  # a child that dies without sending ends recv() with EOFError
    result = receive.recv()
    process.join()
    if result[0] == "skip":
        pytest.skip(result[1])
    return result


@pytest.fixture
def read_only_folder():
    """A folder for a test to make read-only, in the system's temp folder: tmp_path's parents are private to
    the user, and a test run as root reads as nobody (sqlite opens a file by its absolute path)."""
    folder = Path(tempfile.mkdtemp(prefix="ipo-read-only-"))
    yield folder
    folder.chmod(0o755)
    shutil.rmtree(folder)


def _list_then_write():
    store = Store(Path("ws.sqlite"))
    names = [s["name"] for s in store.prompt_sets()]
    try:
        store.add_prompt("s", "another")
    except IpoError as exc:
        return names, store.read_only, str(exc)
    return names, store.read_only, "the write went through"


@pytest.mark.parametrize(("file_mode", "folder_mode"), [(0o444, 0o777), (0o666, 0o555), (0o444, 0o555)],
                         ids=["file read-only", "folder read-only", "both read-only"])
def test_a_read_only_workspace_lists_and_refuses_writes_in_one_line(read_only_folder, file_mode, folder_mode):
    path = read_only_folder / "ws.sqlite"
    store = Store(path)
    store.add_prompt_set("s", "test", [{"text": "q"}])
    store.close()
    path.chmod(file_mode)
    read_only_folder.chmod(folder_mode)
    before = _digest(path)
    names, read_only, error = _unprivileged(read_only_folder, _list_then_write)
    assert (names, read_only) == (["s"], True)
    assert error == ("ws.sqlite is read-only: this process may not write the file or its folder; "
                     "copy it somewhere writable or pass another --workspace")
    assert _digest(path) == before


def _open():
    Store(Path("ws.sqlite")).close()
    return "opened"


def test_a_read_only_workspace_of_an_older_schema_asks_to_be_opened_writable(read_only_folder):
    path = read_only_folder / "ws.sqlite"
    db = sqlite3.connect(path)
    db.executescript(MIGRATIONS[0] + ";PRAGMA user_version=1;")
    db.close()
    read_only_folder.chmod(0o555)
    before = _digest(path)
    name, message = _unprivileged(read_only_folder, _open)
    assert name == "IpoError" and message == (
        f"ws.sqlite is read-only and its schema (1) is older than this ipo-tui's ({len(MIGRATIONS)}): "
        "open it once where it can be written, so it is upgraded")
    assert _digest(path) == before


_WRITE_THEN_DIE = """
import os, sys
from ipo_tui.workspace.store import Store
store = Store(sys.argv[1])
store.db.execute("PRAGMA wal_autocheckpoint=0")
store.add_prompt_set("s", "test", [{"text": "q"}])
os._exit(0)  # killed: the prompt set is in the -wal only
"""


def test_a_read_only_folder_holding_unmerged_writes_says_so(read_only_folder):
    path = read_only_folder / "ws.sqlite"
    subprocess.run([sys.executable, "-c", _WRITE_THEN_DIE, str(path)], check=True)
    Path(f"{path}-shm").unlink()  # a copy of the file and its -wal only, say: sqlite would have to make a -shm
    read_only_folder.chmod(0o555)
    name, message = _unprivileged(read_only_folder, _open)
    assert name == "IpoError" and message == (
        "ws.sqlite is read-only and its last writes are still in ws.sqlite-wal, which sqlite cannot read in a "
        "read-only folder; open it once where it can be written")


def test_a_full_disk_is_one_line_and_keeps_the_earlier_data(store):
    store.add_prompt_set("kept", "test", [{"text": "q"}])
    pages = store.db.execute("PRAGMA page_count").fetchone()[0]
    store.db.execute(f"PRAGMA max_page_count={pages}")  # as full as a full disk: sqlite says SQLITE_FULL
    with pytest.raises(IpoError, match=r"ws.sqlite: the disk is full; nothing of this write was stored \(earlier "
                                       r"data is intact\); free space and run the command again$"):
        store.add_prompt_set("big", "test", [{"text": "x" * 2000} for _ in range(50)])
    assert not store.db.in_transaction
    reopened = Store(store.path)
    assert [(s["name"], s["prompts"]) for s in reopened.prompt_sets()] == [("kept", 1)]
    reopened.close()


def _workspace_with_prompts(path: Path) -> None:
    store = Store(path)
    store.add_prompt_set("s", "test", [{"text": f"prompt {i} " + "x" * 400} for i in range(2000)])
    store.close()  # the last connection merges the -wal into the file


def test_a_damaged_page_is_one_line_naming_the_recovery(tmp_path):
    path = tmp_path / "ws.sqlite"
    _workspace_with_prompts(path)
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    middle = len(data) // 2 // page_size * page_size  # the b-tree header of the page in the middle of the file
    data[middle:middle + 8] = bytes(8)
    path.write_bytes(data)
    with closing(sqlite3.connect(path)) as db, pytest.raises(sqlite3.DatabaseError, match="malformed"):
        db.execute("SELECT SUM(LENGTH(text)) FROM prompts").fetchone()  # what a command met before
    before = _digest(path)
    with pytest.raises(IpoError, match=r"ws.sqlite is damaged \(.+\); recover what is left with `sqlite3 .+ws.sqlite "
                                       r"\".recover\" \| sqlite3 .+ws-recovered.sqlite` .+, or restore a backup$"):
        Store(path)
    assert _digest(path) == before


def test_a_missing_table_is_damage(tmp_path):
    path = tmp_path / "ws.sqlite"
    Store(path).close()
    db = sqlite3.connect(path)
    db.execute("DROP TABLE judges")  # user_version stays
    db.close()
    before = _digest(path)
    with pytest.raises(IpoError, match=r"ws.sqlite is damaged \(table judges missing\); recover what is left"):
        Store(path)
    assert _digest(path) == before


@pytest.mark.parametrize("version", [0, 5])
def test_a_foreign_database_is_refused_unchanged(tmp_path, version):
    path = tmp_path / "notes.sqlite"
    db = sqlite3.connect(path)
    db.executescript(f"CREATE TABLE notes (text TEXT); INSERT INTO notes VALUES ('mine'); PRAGMA user_version={version};")
    db.close()
    before = _digest(path)
    with pytest.raises(IpoError, match=r"notes.sqlite is an SQLite database but not an ipo workspace \(its tables: "
                                       r"notes\); nothing was changed; pass another --workspace$"):
        Store(path)
    assert _digest(path) == before and sorted(os.listdir(tmp_path)) == ["notes.sqlite"]


def test_a_lab_pair_saved_again_under_another_category_is_listed_once(store):
    from ipo_tui.loop.stages import LAB_SET

    for template, score in (("chat", 0.9), ("math", 0.4)):  # ctrl+t changed the category, then ctrl+s
        rows = [("typed", "", i, 0, text, Judgement(response=text, score=s, mass=0.5, category=template,
                                                     template=template, low_mass=False, probability=True))
                for i, (text, s) in enumerate((("a", score), ("b", -score)))]
        store.save_chosen_pair(LAB_SET, "Name a colour.", template, "m", {}, rows, 0, 1, 2 * score)
    [pair] = store.pairs()
    assert pair["score_chosen"] == pytest.approx(0.4) and [r["pairs"] for r in store.curation_counts()] == [1]


def test_accepting_after_a_reject_of_a_swapped_pair_still_records_the_swap(store):
    pair = _one_pair(store)
    store.swap_pair([pair["id"]])
    store.set_pair_status(pair["id"], "rejected")
    store.set_pair_status(pair["id"], "accepted")
    assert (store.pairs()[0]["status"], store.pairs()[0]["curation"]) == ("edited", "swap")
    with pytest.raises(IpoError, match="no pair with id 99"):
        store.swap_pair([pair["id"], 99])
    assert store.pairs()[0]["chosen"] == "bad"  # all or nothing


def test_a_new_proposal_drops_the_history_of_the_pair_it_replaces(store):
    pair = _one_pair(store)
    store.set_pair_status(pair["id"], "accepted")
    store.reset_pairs(pair["id"])
    [prompt] = store.prompts("s")
    store.add_candidates(prompt["id"], "m", "", {}, [(2, 2, "best")])
    best = [c for c in store.candidates(prompt["id"]) if c["text"] == "best"][0]
    store.propose_pair(prompt["id"], "m", best["id"], store.candidates(prompt["id"])[1]["id"], 0.9, "code")
    assert store.undo_curation() is None and store.pairs()[0]["chosen"] == "best"
