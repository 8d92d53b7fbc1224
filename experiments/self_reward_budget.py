"""Is the self-reward arm's shortage of pairs the rating's 96-token budget? The embedded model
rates 40 of policy 0's stored candidates (spread over the 256 of `ipo_vs_controls.py`'s workspace)
at 96 and at 256 tokens, greedy; prints how many ratings parse under each budget.

    python experiments/self_reward_budget.py
"""

from __future__ import annotations

import sqlite3
import time

from ipo_tui import backends
from ipo_tui.backends import weights
from ipo_tui.errors import run_script
from ipo_tui.evaluation.stats import spread
from ipo_tui.judge import self_reward

from ipo_vs_controls import WORKSPACE

SAMPLE = 40


def main() -> None:
    db = sqlite3.connect(WORKSPACE)
    rows = db.execute("SELECT p.text, c.text FROM candidates c JOIN prompts p ON p.id = c.prompt_id "
                      "WHERE c.adapter = '' AND c.model LIKE 'SmolLM2%' ORDER BY c.id").fetchall()
    db.close()
    rows = spread(rows, SAMPLE)
    engine = backends.load("llamacpp", weights.resolve(None))
    for budget in (self_reward.MAX_TOKENS, 256):
        began, parsed = time.perf_counter(), 0
        for instruction, response in rows:
            parsed += self_reward.rate(engine, instruction, response, max_tokens=budget)[0] is not None
        print(f"max_tokens {budget}: {parsed} of {len(rows)} ratings parse ({time.perf_counter() - began:.0f} s)")


if __name__ == "__main__":
    run_script(main)
