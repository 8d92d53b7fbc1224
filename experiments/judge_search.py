"""The judge measurements of the README's "Judge settings beyond the paper's recipe", on larger
search samples, one model at a time, resumable across sessions.

    python experiments/judge_search.py MODEL     # embedded, qwen05 or qwen15: search, then eval both ways
    python experiments/judge_search.py MODEL+follow   # round 2: the chat pool with judge-candidates/chat-follow.yaml
    python experiments/judge_search.py MODEL+reply    # round 3: the replies' PMI with their instruction measured too
    python experiments/judge_search.py save      # keep the measured features (before a session ends)
    python experiments/judge_search.py report    # the saved results, as markdown

A stage runs `ipo prompts search` on the dev pairs without the 200 that `ipo eval --limit 200`
takes (so the eval measures on pairs the search never saw), then `ipo eval --limit 200` with the
chosen setting and with `--judge-plain`. The sample sizes were fixed before running, by what fits
a session on 2 cores. The search caches every pair's measured numbers in the user cache
(judge-features/); they are copied to experiments/results/judge-search/features/ after each
command and by `save`, and copied back before a stage, so a later session on a fresh machine goes
on where this one stopped. The search's choice is kept in the experiment's own config folder
(experiments/work/judge-config/), never the user's. `embedded-handwritten.json` is the embedded
stage as it ran before the search could fit weights (the same features; its choice and evals).

Round 2 (`MODEL+follow`, after MODEL's own stage) adds two instruction-following templates to the
chat candidates (experiments/judge-candidates/chat-follow.yaml, the three built-in ones and two
new): the same search (its features cached, so it re-chooses every category as before), then the
chat search with the five, then `ipo eval --limit 200` with what it chose. The plain recipe's eval
is MODEL's (the same 200 pairs and settings, so it is not run again).

Round 3 (`MODEL+reply`, after MODEL's own stage) is MODEL's search with each reply's PMI with its
instruction measured as well (log p(reply | instruction) - log p(reply | N/A), which `ipo prompts
search` measures by default since), so the search may fit a weight to it; then `ipo eval --limit
200` with what it chose, against MODEL's plain eval.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "rewardbench-dev.jsonl"
WORK = ROOT / "experiments" / "work"
RESULTS = ROOT / "experiments" / "results" / "judge-search"
FEATURES = RESULTS / "features"
MODELS = {"embedded": None, "qwen05": "qwen2.5-coder-0.5b-instruct", "qwen15": "qwen2.5-coder-1.5b-instruct"}
# pairs per category the search measures; qwen05 was 90 until its chat pairs measured at ~30 s each
# (20 pairs, no result seen), which would not leave a session the time for its evals
PER_CATEGORY = {"embedded": 150, "qwen05": 60, "qwen15": 60}
FOLLOW = ROOT / "experiments" / "judge-candidates" / "chat-follow.yaml"


def _env() -> dict:
    return {**os.environ, "IPO_DATA_DIR": str(WORK / "data"), "IPO_CONFIG_DIR": str(WORK / "judge-config")}


def _cache() -> Path:
    from ipo_tui.config import cache_dir

    return cache_dir() / "judge-features"


def restore_features() -> None:
    """The saved features into the user cache, where a file there is missing or shorter."""
    _cache().mkdir(parents=True, exist_ok=True)
    for f in FEATURES.glob("*.jsonl"):
        if not (_cache() / f.name).exists() or (_cache() / f.name).stat().st_size < f.stat().st_size:
            shutil.copy(f, _cache() / f.name)


def _ipo_json(*args: str) -> dict:
    """Run an `ipo` command that ends with one JSON line; its other output goes to the terminal."""
    print("$ ipo " + " ".join(args), flush=True)
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "ipo"), *args], env=_env(), check=True,
                          stdout=subprocess.PIPE, text=True)
    lines = done.stdout.strip().splitlines()
    print("\n".join(lines[:-1]), flush=True)
    return json.loads(lines[-1])


def stage(name: str) -> None:
    base, _, round_ = name.partition("+")
    follow = round_ == "follow"
    if base not in MODELS or round_ not in ("", "follow", "reply"):
        sys.exit(f"unknown stage {name!r}: choose {', '.join(MODELS)} (each alone, +follow or +reply), save or report")
    result_file = RESULTS / f"{name}.json"
    if result_file.exists():
        print(f"{name} is saved already ({result_file})")
        return
    if round_ and not (RESULTS / f"{base}.json").exists():
        sys.exit(f"{name} builds on {base}: run that stage first")
    restore_features()
    model = ["-m", MODELS[base]] if MODELS[base] else []
    if MODELS[base]:
        print(f"$ ipo models install {MODELS[base]}", flush=True)
        subprocess.run([str(ROOT / ".venv" / "bin" / "ipo"), "models", "install", MODELS[base]], env=_env(), check=True)
    search = ["prompts", "search", str(DEV), "--holdout", "200", "--per-category", str(PER_CATEGORY[base]), "--json"]
    try:
        result = {"stage": name, "per_category": PER_CATEGORY[base]}
        result["search"] = _ipo_json(*search, *model)
        save()
        if follow:
            result["search_follow"] = _ipo_json(*search, "--candidates", str(FOLLOW), *model)
            save()
        result["eval_chosen"] = _ipo_json("eval", str(DEV), "--limit", "200", "--json", *model)
        result["eval_plain"] = (json.loads((RESULTS / f"{base}.json").read_text())["eval_plain"] if round_ else
                                _ipo_json("eval", str(DEV), "--limit", "200", "--judge-plain", "--json", *model))
    finally:
        save()
    RESULTS.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(result, indent=1) + "\n")


def save() -> None:
    """The cached features of the dev file's pairs, beside the results."""
    FEATURES.mkdir(parents=True, exist_ok=True)
    for f in _cache().glob("*.jsonl"):
        shutil.copy(f, FEATURES / f.name)


def report() -> None:
    from ipo_tui.evaluation.stats import mcnemar

    for path in sorted(RESULTS.glob("*.json")):
        r = json.loads(path.read_text())
        s = r["search"]
        print(f"\n### {r['stage']} ({s['model']}, {r['per_category']} pairs per category searched)\n")
        print("| category | technique | accuracy | 95% interval | pairs |")
        print("| --- | --- | --- | --- | --- |")
        for category, rows in s["techniques"].items():
            for row in rows:
                low, high = row["interval95"]
                print(f"| {category} | {row['technique']} | {row['accuracy']:.3f} | {low:.2f}–{high:.2f} | {row['pairs']} |")
        print(f"\nSearch, cross-validated: {s['cross_validated']:.3f} on {s['pairs']} pairs; chosen: "
              + "; ".join(f"{c}: {d}" for c, d in s["chosen"].items())
              + "; routers: " + ", ".join(f"{k} {v:.3f}" for k, v in s["routers"].items()))
        if "search_follow" in r:
            f = r["search_follow"]
            print("\nWith the instruction-following templates (chat only):\n")
            print("| technique | accuracy | 95% interval | pairs |")
            print("| --- | --- | --- | --- |")
            for row in f["techniques"]["chat"]:
                low, high = row["interval95"]
                print(f"| {row['technique']} | {row['accuracy']:.3f} | {low:.2f}–{high:.2f} | {row['pairs']} |")
            print(f"\nchosen: {f['chosen']['chat']}")
        for label in ("eval_plain", "eval_chosen"):
            e = r[label]
            low, high = e["interval95"]
            cats = ", ".join(f"{c} {v:.2f}" for c, v in sorted(e["by_category"].items()))
            print(f"- {label.removeprefix('eval_')}: {e['accuracy']:.3f} ({low:.2f}–{high:.2f}) on {e['pairs']} pairs; "
                  f"{cats}; {e['pairs_per_s']:.2f} pairs/s")
        plain, chosen = r["eval_plain"].get("verdicts"), r["eval_chosen"].get("verdicts")
        if plain and chosen:  # the same 200 pairs in the same order: a paired test
            only_chosen = sum(c and not p for p, c in zip(plain, chosen))
            only_plain = sum(p and not c for p, c in zip(plain, chosen))
            print(f"- chosen against plain, pair by pair: right only under the chosen {only_chosen}, only under the "
                  f"plain recipe {only_plain}; exact McNemar p = {mcnemar(only_chosen, only_plain):.2g}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    {"report": report, "save": save}.get(sys.argv[1], lambda: stage(sys.argv[1]))()
