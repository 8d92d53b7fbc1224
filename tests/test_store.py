"""The workspace: migrations, all-or-nothing imports, curated pairs kept, exports."""

import json
import sqlite3

import pytest

from ipo_tui.errors import IpoError
from ipo_tui.judge.scoring import Judgement
from ipo_tui.loop.stages import Policy, build_pairs
from ipo_tui.workspace.records import load_prompts, pair_records, write_records
from ipo_tui.workspace.store import MIGRATIONS, Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "ws.sqlite")
    yield s
    s.close()


def _judgement(p_yes):
    return Judgement(response="", p_yes=p_yes, logit_margin=0.0, mass=0.3, category="chat", template="chat", low_mass=False)


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
    with pytest.raises(IpoError, match="unknown pair status"):
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
