"""Pairwise accuracy of a judge on RewardBench-format pairs (prompt, chosen, rejected, subset,
category?): per subset and per category, ties counted wrong."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from collections.abc import Callable

from ipo_tui.errors import IpoError
from ipo_tui.evaluation.stats import spread, wilson
from ipo_tui.judge.routing import category_for
from ipo_tui.workspace.records import read_records, text_field

JUDGES = ("ipo", "self-reward")


@dataclass
class EvalResult:
    judge: str
    pairs: int = 0
    correct: int = 0
    by_subset: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0]))  # name -> [correct, total]
    by_category: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    masses: list = field(default_factory=list)
    parse_failures: int = 0
    missing: int = 0  # ipo through a server: neither Yes nor No among the top logprobs (counted wrong)
    seconds: float = 0.0
    settings: dict | None = None  # the ipo judge's settings
    position: dict | None = None  # pairwise mode: how far the verdicts follow the position
    warning: str | None = None
    verdicts: list = field(default_factory=list)  # 1 where the pair was judged right, in the pairs' order

    @property
    def accuracy(self) -> float:
        return self.correct / self.pairs if self.pairs else 0.0

    def as_dict(self) -> dict:
        return {
            "judge": self.judge, "pairs": self.pairs, "accuracy": self.accuracy,
            "interval95": wilson(self.correct, self.pairs),
            "by_category_interval95": {k: wilson(c, t) for k, (c, t) in sorted(self.by_category.items())},
            "by_category": {k: c / t for k, (c, t) in sorted(self.by_category.items())},
            "by_subset": {k: c / t for k, (c, t) in sorted(self.by_subset.items())},
            "mean_mass": sum(self.masses) / len(self.masses) if self.masses else None,
            "parse_failures": self.parse_failures if self.judge == "self-reward" else None,
            "missing": self.missing if self.judge == "ipo" else None,
            "pairs_per_s": self.pairs / self.seconds if self.seconds else None,
            "judge_settings": self.settings, "position": self.position,
            "verdicts": self.verdicts,  # two runs on the same pairs can be compared pair by pair (McNemar)
        }


def load_pairs(source: str, limit: int | None = None) -> list[dict]:
    """The pairs of a file; with `limit`, a fixed sample spread evenly over the file (which keeps
    every subset of a file grouped by subset)."""
    rows = []
    for where, row in read_records(source):
        rows.append({"prompt": text_field(where, row, "prompt"), "chosen": text_field(where, row, "chosen"),
                     "rejected": text_field(where, row, "rejected"), "subset": str(row.get("subset") or "all"),
                     "category": row.get("category")})
    if not rows:
        raise IpoError(f"{source} holds no pairs")
    return spread(rows, limit)


def evaluate(pairs: list[dict], judge_name: str, judge=None, backend=None,
             progress: Callable[[int, int], None] = lambda done, total: None, pairwise=None) -> EvalResult:
    """Score each pair with the IPO judge (a `Judge`; in pairwise mode through `pairwise`, a
    PairwiseJudge made on the judge's backend unless given) or the self-reward baseline (a backend)."""
    if judge_name not in JUDGES:
        raise IpoError(f"unknown judge {judge_name!r}: choose ipo or self-reward")
    from ipo_tui.judge import self_reward
    from ipo_tui.judge.scoring import prefers

    result = EvalResult(judge_name, settings=judge.describe() if judge_name == "ipo" else None)
    if judge_name != "ipo" or judge.settings.mode != "pairwise":
        pairwise = None
    elif pairwise is None:
        from ipo_tui.judge.pairwise import PairwiseJudge

        pairwise = PairwiseJudge(judge.backend)
    start = time.perf_counter()
    for done, row in enumerate(pairs, 1):
        category = category_for(row["category"], row["prompt"])
        if pairwise is not None:
            good = pairwise.compare(row["prompt"], row["chosen"], row["rejected"]).margin > 0
        elif judge_name == "ipo":
            chosen, rejected = judge.score(row["prompt"], [row["chosen"], row["rejected"]], category)
            result.masses += [chosen.mass, rejected.mass]
            result.missing += chosen.missing + rejected.missing
            good = prefers(chosen.score, rejected.score)  # a tie or a missing score is not right
        else:
            chosen, _ = self_reward.rate(backend, row["prompt"], row["chosen"])
            rejected, _ = self_reward.rate(backend, row["prompt"], row["rejected"])
            result.parse_failures += (chosen is None) + (rejected is None)
            good = chosen is not None and rejected is not None and chosen > rejected
        result.pairs += 1
        result.correct += good
        result.verdicts.append(int(good))
        label = row["category"] or category
        for table, key in ((result.by_subset, row["subset"]), (result.by_category, label)):
            table[key][0] += good
            table[key][1] += 1
        progress(done, len(pairs))
    result.seconds = time.perf_counter() - start
    if pairwise is not None:
        result.position, result.warning = pairwise.report.as_dict(), pairwise.report.warning
    return result


def best_of_n(judge, prompt: str, sampling, category: str | None = None) -> list:
    """`sampling.n` answers sampled from the judge's own model, ranked by the judge's score (best first)."""
    from ipo_tui.judge.routing import route

    answers = [a for a in judge.backend.generate([{"role": "user", "content": prompt}], sampling) if a.strip()]
    if not answers:
        raise IpoError("the model produced only empty answers; raise --max-tokens or --temperature")
    from ipo_tui.judge.scoring import ranked

    return ranked(judge.score(prompt, answers, category or route(prompt)))
