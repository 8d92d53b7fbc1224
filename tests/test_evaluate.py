"""Judges measured on labelled pairs, the self-reward parser, template search and best-of-n."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from ipo_tui.evaluation.pairwise import load_pairs
from ipo_tui.judge.self_reward import parse_score

PAIRS = [
    {"prompt": "What is 2 + 2?", "chosen": "2 + 2 = 4.", "rejected": "2 + 2 = 5.", "subset": "arith", "category": "math"},
    {"prompt": "Name a primary color.", "chosen": "Red.", "rejected": "Banana.", "subset": "colors", "category": "chat"},
    {"prompt": "Write Python that prints hi.", "chosen": "print('hi')", "rejected": "print(hi", "subset": "py", "category": "code"},
]


def ipo(*args, env_dirs):
    env = dict(os.environ, IPO_CONFIG_DIR=str(env_dirs / "config"), IPO_DATA_DIR=str(env_dirs / "data"))
    return subprocess.run([sys.executable, "-m", "ipo_tui", *args], capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.parametrize("text,score", [
    ("The response is relevant. Score: 4", 4), ("**Score:** 3/5", 3), ("I would give it 2 out of 5.", 2),
    ("Total: 5 points", 5), ("4", 4), ("Score: 1 ... on reflection, Score: 3", 3), ("It is a good answer.", None),
    ("Score: 0", None),  # outside the 1-5 scale: not a score
])
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_sample_is_fixed_and_spread(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({**PAIRS[i % 3], "subset": f"s{i // 10}"}) + "\n" for i in range(40)))
    sample = load_pairs(str(path), limit=8)
    assert sample == load_pairs(str(path), limit=8) and len({r["subset"] for r in sample}) == 4


@pytest.mark.parametrize("judge", ["ipo", "self-reward"])
def test_eval_json_reports_accuracy_by_category(user_dirs, tmp_path, judge):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    result = ipo("eval", str(path), "--judge", judge, "--json", "-b", "llamacpp", env_dirs=user_dirs)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["pairs"] == 3 and 0 <= summary["accuracy"] <= 1
    assert set(summary["by_category"]) == {"math", "chat", "code"} and set(summary["by_subset"]) == {"arith", "colors", "py"}
    correct = sum(round(v) for v in summary["by_category"].values())
    assert summary["accuracy"] == pytest.approx(correct / 3)
    # pair by pair, in the file's order (one category each here), so two runs can be paired
    assert summary["verdicts"] == [round(summary["by_category"][p["category"]]) for p in PAIRS]
    low, high = summary["interval95"]
    assert low <= summary["accuracy"] <= high and set(summary["by_category_interval95"]) == {"math", "chat", "code"}
    if judge == "ipo":
        assert 0 < summary["mean_mass"] <= 1
    else:
        assert 0 <= summary["parse_failures"] <= 6


def test_prompt_search_cross_validates_and_saves_per_model(user_dirs, tmp_path, monkeypatch):
    monkeypatch.setenv("IPO_CACHE_DIR", str(tmp_path / "cache"))  # its measured features stay out of the user's cache
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({**p, "prompt": f"{p['prompt']} ({i})"}) + "\n"
                             for i in range(4) for p in PAIRS if p["category"] == "math"))
    candidates = tmp_path / "t.yaml"
    candidates.write_text(yaml.safe_dump({"math": [
        {"name": "terse", "user": "{instruction}\n{response}\nCorrect? Yes or No."},
        {"name": "wrong", "user": "Problem: {instruction}\nAnswer: {response}\nIs there a mistake? Yes or No.",
         "polarity": "negative"},
    ]}))
    result = ipo("prompts", "search", str(pairs), "--candidates", str(candidates), "--folds", "2", "--no-pairwise",
                 "--json", "-b", "llamacpp", env_dirs=user_dirs)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    names = [t["technique"] for t in report["techniques"]["math"]]
    assert names[0] == "plain (terse)" and "negative: wrong" in names and names[-1] == "search, cross-validated"
    assert {"reply PMI", "reply PMI per token", "fitted weights + reply PMI"} <= set(names)
    assert report["pairs"] == 4 and set(report["routers"]) == {"keyword", "model"}
    cache = tmp_path / "cache" / "judge-features"
    # one file per template and one for the replies' PMI: a stopped search resumes
    measured = {f.name: f.read_text() for f in cache.glob("*.jsonl")}
    assert len(measured) == 3 and all(len(text.splitlines()) == 4 for text in measured.values())
    config = yaml.safe_load((user_dirs / "config" / "config.yaml").read_text())
    [saved] = config["judge"]["models"].values()
    assert set(saved["categories"]["math"]["templates"]) <= {"terse", "wrong"}
    assert config["templates"]["wrong"]["polarity"] == "negative"
    # the saved setting is what `ipo eval` then judges with
    result = ipo("eval", str(pairs), "--json", "-b", "llamacpp", env_dirs=user_dirs)
    assert json.loads(result.stdout.strip().splitlines()[-1])["judge_settings"]["categories"]["math"]["templates"] == \
        saved["categories"]["math"]["templates"]
    # a template added to the candidates measures only itself
    spec = yaml.safe_load(candidates.read_text())
    spec["math"].append({"name": "short", "user": "{instruction} {response} Right? Yes or No."})
    candidates.write_text(yaml.safe_dump(spec))
    result = ipo("prompts", "search", str(pairs), "--candidates", str(candidates), "--folds", "2", "--no-pairwise",
                 "--json", "-b", "llamacpp", env_dirs=user_dirs)
    assert result.returncode == 0, result.stderr
    assert {f.name: f.read_text() for f in cache.glob("*.jsonl") if f.name in measured} == measured
    assert len(list(cache.glob("*.jsonl"))) == 4
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"math": [{"name": "x", "user": "no placeholders"}]}))
    result = ipo("prompts", "search", str(pairs), "--candidates", str(bad), "-b", "llamacpp", env_dirs=user_dirs)
    assert result.returncode == 1 and "lacks the placeholder" in result.stderr


def test_pairwise_eval_measures_and_warns_about_position(user_dirs, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    result = ipo("eval", str(path), "--judge-mode", "pairwise", "--json", "-b", "llamacpp", env_dirs=user_dirs)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["position"]["comparisons"] == 3 and summary["judge_settings"]["mode"] == "pairwise"
    # the embedded model answers A whichever reply comes first (README): the command says so
    assert summary["position"]["consistent"] < 0.5 and "use the pointwise judge" in result.stderr
    result = ipo("eval", str(path), "--judge-mode", "sideways", "-b", "llamacpp", env_dirs=user_dirs)
    assert result.returncode == 1 and "choose pointwise or pairwise" in result.stderr


def test_bestofn_ranks_sampled_answers(user_dirs):
    result = ipo("bestofn", "-p", "Name a fruit.", "-n", "3", "--max-tokens", "16", "--json", "-b", "llamacpp", env_dirs=user_dirs)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert 1 <= len(rows) <= 3 and [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(rows, rows[1:]))


def test_wilson_interval():
    from ipo_tui.evaluation.stats import wilson

    low, high = wilson(8, 10)  # the textbook case: 0.80 of 10 -> [0.490, 0.943]
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert wilson(0, 0) == (0.0, 1.0) and wilson(0, 5)[0] == 0.0 and wilson(5, 5)[1] == 1.0
    low, high = wilson(530, 1000)
    assert low < 0.53 < high and high - low < 0.07
