"""generate -> judge -> pair for a prompt set, resumable: each step does only what is missing.

Each prompt's samples, judgements and pair are written in one transaction, so a kill loses at
most the prompts in flight, and a rerun picks up where the last one stopped. A prompt whose work
fails (an IpoError: a server that stopped answering, a prompt it refuses) is skipped and reported
at the end, after the others are done and stored; three failures in a row stop the run.
"""

from __future__ import annotations

import contextlib
from operator import itemgetter
from collections.abc import Callable
from dataclasses import dataclass

from ipo_tui.backends.base import Backend, Sampling, sample_seed
from ipo_tui.errors import IpoError
from ipo_tui.judge.routing import category_for
from ipo_tui.judge.scoring import Judge, Judgement, margin, ranked
from ipo_tui.workspace import locks
from ipo_tui.workspace.store import Store

Progress = Callable[[int, int], None]  # (done, total)
FAILURES_IN_A_ROW = 3  # then the backend is failing everything (a server down): stop asking


@dataclass(frozen=True)
class Policy:
    """Which weights produced a candidate or a judgement: the model plus an adapter ('' for none)."""

    model: str
    adapter: str = ""

    @property
    def judge_id(self) -> str:
        return f"{self.model}+{self.adapter}" if self.adapter else self.model


class PartialRun(IpoError):
    """Some prompts failed; what the others did is stored, so a rerun does only what is missing.
    `failed` holds (prompt row, reason) for each failed prompt."""

    def __init__(self, step: str, done: str, failed: list, total: int, stopped: bool):
        self.failed = failed
        prompt, why = failed[0]
        text = " ".join(prompt["text"].split())
        what = (f"stopped after {len(failed)} prompts failed in a row" if stopped
                else f"{len(failed)} of {total} prompts failed")
        super().__init__(f"{step}: {what} ({done} stored; rerun to do the rest). First failure, prompt "
                         f"{prompt['position'] + 1} ({text[:40] + '...' if len(text) > 40 else text!r}): {why}")


def each_prompt(step: str, noun: str, prompts, progress: Progress, work: Callable[[list], int],
                per_call: int = 1) -> int:
    """Sum of work(chunk) over consecutive chunks of `per_call` prompts (how many `noun` it stored);
    a failing chunk's prompts are skipped and reported at the end. Progress counts the prompts this
    run works on: a chunk that stores nothing (a rerun's prompts, stored already) leaves both counts,
    so that the rate, and the time left read from it, are this run's."""
    done, failed, in_a_row, stored, prompts = 0, [], 0, 0, list(prompts)
    for start in range(0, len(prompts), per_call):
        chunk = prompts[start:start + per_call]
        try:
            added = work(chunk)
        except IpoError as exc:
            failed += [(prompt, str(exc)) for prompt in chunk]
            in_a_row += 1
            if in_a_row >= FAILURES_IN_A_ROW:
                raise PartialRun(step, f"{done} new {noun}", failed, len(prompts), stopped=True) from exc
        else:
            done, in_a_row = done + added, 0
            stored += 0 if added else len(chunk)
        progress(start + len(chunk) - stored, len(prompts) - stored)
    if failed:
        raise PartialRun(step, f"{done} new {noun}", failed, len(prompts), stopped=False)
    return done


def generate(store: Store, backend: Backend, policy: Policy, prompts, n: int, sampling: Sampling,
             progress: Progress = lambda done, total: None) -> int:
    """Sample until every prompt has `n` candidates from `policy`; returns how many were added.
    Prompts go to the backend as many at a time as its batch holds (`generate_rows`)."""
    def some(chunk) -> int:
        todo = []
        for prompt in chunk:
            missing = sorted(set(range(n)) - store.sample_indices(prompt["id"], policy.model, policy.adapter))
            if missing:
                # the seed depends on the prompt and sample only: engines that seed each sample
                # (llama.cpp, servers) sample the same texts when a run resumes; sample_seed keeps
                # it in [0, 2**31), where no engine reads it as "random" (llama.cpp's -1)
                todo.append((prompt, missing, sample_seed(sampling.seed, 1009 * prompt["position"] + missing[0])))
        if not todo:
            return 0
        results = backend.generate_many([
            ([{"role": "user", "content": prompt["text"]}],
             Sampling(len(missing), sampling.temperature, sampling.top_p, sampling.max_tokens, seed))
            for prompt, missing, seed in todo])
        for (prompt, missing, seed), texts in zip(todo, results):
            store.add_candidates(prompt["id"], policy.model, policy.adapter, _settings(sampling),
                                 [(index, sample_seed(seed, i), text) for i, (index, text) in enumerate(zip(missing, texts))])
        return sum(len(missing) for _, missing, _ in todo)

    with stage_held(store, "generate", prompts):
        return each_prompt("generate", "candidates", prompts, progress, some, max(1, backend.generate_rows // n))


def judge(store: Store, judge: Judge, policy: Policy, prompts, category: str | None = None,
          progress: Progress = lambda done, total: None, as_judge: str | None = None) -> int:
    """Score every candidate of `policy` that this judge (its policy and settings: `judge.id`, or
    `as_judge`) has not scored yet; returns how many were stored. A judgement with no Yes/No among
    a server's top logprobs is not stored (it has no score): `judge.missing` counts those."""
    judge_id, settings = as_judge or judge.id, judge.describe()

    def one(prompt) -> int:
        rows = [r for r in store.judgements(prompt["id"], judge_id, policy.model, policy.adapter)
                if r["score"] is None and r["text"].strip()]
        if not rows:
            return 0
        results = judge.score(prompt["text"], [r["text"] for r in rows],
                              category or category_for(prompt["category"], prompt["text"], judge.route))
        scored = [(r["candidate_id"], j) for r, j in zip(rows, results) if not j.missing]
        store.add_judgements(judge_id, scored, settings)
        return len(scored)

    with stage_held(store, "judge", prompts):
        return each_prompt("judge", "judgements", prompts, progress, lambda chunk: sum(map(one, chunk)))


def stage_held(store: Store, stage: str, prompts):
    """The stage's lock on the prompts' set: one process at a time generates (or judges) a set, so
    two never sample the same missing candidates or report each other's rows."""
    if not prompts:
        return contextlib.nullcontext()
    store.check_writable()  # before the lock file is made beside a workspace that may not be written
    set_id = prompts[0]["set_id"]
    return locks.held(locks.stage_lock(store.path, stage, set_id),
                      f"{stage} on prompt set {store.prompt_set_name(set_id)!r}")


@dataclass
class PairReport:
    proposed: int = 0
    too_close: int = 0  # margin below the threshold, ties included
    too_few: int = 0  # fewer than two judged candidates


def build_pairs(store: Store, judge_id: str, policy: Policy, prompts, min_margin: float,
                pairwise=None) -> PairReport:
    """chosen = highest score, rejected = lowest; pairs whose score spread (in log-odds) is below
    `min_margin` (or tied) are dropped. With a `pairwise` judge (judge/pairwise.py), it re-ranks the
    top two (the better is chosen) and the bottom two (the worse is rejected), both orders asked."""
    report = PairReport()
    for prompt in prompts:
        rows = [r for r in store.judgements(prompt["id"], judge_id, policy.model, policy.adapter) if r["score"] is not None]
        if len(rows) < 2:
            report.too_few += 1
            continue
        rows = ranked(rows, itemgetter("score"))
        best, worst = rows[0], rows[-1]
        spread = margin(best["score"], worst["score"])
        if pairwise is not None:
            top, bottom = rows[:2], rows[-2:]
            if pairwise.compare(prompt["text"], top[1]["text"], top[0]["text"]).margin > 0:
                best = top[1]
            if len(rows) == 2:
                worst = top[0] if best is top[1] else top[1]
            elif pairwise.compare(prompt["text"], bottom[0]["text"], bottom[1]["text"]).margin < 0:
                worst = bottom[0]
            if best is worst:  # three candidates, the middle one both better and worse: keep the score's pick
                best, worst = rows[0], rows[-1]
        if spread <= 0 or spread < min_margin:
            report.too_close += 1
            continue
        store.propose_pair(prompt["id"], judge_id, best["candidate_id"], worst["candidate_id"],
                           margin(best["score"], worst["score"]),  # below 0 where the pairwise judge overruled it
                           best["category"])
        report.proposed += 1
    return report


def policy_of(backend: Backend) -> Policy:
    return Policy(backend.ref.identity, backend.adapter)


def _settings(sampling: Sampling) -> dict:
    return {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens}


LAB_SET = "lab"  # the prompt set that pairs scored by hand join


@dataclass(frozen=True)
class ScoredCandidate:
    """A candidate scored outside a pipeline run (the app's score lab), with where it came from."""

    text: str
    model: str  # the model that generated it, or "typed"
    adapter: str
    seed: int
    judgement: Judgement


def save_scored_pair(store: Store, judge: Judge, instruction: str, category: str, candidates: list[ScoredCandidate],
                     positions: list[int], best: int, worst: int) -> tuple[int, bool]:
    """Store every candidate (sample index = its position where free), its judgement, and
    (candidates[best], candidates[worst]) as an accepted pair in the LAB_SET prompt set, in one
    transaction. The pair's id, and whether it is new: the same prompt saved again under the same
    judge updates its pair (and reuses the candidates already stored), never doubles it."""
    rows = [(c.model, c.adapter, position, c.seed, c.text, c.judgement) for position, c in zip(positions, candidates)]
    return store.save_chosen_pair(LAB_SET, instruction, category, judge.id, judge.describe(), rows, best, worst,
                                  margin(candidates[best].judgement.score, candidates[worst].judgement.score))
