"""Choosing a judge setting per category on labelled pairs, with k-fold cross-validation.

Every setting is a function of a few numbers per pair (`Features`: each candidate template's raw
margin for both replies, the same under a content-free instruction, the replies' lengths, the
pairwise verdicts, and each reply's PMI with its instruction), so the model runs once per pair and
template; those numbers are cached on disk per model and template (and for the pairwise prompt and
the reply PMI), so a search resumes where it stopped and a template added to the candidates
measures only itself.

Besides the hand-written settings (subsets of the templates, a PMI weight, length control), the
search fits a weight per template (and per content-free margin, or on the reply PMI) by logistic
regression on the pairs: a stacked ensemble that learns which templates the model answers well and
which it answers the wrong way round. Whether the fit or a hand-written setting is used is decided
by cross-validation inside the pairs it is given.

The figure a search reports for its choice is cross-validated: for each fold, the setting is
chosen on the other folds and scored on this one, so no pair is scored by a setting it chose.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np

from ipo_tui.errors import IpoError
from ipo_tui.judge import pairwise
from ipo_tui.judge.routing import category_for
from ipo_tui.judge.scoring import CONTENT_FREE, combine, log_length
from ipo_tui.judge.settings import CategorySetting

PMI_WEIGHTS = (0.0, 0.5, 1.0)
SEARCH = "search, cross-validated"
FITTED = "fitted weights"
FOLDS = 5
WEIGHT_PRIOR = 1.0  # the L2 penalty of fitted weights, in log-odds units


@dataclass
class Features:
    """The numbers of one category's pairs: arrays of shape (templates, pairs) or (pairs,)."""

    templates: list  # Template objects, the category's own first
    chosen: np.ndarray
    rejected: np.ndarray
    base_chosen: np.ndarray
    base_rejected: np.ndarray
    len_chosen: np.ndarray
    len_rejected: np.ndarray
    pairwise: np.ndarray  # (pairs, 2): d1, d2 with the chosen reply shown first; NaN when not measured
    reply: np.ndarray | None = None  # (pairs, 4): each reply's PMI with the instruction and tokens, chosen's first

    @property
    def has_reply_pmi(self) -> bool:
        return self.reply is not None

    def reply_pmi(self, side: str, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(PMI, tokens) of the chosen or the rejected reply of the pairs in `idx`, if measured."""
        if self.reply is None:
            return None
        at = 0 if side == "chosen" else 2
        return self.reply[idx, at], self.reply[idx, at + 1]

    @property
    def n(self) -> int:
        return self.chosen.shape[1]


def pair_key(row: dict) -> str:
    return hashlib.sha1(json.dumps([row["prompt"], row["chosen"], row["rejected"]]).encode()).hexdigest()[:16]


class FeatureCache:
    """Measured numbers per pair, one JSON line each, in a file named for what measured them (a model
    and one template's texts, or the pairwise prompt): a change of wording is a new file, and a
    template added to a search measures only itself."""

    def __init__(self, folder: Path, *what) -> None:
        self.path = folder / f"{hashlib.sha1(json.dumps(what).encode()).hexdigest()[:16]}.jsonl"
        self.known: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: measured again
                    continue
                self.known[record["key"]] = record

    def get(self, key: str, measure: Callable[[], dict]) -> dict:
        if key not in self.known:
            self.known[key] = {**measure(), "key": key}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as fh:
                fh.write(json.dumps(self.known[key]) + "\n")
        return self.known[key]


def template_cache(folder: Path, model_id: str, template) -> FeatureCache:
    return FeatureCache(folder, model_id, [template.name, template.system, template.user, template.polarity])


def pairwise_cache(folder: Path, model_id: str) -> FeatureCache:
    return FeatureCache(folder, model_id, "pairwise", pairwise.SYSTEM, pairwise.USER)


def reply_cache(folder: Path, model_id: str) -> FeatureCache:
    return FeatureCache(folder, model_id, "reply-pmi", CONTENT_FREE)


def extract(judge, rows: list[dict], templates: list, folder: Path, pairwise_judge=None, reply_pmi: bool = False,
            progress: Callable[[int, int], None] = lambda done, total: None) -> Features:
    """The features of `rows` (pairs of one category) under `templates` (with the pairwise verdicts
    and the replies' PMI when asked), read from the caches in `folder` where present and added to
    them as they are measured."""
    caches = [template_cache(folder, judge.policy, t) for t in templates]
    verdict_cache = pairwise_cache(folder, judge.policy) if pairwise_judge is not None else None
    pmi_cache = reply_cache(folder, judge.policy) if reply_pmi else None
    records, verdicts, replies = [], [], []
    for done, row in enumerate(rows, 1):
        key = pair_key(row)
        records.append([c.get(key, lambda t=t, row=row: _measure(judge, row, t)) for c, t in zip(caches, templates)])
        if verdict_cache is not None:
            verdicts.append(verdict_cache.get(key, lambda row=row: {"pairwise": list(
                pairwise_judge.raw(row["prompt"], row["chosen"], row["rejected"]))})["pairwise"])
        if pmi_cache is not None:
            replies.append(pmi_cache.get(key, lambda row=row: _measure_reply(judge, row))["reply"])
        progress(done, len(rows))
    nan = [float("nan")] * 2
    return Features(
        templates,
        *(np.array([[r[field] for r in pair] for pair in records], dtype=np.float64).reshape(len(rows), len(templates)).T
          for field in ("chosen", "rejected", "base_chosen", "base_rejected")),
        log_length([row["chosen"] for row in rows]), log_length([row["rejected"] for row in rows]),
        np.array(verdicts or [nan] * len(rows), dtype=np.float64).reshape(len(rows), 2),
        np.array(replies, dtype=np.float64).reshape(len(rows), 4) if reply_pmi else None,
    )


def _measure(judge, row: dict, template) -> dict:
    """One template's raw margin for both replies of a pair, and the same under a content-free instruction."""
    replies = [row["chosen"], row["rejected"]]
    margin, _, _ = judge.margins(template, row["prompt"], replies)
    base = judge.baselines(template, replies)
    return {"chosen": float(margin[0]), "rejected": float(margin[1]),
            "base_chosen": float(base[0]), "base_rejected": float(base[1])}


def _measure_reply(judge, row: dict) -> dict:
    """Both replies' (PMI with the instruction, tokens), chosen's first."""
    pmi, tokens = judge.reply_pmi(row["prompt"], [row["chosen"], row["rejected"]])
    return {"reply": [float(pmi[0]), float(tokens[0]), float(pmi[1]), float(tokens[1])]}


# --- settings as functions of the features --------------------------------------------------------


def margins(f: Features, setting: CategorySetting, idx: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The setting's margin for the chosen and the rejected reply of each pair (in `idx`)."""
    idx = np.arange(f.n) if idx is None else idx
    index = {t.name: i for i, t in enumerate(f.templates)}
    picked = [index[name] for name in setting.templates]  # in the setting's order: fitted weights follow it
    signs = [f.templates[i].sign for i in picked]
    out = []
    for side, m, b, length in (("chosen", f.chosen, f.base_chosen, f.len_chosen),
                               ("rejected", f.rejected, f.base_rejected, f.len_rejected)):
        out.append(combine([m[i, idx] for i in picked], [b[i, idx] for i in picked], signs, length[idx], setting,
                           f.reply_pmi(side, idx)))
    return out[0], out[1]


def correct(f: Features, setting: CategorySetting, idx: np.ndarray | None = None) -> np.ndarray:
    chosen, rejected = margins(f, setting, idx)
    return chosen > rejected  # a tie (or NaN) counts wrong, as in `ipo eval`


def fit_length(f: Features, setting: CategorySetting, idx: np.ndarray) -> CategorySetting:
    """The setting with a length slope: the within-pair regression of the margin difference on the
    log-length difference over the pairs in `idx`. Label-free (swapping a pair's replies flips both
    differences), so it may be fit on any pairs; the centre is their mean log length."""
    plain = CategorySetting(setting.templates, setting.pmi)
    chosen, rejected = margins(f, plain, idx)
    dm, dl = chosen - rejected, f.len_chosen[idx] - f.len_rejected[idx]
    keep = np.isfinite(dm)
    slope = float((dm[keep] * dl[keep]).sum() / (dl[keep] ** 2).sum()) if (dl[keep] ** 2).sum() > 0 else 0.0
    centre = float(np.concatenate([f.len_chosen[idx], f.len_rejected[idx]]).mean())
    return CategorySetting(setting.templates, setting.pmi, round(slope, 4), round(centre, 4))


def fit_weights(f: Features, idx: np.ndarray, baselines: bool, reply: bool = False) -> CategorySetting:
    """Every template's weight (and, with `baselines`, its content-free margin's weight; with
    `reply`, the weights of the replies' PMI and PMI per token) and a length slope, fitted to the
    labelled pairs in `idx` by logistic regression on the within-pair differences (Bradley-Terry
    without an intercept: a pair's two replies may come in either order), with a Gaussian prior of
    scale 1 on each weight (an L2 penalty of WEIGHT_PRIOR) so that a few dozen pairs cannot push a
    weight far. The signs are free: the fit finds a template's polarity."""
    columns = [f.chosen[:, idx] - f.rejected[:, idx]]
    if baselines:
        columns.append(f.base_rejected[:, idx] - f.base_chosen[:, idx])  # subtracted in the margin
    if reply:
        (pmi_c, tokens_c), (pmi_r, tokens_r) = f.reply_pmi("chosen", idx), f.reply_pmi("rejected", idx)
        columns.append(np.stack([pmi_c - pmi_r, pmi_c / tokens_c - pmi_r / tokens_r]))
    columns.append((f.len_rejected[idx] - f.len_chosen[idx])[None, :])  # subtracted in the margin
    x = np.concatenate(columns).T
    x = x[np.isfinite(x).all(axis=1)]
    w = np.zeros(x.shape[1])
    for _ in range(50):  # Newton's method on a concave objective: a handful of steps converge
        p = 1.0 / (1.0 + np.exp(-x @ w))
        gradient = x.T @ (1.0 - p) - WEIGHT_PRIOR * w
        hessian = (x.T * (p * (1.0 - p))) @ x + WEIGHT_PRIOR * np.eye(len(w))
        step = np.linalg.solve(hessian, gradient)
        w += step
        if np.abs(step).max() < 1e-8:
            break
    k = len(f.templates)
    centre = float(np.concatenate([f.len_chosen[idx], f.len_rejected[idx]]).mean())
    reply_weights = [round(float(v), 4) for v in w[-3:-1]] if reply else [0.0, 0.0]
    return CategorySetting(tuple(t.name for t in f.templates), length_slope=round(float(w[-1]), 4),
                           length_centre=round(centre, 4), weights=tuple(round(float(v), 4) for v in w[:k]),
                           pmi_weights=tuple(round(float(v), 4) for v in w[k:2 * k]) if baselines else (),
                           reply_pmi=reply_weights[0], reply_pmi_per_token=reply_weights[1])


def candidates(f: Features) -> list[tuple[CategorySetting, bool]]:
    """Every (setting, length control) the search considers, simplest first: the category's own
    template alone (the plain recipe), then by how many things a setting adds."""
    names = [t.name for t in f.templates]
    subsets = [c for k in range(1, len(names) + 1) for c in itertools.combinations(names, k)]
    every = [(CategorySetting(s, pmi), length) for length in (False, True) for pmi in PMI_WEIGHTS for s in subsets]
    return sorted(every, key=lambda c: len(c[0].templates) - 1 + (c[0].pmi > 0) + c[1])


def choose(f: Features, idx: np.ndarray) -> CategorySetting:
    """The setting for the pairs in `idx`: the one-standard-error rule among the hand-written
    settings (`choose_setting`), or weights fitted to the pairs (`fit_weights`: the templates alone,
    with the replies' PMI where it was measured, with the content-free margins), whichever does best
    on `idx` by an inner FOLDS-fold cross-validation, again the simplest within one standard error of
    the best. A fitted model's accuracy on the pairs it was fitted on would flatter it, so they are
    compared only on pairs each was not chosen on."""
    choosers = [choose_setting, lambda f_, i: fit_weights(f_, i, False)]
    if f.has_reply_pmi:
        choosers.append(lambda f_, i: fit_weights(f_, i, False, reply=True))
    choosers.append(lambda f_, i: fit_weights(f_, i, True))
    if len(idx) < 2 * FOLDS:  # too few pairs to cross-validate inside: the hand-written settings alone
        return choose_setting(f, idx)
    accuracy = [cross_validate(f, FOLDS, chooser, idx) / len(idx) for chooser in choosers]
    best = max(accuracy)
    tolerance = float(np.sqrt(best * (1 - best) / len(idx)))
    return next(chooser for chooser, a in zip(choosers, accuracy) if a >= best - tolerance)(f, idx)


def choose_setting(f: Features, idx: np.ndarray) -> CategorySetting:
    """The simplest hand-written setting whose accuracy on the pairs in `idx` is within one standard
    error of the best one's (the one-standard-error rule): among some forty settings and a few dozen
    pairs, the best by a pair or two is as often luck as merit, and a simpler setting transfers
    better. Length slopes are fit on the same pairs."""
    scored = []
    for setting, length in candidates(f):
        resolved = fit_length(f, setting, idx) if length else setting
        scored.append((float(correct(f, resolved, idx).mean()), resolved))
    best = max(accuracy for accuracy, _ in scored)
    tolerance = float(np.sqrt(best * (1 - best) / len(idx)))
    return next(setting for accuracy, setting in scored if accuracy >= best - tolerance)


def folds(n: int, k: int = FOLDS) -> list[np.ndarray]:
    """k folds by position (pair i goes to fold i mod k): a file grouped by subset spreads each
    subset over every fold."""
    if n < k:
        raise IpoError(f"{n} pairs cannot be split into {k} folds; give more pairs or fewer --folds")
    return [np.arange(i, n, k) for i in range(k)]


def cross_validate(f: Features, k: int = FOLDS, chooser: Callable = choose, idx: np.ndarray | None = None,
                   fold_done: Callable[[], None] = lambda: None) -> int:
    """Pairs right on held-out folds of `idx` (all pairs by default), each fold judged by a setting
    `chooser` picked on the other folds only; `fold_done` is called after each fold."""
    right = 0
    idx = np.arange(f.n) if idx is None else idx
    parts = [idx[p] for p in folds(len(idx), k)]
    for i, held in enumerate(parts):
        train = np.concatenate([p for j, p in enumerate(parts) if j != i])
        right += int(correct(f, chooser(f, train), held).sum())
        fold_done()
    return right


@dataclass
class Technique:
    name: str
    right: int
    n: int
    note: str = ""


def techniques(f: Features, chosen: CategorySetting, k: int = FOLDS,
               progress: Callable[[int, int], None] = lambda done, total: None) -> list[Technique]:
    """Each technique on its own against the plain recipe, and the search's cross-validated choice
    (`chosen` is what it picks on all the pairs). A technique with nothing to fit is measured on all
    pairs; one that fits (length control, the search) is cross-validated, its folds counted in
    `progress` (done, total)."""
    fits = [(False, False, FITTED), (True, False, FITTED + " + content-free")]
    if f.has_reply_pmi:
        fits.insert(1, (False, True, FITTED + " + reply PMI"))
    folds_done, total = itertools.count(1), k * (len(fits) + 2)  # length control, each fit, the search

    def fold_done() -> None:
        progress(next(folds_done), total)

    own = f.templates[0].name
    plain = CategorySetting((own,))
    rows = [Technique(f"plain ({own})", int(correct(f, plain).sum()), f.n)]
    rows.append(Technique("pmi baseline 1.0", int(correct(f, CategorySetting((own,), 1.0)).sum()), f.n))
    everything = CategorySetting(tuple(t.name for t in f.templates))
    rows.append(Technique(f"ensemble of {len(f.templates)}", int(correct(f, everything).sum()), f.n,
                          "+".join(everything.templates)))
    for t in f.templates[1:]:
        if t.polarity == "negative":
            rows.append(Technique(f"negative: {t.name}", int(correct(f, CategorySetting((t.name,))).sum()), f.n))
    lc = cross_validate(f, k, lambda f_, idx: fit_length(f_, plain, idx), fold_done=fold_done)
    rows.append(Technique("length control", lc, f.n, "slope fit on the other folds"))
    if f.has_reply_pmi:
        (pmi_c, tokens_c), (pmi_r, tokens_r) = f.reply_pmi("chosen", np.arange(f.n)), f.reply_pmi("rejected", np.arange(f.n))
        rows.append(Technique("reply PMI", int((pmi_c > pmi_r).sum()), f.n, "log p(reply | instruction) - log p(reply | N/A)"))
        rows.append(Technique("reply PMI per token", int((pmi_c / tokens_c > pmi_r / tokens_r).sum()), f.n))
    for baselines, reply, name in fits:
        right = cross_validate(f, k, lambda f_, idx, b=baselines, r=reply: fit_weights(f_, idx, b, r),
                               fold_done=fold_done)
        rows.append(Technique(name, right, f.n, "weights fit on the other folds"))
    if np.isfinite(f.pairwise).all():
        d1, d2 = f.pairwise[:, 0], f.pairwise[:, 1]
        consistent = float(((d1 > 0) != (d2 > 0)).mean())
        rows.append(Technique("pairwise, both orders", int(((d1 - d2) / 2 > 0).sum()), f.n,
                              f"{consistent:.0%} position-consistent"))
    right = cross_validate(f, k, fold_done=fold_done)
    rows.append(Technique(SEARCH, right, f.n, f"on all pairs it chooses {chosen.describe()}"))
    return rows


def router_accuracy(rows: list[dict], routers: dict[str, Callable[[str], str]],
                    progress: Callable[[int, int], None] = lambda done, total: None) -> dict[str, tuple[int, int]]:
    """{router name: (prompts routed to their labelled category, prompts)} over rows with a label."""
    labelled = [(r["prompt"], category_for(r["category"], r["prompt"])) for r in rows if r.get("category")]
    right = dict.fromkeys(routers, 0)
    for done, (prompt, truth) in enumerate(labelled, 1):
        for name, router in routers.items():
            right[name] += router(prompt) == truth
        progress(done, len(labelled))
    return {name: (count, len(labelled)) for name, count in right.items()}


def by_category(pairs: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in pairs:
        groups[category_for(row["category"], row["prompt"])].append(row)
    return dict(groups)
