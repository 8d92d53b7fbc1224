"""What the CLI does with numbers out of range, with values that are not there (NULL) and with a
stderr that is not a terminal: one clear refusal, a "–", and plain progress lines."""

import io
import json
import time

import pytest
import yaml
from rich.console import Console
from test_cli import assert_one_line_error, ipo
from typer.testing import CliRunner

from ipo_tui.cli import common
from ipo_tui.errors import IpoError
from ipo_tui.workspace.store import Store

MATH = [{"prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4.", "rejected": "2 + 2 = 5.", "category": "math"},
        {"prompt": "What is 3 + 5?", "chosen": "3 + 5 = 8.", "rejected": "3 + 5 = 9.", "category": "math"}]


def labelled_pairs(path, copies: int = 2):
    """A RewardBench-format file of math pairs, each prompt made distinct."""
    path.write_text("".join(json.dumps({**p, "prompt": f"{p['prompt']} ({i})", "subset": "arith"}) + "\n"
                            for i in range(copies) for p in MATH))
    return path


@pytest.mark.parametrize("args,option", [
    (["generate", "--prompts", "p", "--limit", "-1"], "--limit"),  # was SQL's LIMIT -1: every prompt
    (["judge", "--prompts", "p", "--limit", "0"], "--limit"),
    (["score", "-p", "q", "-r", "a", "--threads", "0"], "--threads"),
    (["score", "-p", "q", "-r", "a", "--threads", "-2"], "--threads"),
    (["score", "-p", "q", "-r", "a", "--ctx", "-5"], "--ctx"),  # was "could not load ... llama_context"
    (["score", "-p", "q", "-r", "a", "--concurrency", "0"], "--concurrency"),
    (["bestofn", "-p", "q", "--seed", "-1"], "--seed"),
    (["bestofn", "-p", "q", "--seed", str(2**31)], "--seed"),
    (["bestofn", "-p", "q", "-n", "0"], "-n"),
    (["bestofn", "-p", "q", "--top-p", "1.5"], "--top-p"),
    (["bestofn", "-p", "q", "--temperature", "-0.1"], "--temperature"),
    (["bestofn", "-p", "q", "--max-tokens", "0"], "--max-tokens"),
    (["pairs", "build", "--prompts", "p", "--min-margin", "-0.5"], "--min-margin"),
    (["pairs", "accept", "--min-margin", "-0.1"], "--min-margin"),
    (["eval", "pairs.jsonl", "--limit", "0"], "--limit"),
    (["prompts", "search", "pairs.jsonl", "--folds", "1"], "--folds"),
    (["prompts", "search", "pairs.jsonl", "--per-category", "-1"], "--per-category"),
    (["prompts", "search", "pairs.jsonl", "--holdout", "-1"], "--holdout"),
    (["bench", "--limit", "0"], "--limit"),
    (["bench", "--max-tokens", "0"], "--max-tokens"),
    (["bench", "--pairs-limit", "0"], "--pairs-limit"),
])
def test_a_number_out_of_range_is_refused_at_its_option(args, option):
    from ipo_tui.cli.app import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert f"Invalid value for '{option}'" in result.output
    assert "than or equal to" in result.output  # the bound it broke


def test_a_holdout_of_every_pair_is_one_line(user_dirs, tmp_path):
    pairs = labelled_pairs(tmp_path / "pairs.jsonl")
    result = ipo("prompts", "search", str(pairs), "--holdout", "10", env_dirs=user_dirs)
    assert_one_line_error(result, "--holdout 10 leaves none of the pairs")


def test_a_pair_edited_with_no_model_loaded_shows_dashes(user_dirs, tmp_path):
    ws = tmp_path / "ws.sqlite"
    store = Store(ws)
    store.add_prompt_set("set", "test", [{"text": "What is 2+2?"}])
    store.add_prompt_set("unsourced", None, [{"text": "Name a fruit."}])
    prompt = store.prompts("set")[0]["id"]
    store.add_candidates(prompt, "m", "", {}, [(0, 0, "4"), (1, 1, "5")])
    chosen, rejected = (c["id"] for c in store.candidates(prompt))
    store.propose_pair(prompt, "m#judge", chosen, rejected, 0.3)
    store.edit_pair(store.pairs()[0]["id"], chosen="four")  # no judgements: NULL scores and category
    store.close()

    listed = ipo("pairs", "list", "-w", str(ws), env_dirs=user_dirs)
    assert listed.returncode == 0, listed.stderr  # was a TypeError on `:.3f` of None
    [row] = [line for line in listed.stdout.splitlines() if "edited (edit)" in line]
    assert [cell.strip() for cell in row.split("│")[3:8]] == ["–", "–", "–", "–", "What is 2+2?"]  # margin unknown too
    stats = ipo("pairs", "stats", "-w", str(ws), env_dirs=user_dirs)
    assert stats.returncode == 0 and "–" in stats.stdout
    as_json = ipo("pairs", "stats", "--json", "-w", str(ws), env_dirs=user_dirs)
    [record] = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert record["agreement"] is None and record["interval95"] is None and record["edit"] == 1
    sets = ipo("prompts", "list", "-w", str(ws), env_dirs=user_dirs)
    assert [line for line in sets.stdout.splitlines() if "unsourced" in line][0].split("│")[3].strip() == "–"
    exported = tmp_path / "pairs.jsonl"
    assert ipo("pairs", "export", "--out", str(exported), "-w", str(ws), env_dirs=user_dirs).returncode == 0
    [pair] = [json.loads(line) for line in exported.read_text().splitlines()]
    assert pair["score_chosen"] is None and pair["score_rejected"] is None


@pytest.fixture
def log(monkeypatch):
    """stderr as a log (not a terminal); `every` sets the interval between progress lines."""
    monkeypatch.setattr(common, "err", Console(file=io.StringIO(), width=200))

    def text(every: float | None = None) -> str:
        if every is not None:
            monkeypatch.setattr(common, "PLAIN_EVERY", every)
        return common.err.file.getvalue()
    return text


def wait_for_a_line(log) -> None:
    deadline = time.monotonic() + 60
    while not log().strip():  # wait for a state: the ticker's first line
        assert time.monotonic() < deadline, "no progress line"
        time.sleep(0.01)


def test_progress_in_a_log_is_a_line_per_interval_never_one_per_item(log):
    log(every=3600)  # no interval passes here: the items alone print nothing until the end
    bar, progress = common.progress_bar("working")
    with bar:
        for done in range(1, 101):
            progress(done, 100)
    assert log().splitlines() == [line for line in log().splitlines() if line.startswith("working 100/100, ")]
    assert len(log().splitlines()) == 1 and "\r" not in log() and "\x1b" not in log()
    common.err.file.truncate(0)
    common.err.file.seek(0)
    log(every=0.01)
    bar, progress = common.progress_bar("working")
    with bar:
        progress(3, 100)
        wait_for_a_line(log)  # a line while it runs: a long phase is told from a hang
    assert log().splitlines()[0].startswith("working 3/100, ")


def test_a_step_without_progress_says_it_is_alive_and_a_failed_one_ends_on_its_error(log):
    log(every=0.01)
    with common.status("converting"):
        wait_for_a_line(log)
    assert all(line.startswith("converting, ") and "elapsed" in line for line in log().splitlines())
    assert len(log().splitlines()) >= 2  # the ticker's, and the last
    before = log()
    with pytest.raises(IpoError), common.progress_bar("judging")[0]:
        raise IpoError("bad input")
    assert log() == before  # the error's one line is all a failure prints


@pytest.mark.slow
def test_search_under_json_reports_progress_on_stderr(user_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("IPO_CACHE_DIR", str(tmp_path / "cache"))  # its measured features stay out of the user's cache
    pairs = labelled_pairs(tmp_path / "pairs.jsonl")
    candidates = tmp_path / "t.yaml"
    terse = {"name": "terse", "user": "{instruction}\n{response}\nCorrect? Yes or No."}
    candidates.write_text(yaml.safe_dump({"math": [terse]}))
    result = ipo("prompts", "search", str(pairs), "--candidates", str(candidates), "--folds", "2", "--no-pairwise",
                 "--no-reply-pmi", "--no-save", "--json", "-b", "llamacpp", "--score-precision", "native",
                 env_dirs=user_dirs)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)  # stdout is the JSON alone; the tables went to stderr
    assert report["pairs"] == 4 and set(report["routers"]) == {"keyword", "model"}
    lines = result.stderr.splitlines()
    for phase in ("measuring math (1 templates) 4/4", "cross-validating math (2 folds) 8/8", "routing the prompts 4/4"):
        assert any(line.startswith(phase) for line in lines), result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr


def test_the_seed_option_takes_what_the_engines_take():
    from ipo_tui.backends.base import SEED_LIMIT

    assert common.SEED_MAX == SEED_LIMIT - 1
