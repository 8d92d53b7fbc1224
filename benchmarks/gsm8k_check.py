"""Does p'yes rank right answers above wrong ones? A check that needs no labeller.

For N GSM8K test prompts, sample K candidates from the embedded model, judge them with the same
model, and, among prompts that have both a candidate with the right final number and one with a
wrong number, count how often the right one gets the higher p'yes (every right/wrong combination
of a prompt counted, ties wrong).

    python benchmarks/gsm8k_check.py [--prompts 50] [-n 4] [--max-tokens 192] [--threads N]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from ipo_tui import backends
from ipo_tui.backends import weights
from ipo_tui.backends.base import Sampling
from ipo_tui.errors import run_script
from ipo_tui.evaluation.gsm8k import DATA, final_number
from ipo_tui.judge.scoring import Judge, prefers
from ipo_tui.loop import stages
from ipo_tui.workspace.records import load_prompts
from ipo_tui.workspace.store import Store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=50)
    parser.add_argument("-n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=192)
    parser.add_argument("--data", type=Path, default=DATA, help="GSM8K prompts with an `answer` (default: the shipped test set)")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: all cores)")
    args = parser.parse_args()

    records = load_prompts(str(args.data))[: args.prompts]
    answers = [float(str(r["meta"]["answer"]).replace(",", "")) for r in records]
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "ws.sqlite")
        store.add_prompt_set("gsm8k", str(args.data), records)
        prompts = store.prompts("gsm8k")
        judge = Judge(backends.load("llamacpp", weights.resolve(None), threads=args.threads))
        policy = stages.policy_of(judge.backend)
        start = time.perf_counter()
        stages.generate(store, judge.backend, policy, prompts, args.n, Sampling(args.n, 0.8, 0.95, args.max_tokens, 0))
        generated = time.perf_counter()
        stages.judge(store, judge, policy, prompts, "math")
        judged = time.perf_counter()
        both = wins = combos = any_right = 0
        for prompt, answer in zip(prompts, answers):
            rows = store.judgements(prompt["id"], policy.judge_id, policy.model, policy.adapter)
            right = [r["score"] for r in rows if r["score"] is not None and final_number(r["text"]) == answer]
            wrong = [r["score"] for r in rows if r["score"] is not None and final_number(r["text"]) != answer]
            any_right += bool(right)
            if right and wrong:
                both += 1
                combos += len(right) * len(wrong)
                wins += sum(prefers(r, w) for r in right for w in wrong)
        store.close()
    result = {"prompts": len(prompts), "candidates_per_prompt": args.n, "prompts_with_a_right_answer": any_right,
              "prompts_with_right_and_wrong": both, "right_wrong_combinations": combos,
              "right_ranked_above_wrong": wins / combos if combos else None,
              "generate_s": round(generated - start, 1), "judge_s": round(judged - generated, 1)}
    print(json.dumps(result))


if __name__ == "__main__":
    run_script(main)
