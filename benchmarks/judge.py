"""The cost of a judge setting: pairs per second of the configured judge (what `ipo prompts search`
saved for the model, or the config's) against the paper's plain recipe, in one run, on one loaded
engine. The two alternate over several rounds, each round with fresh judges (no cached baselines),
on the same fixed sample of RewardBench dev pairs.

    python benchmarks/judge.py [-m MODEL] [--pairs 24] [--rounds 2]

The last line printed is one JSON object, with the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ipo_tui import backends
from ipo_tui.backends import weights
from ipo_tui.errors import run_script
from ipo_tui.evaluation.pairwise import evaluate, load_pairs
from ipo_tui.hardware import describe_cpu
from ipo_tui.judge.scoring import configured_judge

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rewardbench-dev.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-m", "--model", default=None)
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    model = weights.resolve(args.model)
    pairs = load_pairs(str(args.data), args.pairs)
    engine = backends.load("llamacpp", model)
    seconds = {"plain": 0.0, "configured": 0.0}
    setting = ""
    for _ in range(args.rounds):
        for name in seconds:
            judge = configured_judge(engine, {"plain": name == "plain"})
            setting = judge.summary() if name == "configured" else setting
            start = time.perf_counter()
            evaluate(pairs, "ipo", judge)
            seconds[name] += time.perf_counter() - start
    rate = {name: args.rounds * len(pairs) / s for name, s in seconds.items()}
    result = {"machine": describe_cpu(), "model": engine.ref.name, "pairs": len(pairs), "rounds": args.rounds,
              "configured": setting, "plain_pairs_per_s": rate["plain"], "configured_pairs_per_s": rate["configured"],
              "configured_cost": rate["plain"] / rate["configured"]}
    print(f"{result['machine']}\n{engine.ref.name}: {setting}\nplain {rate['plain']:.2f} pairs/s, configured "
          f"{rate['configured']:.2f} pairs/s: the configured judge costs {result['configured_cost']:.2f}x the time")
    print(json.dumps(result))
    engine.close()


if __name__ == "__main__":
    run_script(main)
