"""The experiment of docs/experiments/ipo-vs-controls.md, one stage at a time, resumable.

    python experiments/ipo_vs_controls.py STAGE      # run (or continue) one stage, then save its results
    python experiments/ipo_vs_controls.py report     # the tables of every saved stage, as markdown

Stages: `embedded-base` (policy 0 on all of IFEval), `embedded-ARM` for ARM in ipo, random,
self-reward, judge (judge:qwen2.5-coder-1.5b-instruct), and `qwen05-base`, `qwen05-ipo`,
`qwen05-random` (Qwen2.5-Coder-0.5B-Instruct as policy and judge, IFEval on a fixed 270 prompts).
Each stage runs the `ipo` commands it prints, in one workspace (experiments/work/, not committed),
so the arms of a model share policy 0's candidates. What a stage produced is saved to
experiments/results/ipo-vs-controls/STAGE.json, and the workspace itself (candidates, judgements,
pairs, every benchmark answer) to experiments/results/ipo-vs-controls/workspace.sqlite, so that a
later session on a fresh machine continues with the same candidates: a stage found there is not
run again, and `save` writes it without running. Adapters stay out of the repo (tens of MB each):
a loop resumed on a machine that lacks the adapter it had just trained trains it again on the same
pairs (`ipo loop --resume` does). So a session that must end stops a loop in a train stage
(`ipo train stop`), before the new policy generates or is benchmarked.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
WORK = ROOT / "experiments" / "work"
RESULTS = ROOT / "experiments" / "results" / "ipo-vs-controls"
WORKSPACE = WORK / "workspace.sqlite"
SAVED = RESULTS / "workspace.sqlite"
PROMPTS, SLICE = "alpaca64", 64  # 64 prompts spread over alpaca-eval's 805, never IFEval's
JUDGE = "qwen2.5-coder-1.5b-instruct"
MODELS = {"embedded": None, "qwen05": "qwen2.5-coder-0.5b-instruct"}
IFEVAL_LIMIT = {"embedded": None, "qwen05": 270}  # the 0.5B model on all 541 prompts does not fit a session
ARMS = {"ipo": "ipo", "random": "random", "self-reward": "self-reward", "judge": f"judge:{JUDGE}"}
# fixed before any result was seen: a few dozen pairs an iteration, so two epochs at twice the default rate
LOOP = ["-k", "2", "-n", "4", "--max-tokens", "256", "--temperature", "0.8", "--top-p", "0.95", "--seed", "0",
        "--holdout", "0.1", "--judge-plain", "--set", "learning_rate=1e-4", "--set", "epochs=2",
        "--bench", "ifeval", "--bench-max-tokens", "512",
        "--eval-file", str(SHARED / "rewardbench-dev.jsonl"), "--eval-limit", "100"]


def ipo(*args: str) -> None:
    command = [str(ROOT / ".venv" / "bin" / "ipo"), *args, "-w", str(WORKSPACE)]
    print("$ ipo " + " ".join(args), flush=True)
    subprocess.run(command, check=True, env=_env())


def _install(model: str) -> None:
    """A catalogue model, registered in the experiment's own data folder (a no-op once done)."""
    print(f"$ ipo models install {model}", flush=True)
    subprocess.run([str(ROOT / ".venv" / "bin" / "ipo"), "models", "install", model], check=True, env=_env())


def _env() -> dict:
    return {**os.environ, "IPO_DATA_DIR": str(WORK / "data"), "IPO_CONFIG_DIR": str(WORK / "config")}


def prepare() -> None:
    """The workspace (restored from the saved copy on a fresh machine) with the prompt slice in it."""
    WORK.mkdir(parents=True, exist_ok=True)
    if not WORKSPACE.exists() and SAVED.exists():
        shutil.copy(SAVED, WORKSPACE)
    db = sqlite3.connect(WORKSPACE)
    known = db.execute("SELECT name FROM sqlite_master WHERE name = 'prompt_sets'").fetchone() and \
        db.execute("SELECT 1 FROM prompt_sets WHERE name = ?", (PROMPTS,)).fetchone()
    db.close()
    if not known:
        from ipo_tui.evaluation.stats import spread

        rows = [json.loads(line) for line in (SHARED / "prompts" / "alpaca-eval.jsonl").read_text().splitlines()]
        slice_file = WORK / f"{PROMPTS}.jsonl"
        slice_file.write_text("".join(json.dumps(r) + "\n" for r in spread(rows, SLICE)))
        ipo("prompts", "import", str(slice_file), "--name", PROMPTS)


def stage(name: str) -> None:
    model_key, _, arm = name.partition("-")
    if model_key not in MODELS or (arm != "base" and arm not in ARMS):
        sys.exit(f"unknown stage {name!r}: {model_key}-base or {model_key}-ARM, ARM in {', '.join(ARMS)}")
    if (RESULTS / f"{name}.json").exists():
        print(f"{name} is saved already ({RESULTS / f'{name}.json'})")
        return
    prepare()
    for needed in {MODELS[model_key], JUDGE if arm == "judge" else None} - {None}:
        _install(needed)
    model = ["-m", MODELS[model_key]] if MODELS[model_key] else []
    limit = ["--limit", str(IFEVAL_LIMIT[model_key])] if IFEVAL_LIMIT[model_key] else []
    began = time.time()
    if arm == "base":
        ipo("bench", "--tasks", "ifeval", "--max-tokens", "512", *limit, *model)
        result = {"stage": name, "benches": _benches(), "seconds": round(time.time() - began)}
    else:
        loops = _loops()
        bench_limit = ["--bench-limit", str(IFEVAL_LIMIT[model_key])] if IFEVAL_LIMIT[model_key] else []
        if name in loops:
            ipo("loop", "--resume", loops[name])
        else:
            before = set(_loop_ids())
            try:
                ipo("loop", "--prompts", PROMPTS, *LOOP, *bench_limit, "--pairs-by", ARMS[arm], *model)
            finally:
                started = sorted(set(_loop_ids()) - before)
                if started:
                    _save_loops({**loops, name: started[0]})
        loop_id = _loops()[name]
        result = {"stage": name, "loop": loop_id, "record": _record(loop_id), "seconds": round(time.time() - began)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")
    save()


def save() -> None:
    """A compact copy of the workspace beside the results (WAL folded in, free pages dropped)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(WORKSPACE)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    SAVED.unlink(missing_ok=True)
    db.execute("VACUUM INTO ?", (str(SAVED),))
    db.close()


def _loop_ids() -> list[str]:
    db = sqlite3.connect(WORKSPACE)
    ids = [r[0] for r in db.execute("SELECT id FROM runs WHERE kind = 'loop'")]
    db.close()
    return ids


def _loops() -> dict:
    path = RESULTS / "loops.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _save_loops(loops: dict) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "loops.json").write_text(json.dumps(loops, indent=1) + "\n")


def _record(loop_id: str) -> dict:
    from ipo_tui.loop.iterations import benchmarks
    from ipo_tui.workspace.store import Store

    store = Store(WORKSPACE)
    record = json.loads(store.run(loop_id)["config"])
    record["benchmarks"] = benchmarks(store, record)
    store.close()
    return record


def _benches() -> list[dict]:
    from ipo_tui.evaluation.bench import stored_figures
    from ipo_tui.workspace.store import Store

    store = Store(WORKSPACE)
    rows = [{"id": r["id"], "model": r["model"], "adapter": r["adapter"], "settings": json.loads(r["settings"]),
             "figures": stored_figures(store, r["id"])}
            for r in store.benches()]
    store.close()
    return rows


def report() -> None:
    """Per arm and policy: IFEval prompt- and instruction-level figures, the change against policy 0
    with its McNemar p-value, pairs trained on, and the wall time of each stage."""
    for path in sorted(RESULTS.glob("*.json")):
        if path.name == "loops.json":
            continue
        result = json.loads(path.read_text())
        print(f"\n### {result['stage']} ({result['seconds'] / 60:.0f} min)\n")
        if "benches" in result:  # the workspace's benches when the stage ended: its own is the last without adapter
            for b in [b for b in result["benches"] if not b["adapter"]][-1:]:
                f = b["figures"].get("ifeval")
                if f:
                    print(f"- {b['id']} {b['model']} {b['adapter'] or '(no adapter)'}: prompt strict "
                          f"{f['prompt_strict']:.3f}, loose {f['prompt_loose']:.3f}, inst strict {f['inst_strict']:.3f}, "
                          f"loose {f['inst_loose']:.3f} (n={f['n']}), {f['seconds'] / 60:.0f} min")
            continue
        record = result["record"]
        print("| policy | pairs | prompt strict | prompt loose | inst strict | inst loose | Δ prompt strict (p) "
              "| Δ prompt loose (p) | answer tokens | stages (s) |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        iterations = {it["iteration"]: it for it in record["done"]}
        tokens = {0: record["bench0"]["ifeval"]["mean_tokens"],
                  **{k: it["bench"]["ifeval"]["mean_tokens"] for k, it in iterations.items()}}
        for row in record["benchmarks"]:
            f, c = row["figures"], row["change"]
            it = iterations.get(row["policy"], {})
            seconds = " ".join(f"{k} {v:.0f}" for k, v in (it.get("seconds") or {}).items())
            print(f"| {row['policy']} | {it.get('pairs', '—')} | {f['ifeval prompt strict']:.3f} | {f['ifeval prompt loose']:.3f} "
                  f"| {f['ifeval inst strict']:.3f} | {f['ifeval inst loose']:.3f} | {_delta(c, 'ifeval prompt strict')} "
                  f"| {_delta(c, 'ifeval prompt loose')} | {tokens[row['policy']]:.0f} | {seconds} |")


def _delta(change: dict, name: str) -> str:
    return f"{change[name]['difference']:+.3f} (p={change[name]['p_value']:.2g})" if name in change else "—"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    {"report": report, "save": save}.get(sys.argv[1], lambda: stage(sys.argv[1]))()
