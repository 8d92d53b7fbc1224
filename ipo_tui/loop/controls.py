"""How a loop picks chosen and rejected among a prompt's candidates: the method and its controls.

- `ipo`: the policy's own judgement, its score (the method).
- `judge:MODEL`: another local model's score (an external judge, the paper's reward-model row).
- `self-reward`: the policy's own 1-5 rating (judge/self_reward.py); ties and unparsed ratings
  give no pair.
- `random`: two different candidates at random (seeded by the loop's seed and the prompt).
- `longer`: the longest candidate over the shortest (what a length-biased judge would pick).

Every arm pairs the same stored candidates of the same policy, so two loops that differ only in
`--pairs-by` train on pairs that differ only in how they were picked. Each arm's pairs are stored
under a pairer id of their own (`pairer_id`), which names the arm and the policy whose candidates
it paired.
"""

from __future__ import annotations

import random

from ipo_tui.errors import IpoError
from ipo_tui.judge import self_reward
from ipo_tui.judge.routing import category_for
from ipo_tui.judge.scoring import Judgement
from ipo_tui.loop.stages import PairReport, Policy, Progress, each_prompt
from ipo_tui.workspace.store import Store

RULES = ("random", "longer")  # pairers that read the texts only
CHOICES = ("ipo", "self-reward", *RULES)  # and judge:MODEL


def parse(value: str) -> str:
    """A --pairs-by value, checked: one of CHOICES or judge:MODEL."""
    if value in CHOICES or (value.startswith("judge:") and value.removeprefix("judge:").strip()):
        return value
    raise IpoError(f"--pairs-by {value!r}: choose ipo, random, longer, self-reward or judge:MODEL "
                   "(a GGUF file, HF folder or registered name)")


def pairer_id(pairs_by: str, policy: Policy, seed: int) -> str:
    """The judge column of a rule's or the self-reward arm's pairs (the judging arms use their Judge's id)."""
    if pairs_by == "random":
        return f"random#{seed}:{policy.judge_id}"
    return f"{pairs_by}:{policy.judge_id}"


def by_rule(store: Store, rule: str, pairer: str, policy: Policy, prompts, seed: int) -> PairReport:
    """Pairs picked from the texts alone: `random` (two different candidates) or `longer`."""
    report = PairReport()
    for prompt in prompts:
        rows = {r["text"]: r for r in store.candidates(prompt["id"], policy.model, policy.adapter) if r["text"].strip()}
        texts = sorted(rows, key=lambda t: rows[t]["sample_index"])  # distinct texts, in sample order
        if len(texts) < 2:
            report.too_few += 1
            continue
        if rule == "random":
            chosen, rejected = random.Random(f"{seed}:{prompt['id']}").sample(texts, 2)
            margin = 0.0
        else:
            chosen, rejected = max(texts, key=len), min(texts, key=len)
            margin = float(len(chosen) - len(rejected))
            if margin == 0:
                report.too_close += 1
                continue
        store.propose_pair(prompt["id"], pairer, rows[chosen]["id"], rows[rejected]["id"], margin)
        report.proposed += 1
    return report


def rate(store: Store, engine, pairer: str, policy: Policy, prompts,
         progress: Progress = lambda done, total: None) -> int:
    """The self-reward arm's judging: the policy rates each of its candidates 1-5, stored as a
    judgement by `pairer` whose score is the rating (so that build_pairs ranks by it). An unparsed
    rating is not stored and is asked again on a resume (greedy: the same answer)."""
    def one(prompt) -> int:
        rows = [r for r in store.judgements(prompt["id"], pairer, policy.model, policy.adapter)
                if r["score"] is None and r["text"].strip()]
        category = category_for(prompt["category"], prompt["text"])
        rated = []
        for row in rows:
            score, _ = self_reward.rate(engine, prompt["text"], row["text"])
            if score is not None:
                rated.append((row["candidate_id"], Judgement(row["text"], float(score), 1.0, category,
                                                             "self-reward", False)))
        store.add_judgements(pairer, rated, {"pairs_by": "self-reward", "rubric": "additive 1-5"})
        return len(rated)

    return each_prompt("self-reward", "ratings", prompts, progress, lambda chunk: sum(map(one, chunk)))
