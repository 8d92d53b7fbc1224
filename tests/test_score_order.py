"""One score orders every judgement: a fitted setting's weights scaled by a large positive factor
change no ranking, so they must change no eval verdict, no pair and no best-of-n pick, although
almost every p'yes is then exactly 1.0 (or 0.0) in floating point. The embedded model judges."""

import dataclasses

import pytest

from ipo_tui.backends import Sampling
from ipo_tui.evaluation.pairwise import best_of_n, evaluate
from ipo_tui.judge.scoring import Judge, ranked
from ipo_tui.judge.settings import CategorySetting, JudgeSettings
from ipo_tui.loop import stages
from ipo_tui.workspace.store import Store

FACTOR = 400.0
# the length term adds about +4 to a short answer: scores are positive, so ×400 puts p'yes at 1.0
FITTED = CategorySetting(("code", "code-bug"), weights=(1.0, -0.6), length_slope=0.5, length_centre=12.0)
PAIRS = [
    ("Write a Python function that returns the sum of a list.",
     "def total(xs):\n    return sum(xs)", "def total(xs):\n    return xs[0]"),
    ("Write a Python function that reverses a string.",
     "def rev(s):\n    return s[::-1]", "def rev(s):\n    return s"),
    ("Write a Python function that tells whether a number is even.",
     "def even(n):\n    return n % 2 == 0", "def even(n):\n    return n % 2 == 1"),
    ("Write a Python function that returns the largest item of a list.",
     "def largest(xs):\n    return max(xs)", "def largest(xs):\n    return min(xs)"),
]
ANSWERS = ["def square(x):\n    return x * x", "def square(x):\n    return x + x",
           "def square(x):\n    return x ** 2  # squared", "square = lambda x: x * 2"]


def scaled(setting: CategorySetting, factor: float) -> CategorySetting:
    return dataclasses.replace(setting, weights=tuple(w * factor for w in setting.weights),
                               length_slope=setting.length_slope * factor)


@pytest.fixture(scope="module")
def judges(llama_backend):
    return [Judge(llama_backend, settings=JudgeSettings({"code": s})) for s in (FITTED, scaled(FITTED, FACTOR))]


def test_scaled_weights_saturate_p_yes_but_not_the_score(judges):
    one, big = (j.score("Write a function that squares a number.", ANSWERS, "code") for j in judges)
    assert [b.score for b in big] == pytest.approx([FACTOR * o.score for o in one], rel=1e-6)
    assert len({b.p_yes for b in big}) < len(big)  # p'yes ties: ranking by it could not tell these apart
    assert [j.response for j in ranked(big)] == [j.response for j in ranked(one)]
    assert not any(j.probability for j in one + big)  # a combination: shown as a score, not as p'yes


def test_eval_verdicts_are_the_same_at_any_scale(judges):
    rows = [{"prompt": p, "chosen": c, "rejected": r, "subset": "hand", "category": "code"} for p, c, r in PAIRS]
    one, big = (evaluate(rows, "ipo", judge) for judge in judges)
    assert big.verdicts == one.verdicts and sum(one.verdicts) > 0  # some right: a tie would count as wrong


def test_pairs_are_the_same_at_any_scale(judges, llama_backend, tmp_path):
    store = Store(tmp_path / "ws.sqlite")
    store.add_prompt_set("code", "tests", [{"text": p, "category": "code"} for p, _, _ in PAIRS])
    prompts = store.prompts("code")
    policy = stages.policy_of(llama_backend)
    for prompt, (_, chosen, rejected) in zip(prompts, PAIRS):
        store.add_candidates(prompt["id"], policy.model, policy.adapter, {},
                             [(0, 0, rejected), (1, 1, chosen), (2, 2, chosen + "  # done")])
    picked = []
    for judge in judges:
        stages.judge(store, judge, policy, prompts, "code")
        report = stages.build_pairs(store, judge.id, policy, prompts, min_margin=0.0)
        assert report.proposed == len(PAIRS)  # no prompt dropped as a tie
        picked.append({r["prompt_id"]: (r["chosen"], r["rejected"], r["margin"]) for r in store.pairs(judge=judge.id)})
    one, big = picked
    assert {k: v[:2] for k, v in big.items()} == {k: v[:2] for k, v in one.items()}
    assert [big[k][2] for k in sorted(big)] == pytest.approx([FACTOR * one[k][2] for k in sorted(one)], rel=1e-6)
    store.close()


def test_best_of_n_picks_the_same_answer_at_any_scale(judges):
    sampling = Sampling(n=4, temperature=0.9, top_p=0.95, max_tokens=48, seed=7)
    one, big = (best_of_n(judge, "Write a Python function that squares a number.", sampling, "code") for judge in judges)
    assert [j.response for j in big] == [j.response for j in one]


def test_the_judge_reports_each_score_terms_share(llama_backend):
    """A reply PMI summed over the reply's tokens can carry most of a score: the judge says how much."""
    plain = Judge(llama_backend)
    plain.score("Write a function that squares a number.", ANSWERS, "code")
    plain.score("Name a primary color.", ["Red.", "Bananas."], "chat")
    assert plain.terms_report() is None  # one template's log-odds per category: nothing to apportion
    with_pmi = Judge(llama_backend, settings=JudgeSettings({"code": CategorySetting(("code",), reply_pmi=1.0)}))
    with_pmi.score("Write a function that squares a number.", ANSWERS, "code")
    pmi, _ = with_pmi.reply_pmi("Write a function that squares a number.", ANSWERS)
    assert with_pmi.term_sizes["code"]["reply PMI"] == pytest.approx(float(abs(pmi).sum()))
    report = with_pmi.terms_report()
    assert report.startswith("code score terms on the 4 responses judged") and "reply PMI" in report
