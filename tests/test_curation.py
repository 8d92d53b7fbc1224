"""One rule for what a curated pair is and what trains, the same in the CLI, the app and the API:
accepted and edited pairs (a swap or an edit makes a pair edited) train and export by default; a
curation action can be taken back; an export never replaces a file unasked."""

import json

import pytest
from test_cli import assert_one_line_error, ipo
from typer.main import get_command

from ipo_tui.judge.scoring import Judgement
from ipo_tui.workspace.store import TRAINED_STATUSES, Store


def _judgement(score: float) -> Judgement:
    return Judgement(response="", score=score, mass=0.5, category="chat", template="chat", low_mass=False, probability=True)


@pytest.fixture
def curated(tmp_path):
    """Three proposed pairs: the first accepted, the second swapped, the third left proposed."""
    path = tmp_path / "ws.sqlite"
    store = Store(path)
    store.add_prompt_set("s", "test", [{"text": f"q{i}"} for i in range(3)])
    for prompt in store.prompts("s"):
        store.add_candidates(prompt["id"], "m", "", {}, [(0, 0, f"good {prompt['position']}"), (1, 1, "bad")])
        good, bad = store.candidates(prompt["id"])
        store.add_judgements("m", [(good["id"], _judgement(1.0)), (bad["id"], _judgement(-1.0))])
        store.propose_pair(prompt["id"], "m", good["id"], bad["id"], 2.0, "chat")
    first, second, _ = (p["id"] for p in store.pairs())
    store.set_pair_status(first, "accepted")
    store.swap_pair(second)
    store.close()
    return path


def test_training_takes_the_pairs_a_person_kept_by_default(curated):
    from ipo_tui.cli.app import app
    from ipo_tui.training import runner

    dpo = get_command(app).commands["train"].commands["dpo"]
    default = next(p.default for p in dpo.params if p.name == "pairs")
    assert default == ",".join(TRAINED_STATUSES) == "accepted,edited"
    rows = runner._pairs(default, Store(curated))
    assert [r["chosen"][0]["content"] for r in rows] == ["good 0", "bad"]  # the swapped pair trains, as swapped


def test_export_takes_the_kept_pairs_and_never_replaces_a_file_unasked(curated, tmp_path):
    out = tmp_path / "pairs.jsonl"
    done = ipo("pairs", "export", "--out", str(out), "-w", str(curated), env_dirs=tmp_path)
    assert done.returncode == 0, done.stderr
    assert [json.loads(line)["chosen"] for line in out.read_text().splitlines()] == ["good 0", "bad"]
    again = ipo("pairs", "export", "--out", str(out), "--status", "proposed", "-w", str(curated), env_dirs=tmp_path)
    assert_one_line_error(again, "exists", "--force")
    assert len(out.read_text().splitlines()) == 2  # the file is as it was
    forced = ipo("pairs", "export", "--out", str(out), "--status", "proposed", "--force", "-w", str(curated),
                 env_dirs=tmp_path)
    assert forced.returncode == 0 and [json.loads(line)["chosen"] for line in out.read_text().splitlines()] == ["good 2"]


def test_pairs_list_json_says_what_a_person_did(curated, tmp_path):
    listed = ipo("pairs", "list", "--json", "-w", str(curated), env_dirs=tmp_path)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["status"], r["curation"], r["margin"]) for r in rows] == [
        ("accepted", "accept", 2.0), ("edited", "swap", -2.0), ("proposed", None, 2.0)]
    table = ipo("pairs", "list", "-w", str(curated), env_dirs=tmp_path)
    assert "edited (swap)" in table.stdout


def test_undo_and_back_to_proposed_from_the_cli(curated, tmp_path):
    undone = ipo("pairs", "undo", "-w", str(curated), env_dirs=tmp_path)
    assert undone.stdout.strip() == "undid the swap of pair 2"
    assert ipo("pairs", "reset", "1", "-w", str(curated), env_dirs=tmp_path).returncode == 0
    assert {p["status"] for p in Store(curated).pairs()} == {"proposed"}
    assert_one_line_error(ipo("pairs", "reset", "9", "-w", str(curated), env_dirs=tmp_path), "no pair with id 9")
    swapped = ipo("pairs", "swap", "3", "-w", str(curated), env_dirs=tmp_path)
    assert swapped.returncode == 0 and Store(curated).pairs()[2]["chosen"] == "bad"
