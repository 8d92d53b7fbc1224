"""`ipo bench`: a policy on tasks whose answers a program checks, so that a policy's progress is
measured by something it never judged.

Tasks: `ifeval` (instruction following, evaluation/ifeval.py), `gsm8k` (the final number,
evaluation/gsm8k.py), and `judge` (the policy's own p'yes accuracy on a labelled pair file, what
`ipo eval` measures: does the judge improve with the policy?). Generation is greedy and batched
as the backend allows (`generate_rows` prompts a call). Every item's response and verdict is
stored in the workspace under the policy (model + adapter) and the generation settings, so a
benchmark resumes where it stopped, and two policies' results pair up item by item for
`compare` (exact McNemar on the prompt-level verdicts). Each item also records how many items its
run asked for, so that a benchmark stopped early shows as incomplete (`shortfall`) wherever its
figures are read.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ipo_tui.backends.base import Backend, Sampling
from ipo_tui.errors import IpoError
from ipo_tui.evaluation import gsm8k, ifeval
from ipo_tui.evaluation.stats import mcnemar, spread, wilson
from ipo_tui.workspace.store import Store

TASKS = ("ifeval", "gsm8k", "judge")
GENERATED = {"ifeval": ifeval, "gsm8k": gsm8k}  # tasks answered by generation: items, check, summarize
MAX_TOKENS = 512
HEADLINE = {"ifeval": "prompt_strict", "gsm8k": "accuracy", "judge": "accuracy"}  # what a table shows first
Progress = Callable[[str, int, int], None]  # (task, done, total)


def parse_tasks(text: str, flag: str = "--tasks") -> list[str]:
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise IpoError(f"{flag} {text!r}: choose among {', '.join(TASKS)} (comma-separated)")
    return list(dict.fromkeys(tasks))


@dataclass(frozen=True)
class PairFile:
    """The labelled pairs of the `judge` task: a RewardBench-format file and a fixed sample of it."""

    path: str
    limit: int | None = None


def check(limit: int | None, max_tokens: int) -> None:
    """A run's sizes, checked (the CLI calls it before the model loads)."""
    if max_tokens < 1:
        raise IpoError(f"--max-tokens {max_tokens}: give at least 1")
    if limit is not None and limit < 1:
        raise IpoError(f"limit {limit}: give a number of items (1 or more), or none for all of them")


def plan(tasks: list[str], limit: int | None, pairs: PairFile | None = None) -> str:
    """What a run will answer, said before it starts: `ifeval 541 items (all), gsm8k 50 items`."""
    from ipo_tui.evaluation.pairwise import load_pairs

    parts = []
    for task in tasks:
        if task == "judge":
            total, asked = len(load_pairs(pairs.path)), pairs.limit
        else:
            total, asked = len(GENERATED[task].items()), limit
        count = min(asked or total, total)
        parts.append(f"{task} {count} items" + (" (all)" if count == total else ""))
    return ", ".join(parts)


def run(store: Store, engine: Backend, tasks: list[str], limit: int | None = None, max_tokens: int = MAX_TOKENS,
        judge=None, pairs: PairFile | None = None, progress: Progress = lambda task, done, total: None) -> tuple[str, dict]:
    """Benchmark the engine's policy on `tasks` (a fixed sample of `limit` items of each, spread over the
    task); returns the benchmark's id and each task's figures. `judge` (the policy's configured
    Judge) and `pairs` are what the judge task needs."""
    check(limit, max_tokens)
    if "judge" in tasks and (judge is None or pairs is None):
        raise IpoError("the judge task needs a labelled pair file: give --pairs FILE (RewardBench format)")
    bench_id = bench_of(store, engine, max_tokens)
    figures = {}
    for task in tasks:
        if task == "judge":
            figures[task] = _judge(store, bench_id, judge, pairs, progress)
        else:
            figures[task] = _generated(store, bench_id, engine, task, spread(GENERATED[task].items(), limit),
                                       max_tokens, progress)
    return bench_id, figures


def bench_of(store: Store, engine: Backend, max_tokens: int = MAX_TOKENS) -> str:
    """The id of the benchmark of the engine's policy under these settings, where its answers are
    stored (made if new)."""
    from ipo_tui.loop.stages import policy_of

    policy = policy_of(engine)
    return store.bench(policy.model, policy.adapter, settings(engine, max_tokens))


def settings(engine: Backend, max_tokens: int) -> dict:
    """What a benchmark's responses depend on besides the policy: results under other settings never mix."""
    return {"backend": engine.capabilities.backend, "decoding": "greedy", "max_tokens": max_tokens}


def _generated(store: Store, bench_id: str, engine: Backend, task: str, items: list[dict], max_tokens: int,
               progress: Progress) -> dict:
    done = store.bench_items(bench_id, task)
    todo = [item for item in items if item["key"] not in done]
    per_call = max(1, engine.generate_rows)
    greedy = Sampling(n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0)
    progress(task, len(items) - len(todo), len(items))
    for start in range(0, len(todo), per_call):
        chunk = todo[start:start + per_call]
        began = time.perf_counter()
        texts = engine.generate_many([([{"role": "user", "content": item["prompt"]}], greedy) for item in chunk])
        seconds = (time.perf_counter() - began) / len(chunk)
        store.add_bench_items(bench_id, task, [
            (item["key"], text, {**GENERATED[task].check(item, text), "tokens": answer_tokens(engine, text),
                                 "asked": len(items)}, seconds)
            for item, [text] in zip(chunk, texts)])
        progress(task, len(items) - len(todo) + start + len(chunk), len(items))
    stored = store.bench_items(bench_id, task)
    return _generated_figures(task, [stored[item["key"]] for item in items], max_tokens, len(items))


def _generated_figures(task: str, rows: list[dict], max_tokens: int, asked: int) -> dict:
    """A generated task's figures over stored rows, with the answers' lengths, the time they took
    and the number of items asked."""
    figures = GENERATED[task].summarize([r["result"] for r in rows])
    lengths = [r["result"]["tokens"] for r in rows if r["result"].get("tokens") is not None]
    figures["mean_tokens"] = sum(lengths) / len(lengths) if lengths else None
    figures["at_max_tokens"] = sum(n >= max_tokens for n in lengths) / len(lengths) if lengths else None
    figures["seconds"] = round(sum(r["seconds"] for r in rows), 1)
    figures["asked"] = asked
    return figures


def _asked(results: list[dict]) -> int:
    """The largest sample a run asked of a task (items stored before runs recorded it count as asked)."""
    return max([r.get("asked", 0) for r in results] + [len(results)])


def shortfall(values: dict) -> str | None:
    """'1 of 541' where a task's stored items fall short of the largest sample a run asked of it
    (a benchmark stopped before its end), else None."""
    asked = values.get("asked", values["n"])
    return f"{values['n']} of {asked}" if values["n"] < asked else None


def answer_tokens(engine: Backend, text: str) -> int | None:
    """A response's length in the policy's tokens (None where the engine has no local tokenizer)."""
    return None if engine.scores_by_text else len(engine.tokenize(text))


def _judge(store: Store, bench_id: str, judge, pairs: PairFile, progress: Progress) -> dict:
    """The policy's p'yes accuracy on the sampled pairs; an item is (file contents, judge settings,
    row), the settings without the policy so that two policies judged alike pair up in `compare`."""
    from ipo_tui.evaluation.pairwise import evaluate, load_pairs

    path = Path(pairs.path).expanduser()
    rows = list(enumerate(load_pairs(str(path))))
    chosen = spread(rows, pairs.limit)
    setting = judge.id.removeprefix(judge.policy).lstrip("#") or "plain"
    prefix = f"{hashlib.sha256(path.read_bytes()).hexdigest()[:12]}:{setting}:"
    done = store.bench_items(bench_id, "judge")
    todo = [(i, row) for i, row in chosen if prefix + str(i) not in done]
    progress("judge", len(chosen) - len(todo), len(chosen))
    for count, (i, row) in enumerate(todo, 1):
        began = time.perf_counter()
        result = evaluate([row], "ipo", judge)
        verdict = {"correct": bool(result.correct), "category": row["category"] or next(iter(result.by_category)),
                   "file": path.name, "asked": len(chosen)}
        store.add_bench_items(bench_id, "judge", [(prefix + str(i), "", verdict, time.perf_counter() - began)])
        progress("judge", len(chosen) - len(todo) + count, len(chosen))
    stored = store.bench_items(bench_id, "judge")
    rows = [stored[prefix + str(i)] for i, _ in chosen]
    return {**_summarize_judge([r["result"] for r in rows], len(chosen)), "file": path.name, "judge": judge.id,
            "seconds": round(sum(r["seconds"] for r in rows), 1)}


def _summarize_judge(results: list[dict], asked: int) -> dict:
    right = sum(r["correct"] for r in results)
    by_category: dict[str, list[int]] = {}
    for r in results:
        counts = by_category.setdefault(r["category"], [0, 0])
        counts[0] += r["correct"]
        counts[1] += 1
    return {"accuracy": right / len(results), "n": len(results), "interval95": {"accuracy": wilson(right, len(results))},
            "by_category": {k: c / t for k, (c, t) in sorted(by_category.items())}, "asked": asked}


PASSED = {"ifeval": ifeval.passed, "gsm8k": gsm8k.passed, "judge": lambda result, level="": result["correct"]}


def figure_rows(figures: dict) -> list[tuple[str, str, float, float, float, int]]:
    """(task, figure, value, low, high, n) for every figure of a run's result, its interval's n
    (instructions for the instruction-level figures)."""
    return [(task, name, values[name], low, high, values["instructions"] if name.startswith("inst") else values["n"])
            for task, values in figures.items() for name, (low, high) in values["interval95"].items()]


def stored_figures(store: Store, bench_id: str) -> dict:
    """Each task's figures over every item stored for a benchmark (what `ipo bench list` shows),
    `asked` the largest sample a run asked of it."""
    max_tokens = json.loads(store.bench_row(bench_id)["settings"])["max_tokens"]
    figures = {}
    for task in TASKS:
        rows = list(store.bench_items(bench_id, task).values())
        if rows:
            asked = _asked([r["result"] for r in rows])
            figures[task] = _generated_figures(task, rows, max_tokens, asked) if task in GENERATED else \
                _summarize_judge([r["result"] for r in rows], asked)
    return figures


def compare(store: Store, a: str, b: str) -> dict:
    """Task by task, on the items both benchmarks hold: each side's figure, the difference (B - A),
    the exact McNemar p-value of the prompt-level verdicts (strict and loose for IFEval), and
    `incomplete`: the side ("a", "b") whose benchmark of the task stopped short, with its `shortfall`."""
    store.bench_row(a), store.bench_row(b)  # an unknown id fails before anything else
    gaps = {side: {task: shortfall(values) for task, values in stored_figures(store, bench).items()}
            for side, bench in (("a", a), ("b", b))}
    report = {}
    for task in TASKS:
        left, right = store.bench_items(a, task), store.bench_items(b, task)
        common = sorted(left.keys() & right.keys())
        if not common:
            continue
        for level in ("strict", "loose") if task == "ifeval" else ("",):
            pa = [PASSED[task](left[k]["result"], level) for k in common]
            pb = [PASSED[task](right[k]["result"], level) for k in common]
            only_a = sum(x and not y for x, y in zip(pa, pb))
            only_b = sum(y and not x for x, y in zip(pa, pb))
            name = f"{task} prompt {level}" if level else task
            report[name] = {"n": len(common), "a": sum(pa) / len(common), "b": sum(pb) / len(common),
                            "difference": (sum(pb) - sum(pa)) / len(common), "only_a": only_a, "only_b": only_b,
                            "p_value": mcnemar(only_a, only_b),
                            "incomplete": {side: gap[task] for side, gap in gaps.items() if gap.get(task)}}
    if not report:
        raise IpoError(f"{a} and {b} share no benchmark items; run the same --tasks on both policies first")
    return report
