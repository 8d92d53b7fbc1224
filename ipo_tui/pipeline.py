"""generate -> judge -> pair for a prompt set, resumable: each step does only what is missing.

Each prompt's samples, judgements and pair are written in one transaction, so a kill loses at
most the prompt in flight, and a rerun picks up where the last one stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ipo_tui.backends.base import Backend, Sampling
from ipo_tui.categories import category_for
from ipo_tui.judge import Judge
from ipo_tui.store import Store

Progress = Callable[[int, int], None]  # (done, total)


@dataclass(frozen=True)
class Policy:
    """Which weights produced a candidate or a judgement: the model plus an adapter ('' for none)."""

    model: str
    adapter: str = ""

    @property
    def judge_id(self) -> str:
        return f"{self.model}+{self.adapter}" if self.adapter else self.model


def generate(store: Store, backend: Backend, policy: Policy, prompts, n: int, sampling: Sampling,
             progress: Progress = lambda done, total: None) -> int:
    """Sample until every prompt has `n` candidates from `policy`; returns how many were added."""
    added = 0
    for done, prompt in enumerate(prompts, 1):
        missing = sorted(set(range(n)) - store.sample_indices(prompt["id"], policy.model, policy.adapter))
        if missing:
            # the seed depends on the prompt and sample only, so a resumed run samples the same texts
            seed = sampling.seed + 1009 * prompt["position"] + missing[0]
            texts = backend.generate([{"role": "user", "content": prompt["text"]}],
                                     Sampling(len(missing), sampling.temperature, sampling.top_p, sampling.max_tokens, seed))
            store.add_candidates(prompt["id"], policy.model, policy.adapter, _settings(sampling),
                                 [(index, seed + i, text) for i, (index, text) in enumerate(zip(missing, texts))])
            added += len(missing)
        progress(done, len(prompts))
    return added


def judge(store: Store, judge: Judge, policy: Policy, prompts, category: str | None = None,
          progress: Progress = lambda done, total: None) -> int:
    """Score every candidate of `policy` that `judge`'s policy has not scored yet."""
    judge_id = policy_of(judge.backend).judge_id
    scored = 0
    for done, prompt in enumerate(prompts, 1):
        rows = [r for r in store.judgements(prompt["id"], judge_id, policy.model, policy.adapter)
                if r["p_yes"] is None and r["text"].strip()]
        if rows:
            results = judge.score(prompt["text"], [r["text"] for r in rows],
                                  category or category_for(prompt["category"], prompt["text"]))
            store.add_judgements(judge_id, [(r["candidate_id"], j) for r, j in zip(rows, results)])
            scored += len(rows)
        progress(done, len(prompts))
    return scored


@dataclass
class PairReport:
    proposed: int = 0
    too_close: int = 0  # margin below the threshold, ties included
    too_few: int = 0  # fewer than two judged candidates


def build_pairs(store: Store, judge_id: str, policy: Policy, prompts, min_margin: float) -> PairReport:
    """chosen = highest p'yes, rejected = lowest; pairs closer than `min_margin` (or tied) are dropped."""
    report = PairReport()
    for prompt in prompts:
        rows = [r for r in store.judgements(prompt["id"], judge_id, policy.model, policy.adapter) if r["p_yes"] is not None]
        if len(rows) < 2:
            report.too_few += 1
            continue
        best = max(rows, key=lambda r: r["p_yes"])
        worst = min(rows, key=lambda r: r["p_yes"])
        margin = best["p_yes"] - worst["p_yes"]
        if margin <= 0 or margin < min_margin:
            report.too_close += 1
            continue
        store.propose_pair(prompt["id"], judge_id, best["candidate_id"], worst["candidate_id"], margin)
        report.proposed += 1
    return report


def policy_of(backend: Backend) -> Policy:
    return Policy(backend.ref.identity, backend.adapter)


def _settings(sampling: Sampling) -> dict:
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}
