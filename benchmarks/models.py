"""Speed of each installed catalogue model (and the embedded one) on the llamacpp backend, in one run:
candidates scored per second (Judge.score on RewardBench dev pairs, both sides of each) and tokens
generated per second (4 samples of up to 128 tokens for each of 4 prompts), loading not timed.

    python benchmarks/models.py [--pairs 16]

Accuracy is `ipo eval ../shared/data/rewardbench-dev.jsonl --limit 200 -m NAME` (README). The last
line printed is one JSON object, with the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ipo_tui import backends
from ipo_tui.backends import catalogue, weights
from ipo_tui.backends.base import Sampling
from ipo_tui.errors import run_script
from ipo_tui.hardware import describe_cpu
from ipo_tui.judge.scoring import Judge

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rewardbench-dev.jsonl"
PROMPTS = ["Explain why the sky is blue.", "Write a Python function that reverses a string.",
           "What is a prime number?", "Give three tips for learning a language."]


def measure(name: str | None, pairs: list[dict]) -> dict:
    engine = backends.load("llamacpp", weights.resolve(name))
    judge = Judge(engine)
    start = time.perf_counter()
    judged = [j for p in pairs for j in judge.score(p["prompt"], [p["chosen"], p["rejected"]])]
    scoring = time.perf_counter() - start
    sampling = Sampling(n=4, max_tokens=128, temperature=0.8, top_p=0.95)
    start = time.perf_counter()
    texts = [t for prompt in PROMPTS for t in engine.generate([{"role": "user", "content": prompt}], sampling)]
    generating = time.perf_counter() - start
    tokens = sum(len(engine.tokenize(t)) for t in texts)
    result = {"dtype": engine.capabilities.dtype, "candidates_per_s": len(judged) / scoring,
              "mean_mass": sum(j.mass for j in judged) / len(judged), "generate_tok_s": tokens / generating}
    engine.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=16)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.data.open()]
    rows = [r for r in rows if len(r["prompt"] + r["chosen"] + r["rejected"]) < 2000]
    pairs = rows[:: len(rows) // args.pairs][: args.pairs]
    result: dict = {"machine": describe_cpu(), "pairs": len(pairs)}
    print(result["machine"], flush=True)
    for name in [None] + [e.name for e in catalogue.CATALOGUE if catalogue.installed(e)]:
        label = name or "embedded"
        result[label] = measure(name, pairs)
        r = result[label]
        print(f"{label:30s} {r['dtype']:22s} {r['candidates_per_s']:6.2f} candidates/s  mass {r['mean_mass']:.3f}  "
              f"{r['generate_tok_s']:6.1f} tokens/s", flush=True)
    print(json.dumps({k: {m: round(x, 3) if isinstance(x, float) else x for m, x in v.items()} if isinstance(v, dict)
                      else v for k, v in result.items()}))


if __name__ == "__main__":
    run_script(main)
