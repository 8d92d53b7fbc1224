"""The judge settings change the margin the way they claim: calibration, the PMI baseline, template
ensembles, polarity, length control, weights fitted to labelled pairs, the pairwise swap, the model
router, and a search whose cross-validation never scores a pair with a setting chosen on it."""

import math

import numpy as np
import pytest
import yaml

from ipo_tui.errors import IpoError
from ipo_tui.evaluation import search
from ipo_tui.judge import pairwise
from ipo_tui.judge.scoring import CONTENT_FREE, Judge, combine, log_length
from ipo_tui.judge.settings import CategorySetting, JudgeSettings, load_settings, save_for_model
from ipo_tui.judge.templates import BUILTIN, Template

QUESTION = "Name a primary color."
ANSWERS = ["Red.", "Red is a primary color, along with blue and yellow.", "Bananas are yellow."]


def judge_with(backend, **category) -> Judge:
    return Judge(backend, settings=JudgeSettings({"chat": CategorySetting(**{"templates": ("chat",), **category})}))


def margins(judge: Judge, instruction: str = QUESTION, answers=ANSWERS) -> np.ndarray:
    return np.array([j.score for j in judge.score(instruction, answers, "chat")])


def test_calibration_moves_thresholds_never_rankings(llama_backend):
    plain = margins(Judge(llama_backend))
    calibrated_judge = Judge(llama_backend, settings=JudgeSettings(calibrate=True))
    calibrated = margins(calibrated_judge)
    [content_free] = calibrated_judge.score(QUESTION, [CONTENT_FREE], "chat")
    assert content_free.p_yes == pytest.approx(0.5, abs=1e-9)  # the content-free reply sits at 0.5
    assert np.allclose(calibrated - calibrated[0], plain - plain[0], atol=1e-9)  # same differences, same order
    assert abs(calibrated[0] - plain[0]) > 1e-3  # but the values moved


def test_pmi_subtracts_the_replys_score_under_a_content_free_instruction(llama_backend):
    raw = Judge(llama_backend)
    template = BUILTIN["chat"]
    baseline, _, _ = raw.margins(template, CONTENT_FREE, ANSWERS)
    for instruction in (QUESTION, "Which colours make up the RGB model?"):
        pmi = margins(judge_with(llama_backend, pmi=1.0), instruction)
        assert np.allclose(pmi, margins(raw, instruction) - baseline, atol=1e-4)
    half = margins(judge_with(llama_backend, pmi=0.5))
    assert np.allclose(half, margins(raw) - 0.5 * baseline, atol=1e-4)


def test_reply_pmi_adds_how_much_the_instruction_makes_the_reply_likelier(llama_backend):
    raw = Judge(llama_backend)
    pmi, tokens = raw.reply_pmi(QUESTION, ANSWERS)

    def logprobs(instruction):
        prefix = llama_backend.tokenize(llama_backend.render_chat([{"role": "user", "content": instruction}]))
        return llama_backend.sequence_logprobs(prefix, [llama_backend.tokenize(a) for a in ANSWERS])

    assert np.allclose(pmi, logprobs(QUESTION) - logprobs(CONTENT_FREE), atol=1e-2)
    assert list(tokens) == [len(llama_backend.tokenize(a)) for a in ANSWERS]
    weighted = margins(judge_with(llama_backend, reply_pmi=0.5, reply_pmi_per_token=2.0))
    assert np.allclose(weighted, margins(raw) + 0.5 * pmi + 2.0 * pmi / tokens, atol=1e-2)
    # the reply to the question asked gains; a fluent reply to another question does not
    on_task, off_task = Judge(llama_backend).reply_pmi("Translate 'thank you' into French.",
                                                       ["Merci.", "Photosynthesis turns light into chemical energy."])[0]
    assert on_task > 1.0 > off_task


def test_an_ensemble_averages_log_odds_not_probabilities(llama_backend):
    both = judge_with(llama_backend, templates=("chat", "chat-quality"))
    each = [margins(judge_with(llama_backend, templates=(name,))) for name in ("chat", "chat-quality")]
    judged = both.score(QUESTION, ANSWERS, "chat")
    assert np.allclose([j.score for j in judged], (each[0] + each[1]) / 2, atol=1e-4)
    assert judged[0].template == "chat+chat-quality"
    mean_p = (1 / (1 + np.exp(-each[0])) + 1 / (1 + np.exp(-each[1]))) / 2
    assert not np.allclose([j.p_yes for j in judged], mean_p, atol=1e-4)


def test_negative_polarity_flips_the_margin(llama_backend):
    chat = BUILTIN["chat"]
    judge = judge_with(llama_backend, templates=("chat-inverted",))
    judge.templates["chat-inverted"] = Template("chat-inverted", chat.system, chat.user, "negative")
    assert np.allclose(margins(judge), -margins(Judge(llama_backend)), atol=1e-5)
    with pytest.raises(Exception, match="neither positive nor negative"):
        Template("x", chat.system, chat.user, "sideways")


def test_length_control_takes_the_length_out_of_the_margin(llama_backend):
    corrected = margins(judge_with(llama_backend, length_slope=0.5, length_centre=3.0))
    expected = margins(Judge(llama_backend)) - 0.5 * (log_length(ANSWERS) - 3.0)
    assert np.allclose(corrected, expected, atol=1e-4)


def synthetic(n: int, rng, chosen_longer: bool = True) -> search.Features:
    """Pairs where the margin is 2 * log length plus noise: a judge that only likes length."""
    long, short = rng.uniform(6, 7, n), rng.uniform(3, 4, n)
    len_c, len_r = (long, short) if chosen_longer else (short, long)
    t = [BUILTIN["chat"]]
    noise = lambda: rng.normal(0, 0.1, (1, n))  # noqa: E731
    return search.Features(t, 2 * len_c[None] + noise(), 2 * len_r[None] + noise(), np.zeros((1, n)), np.zeros((1, n)),
                           len_c, len_r, np.full((n, 2), np.nan))


def test_length_regression_recovers_the_slope_without_the_labels():
    rng = np.random.default_rng(0)
    f = synthetic(40, rng, chosen_longer=False)  # length alone gets every pair wrong
    assert not search.correct(f, CategorySetting(("chat",))).any()
    fitted = search.fit_length(f, CategorySetting(("chat",)), np.arange(f.n))
    assert fitted.length_slope == pytest.approx(2.0, abs=0.1)
    # the slope is label-free: the same pairs with their replies swapped give the same fit
    swapped = search.Features(f.templates, f.rejected, f.chosen, f.base_rejected, f.base_chosen, f.len_rejected,
                              f.len_chosen, f.pairwise)
    assert search.fit_length(swapped, CategorySetting(("chat",)), np.arange(f.n)).length_slope == pytest.approx(
        fitted.length_slope, abs=1e-6)
    chosen, rejected = search.margins(f, fitted)
    assert np.abs(chosen - rejected).max() < 1.0  # what is left is the noise, not the length


def test_the_pairwise_swap_cancels_the_position():
    always_a = pairwise.combine(3.0, 3.0)  # "A" by the same odds whichever reply is shown first
    assert (always_a.margin, always_a.bias, always_a.consistent) == (0.0, 3.0, False)
    real = pairwise.combine(4.0, -2.0)  # prefers the first reply in both orders, leaning to A
    assert (real.margin, real.bias, real.consistent) == (3.0, 1.0, True)
    report = pairwise.PositionReport()
    for d1, d2 in ((3.0, 3.0), (2.0, 1.0), (4.0, -2.0)):
        report.add(pairwise.combine(d1, d2), d1, d2)
    assert report.as_dict()["consistent"] == pytest.approx(1 / 3) and "use the pointwise judge" in report.warning


def test_pairwise_verdicts_are_antisymmetric_in_the_order(llama_backend):
    judge = pairwise.PairwiseJudge(llama_backend)
    ab, ba = judge.compare(QUESTION, ANSWERS[1], ANSWERS[2]), judge.compare(QUESTION, ANSWERS[2], ANSWERS[1])
    assert ab.margin == pytest.approx(-ba.margin, abs=1e-4) and ab.bias == pytest.approx(ba.bias, abs=1e-4)
    assert judge.report.comparisons == 2


def test_cross_validation_never_scores_a_pair_it_chose_on():
    rng = np.random.default_rng(1)
    n = 60
    t = [BUILTIN["chat"], BUILTIN["chat-quality"], BUILTIN["chat-flaw"]]
    noise = lambda: rng.normal(0, 1, (3, n))  # noqa: E731  # no setting is better than chance
    f = search.Features(t, noise(), noise(), noise(), noise(), rng.uniform(3, 7, n), rng.uniform(3, 7, n),
                        np.full((n, 2), np.nan))
    seen: list[np.ndarray] = []

    def chooser(features, idx):
        seen.append(idx)
        return search.choose(features, idx)

    right = search.cross_validate(f, 5, chooser)
    held = search.folds(n, 5)
    for train, fold in zip(seen, held):
        assert not set(train) & set(fold)
    assert sorted(np.concatenate(held)) == list(range(n))
    every = np.arange(n)
    best_in_sample = max(search.correct(f, search.fit_length(f, s, every) if length else s).mean()
                         for s, length in search.candidates(f))
    assert best_in_sample > right / n  # the best of 42 settings on noise flatters itself; the held-out figure less


def test_fitted_weights_find_a_templates_polarity_and_its_weight(llama_backend):
    """Two templates, one that tells the pairs apart the wrong way round and one that is noise: the
    fit gives the first a clear negative weight, and the judge scores with exactly those weights."""
    rng = np.random.default_rng(2)
    n = 120
    t = [BUILTIN["chat"], BUILTIN["chat-quality"]]
    signal = rng.normal(1.0, 1.0, n)  # chosen minus rejected under the first template, before the flip
    chosen = np.stack([-signal / 2, rng.normal(0, 1, n)])
    rejected = np.stack([signal / 2, rng.normal(0, 1, n)])
    lengths = rng.uniform(3, 7, n)
    f = search.Features(t, chosen, rejected, np.zeros((2, n)), np.zeros((2, n)), lengths, lengths,
                        np.full((n, 2), np.nan))
    assert search.correct(f, CategorySetting(("chat", "chat-quality"))).mean() < 0.4  # the mean is fooled
    fitted = search.fit_weights(f, np.arange(n), baselines=False)
    assert fitted.weights[0] < -1.0 and abs(fitted.weights[1]) < 0.5 and fitted.pmi_weights == ()
    assert search.cross_validate(f, 5, lambda f_, idx: search.fit_weights(f_, idx, False)) / n > 0.75
    assert search.choose(f, np.arange(n)).fitted  # the search prefers it here, on its inner folds
    # the judge applies the weights the search fitted: sum of weight * each template's own margin
    judge = judge_with(llama_backend, templates=fitted.templates, weights=fitted.weights)
    each = [margins(judge_with(llama_backend, templates=(name,))) for name in fitted.templates]
    assert np.allclose(margins(judge), fitted.weights[0] * each[0] + fitted.weights[1] * each[1], atol=1e-4)


def test_fitted_weights_take_the_reply_pmi_where_it_tells_the_pairs_apart():
    """Templates that are noise, and a reply PMI that is higher for the chosen reply: the fit weights
    the PMI, cross-validates well, and the search takes it; without the PMI measured it cannot."""
    rng = np.random.default_rng(4)
    n = 100
    t = [BUILTIN["chat"], BUILTIN["chat-quality"]]
    noise = lambda: rng.normal(0, 1, (2, n))  # noqa: E731
    tokens = rng.integers(20, 200, (n, 2)).astype(float)
    pmi_c, pmi_r = tokens[:, 0] * rng.normal(0.3, 0.1, n), tokens[:, 1] * rng.normal(0.0, 0.1, n)
    reply = np.stack([pmi_c, tokens[:, 0], pmi_r, tokens[:, 1]], axis=1)
    lengths = rng.uniform(3, 7, n)
    f = search.Features(t, noise(), noise(), noise(), noise(), lengths, lengths, np.full((n, 2), np.nan), reply)
    fitted = search.fit_weights(f, np.arange(n), baselines=False, reply=True)
    assert fitted.uses_reply_pmi and fitted.reply_pmi_per_token > 1.0
    assert search.cross_validate(f, 5, lambda f_, idx: search.fit_weights(f_, idx, False, True)) / n > 0.9
    assert search.choose(f, np.arange(n)).uses_reply_pmi
    assert not search.choose(search.Features(*[getattr(f, k) for k in (
        "templates", "chosen", "rejected", "base_chosen", "base_rejected", "len_chosen", "len_rejected", "pairwise")]),
        np.arange(n)).uses_reply_pmi
    rows = {r.name: r for r in search.techniques(f, fitted)}
    assert rows["reply PMI per token"].right > 0.9 * n and rows["fitted weights + reply PMI"].right > 0.9 * n


def test_choose_reads_only_the_pairs_it_is_given():
    rng = np.random.default_rng(3)
    n = 100
    t = [BUILTIN["chat"], BUILTIN["chat-quality"], BUILTIN["chat-flaw"]]
    noise = lambda: rng.normal(0, 1, (3, n))  # noqa: E731
    f = search.Features(t, noise() + 0.3, noise(), noise(), noise(), rng.uniform(3, 7, n), rng.uniform(3, 7, n),
                        np.full((n, 2), np.nan))
    idx = np.arange(0, n, 2)
    other = np.arange(1, n, 2)
    spoiled = search.Features(t, f.chosen.copy(), f.rejected.copy(), f.base_chosen.copy(), f.base_rejected.copy(),
                              f.len_chosen.copy(), f.len_rejected.copy(), f.pairwise)
    spoiled.chosen[:, other], spoiled.rejected[:, other] = -9.0, 9.0  # every pair outside idx says the opposite
    assert search.choose(spoiled, idx) == search.choose(f, idx)


def test_fitted_weights_round_trip_through_the_config_and_bad_ones_are_refused():
    fitted = CategorySetting(("safety", "safety-harm"), 0.0, 0.6, 5.7, (-0.5, -0.7), (0.1, 0.2))
    config = save_for_model({}, "m", {"safety": fitted})
    assert load_settings(yaml.safe_load(yaml.safe_dump(config)), "m").for_category("safety") == fitted
    assert "fitted weights with content-free margins" in fitted.describe()
    with_reply = CategorySetting(("chat",), weights=(0.3,), reply_pmi=0.02, reply_pmi_per_token=1.5)
    config = save_for_model({}, "m", {"chat": with_reply})
    assert load_settings(yaml.safe_load(yaml.safe_dump(config)), "m").for_category("chat") == with_reply
    assert "reply PMI +0.02, per token +1.5" in with_reply.describe()
    for bad, message in (({"templates": ["a", "b"], "weights": [1.0]}, "1 weights for 2 templates"),
                         ({"templates": ["a"], "weights": ["x"]}, "must be numbers"),
                         ({"templates": ["a"], "reply_pmi": "lots"}, "must be numbers"),
                         ({"templates": ["a"], "pmi_weights": [1.0]}, "pmi_weights need weights"),
                         ({"templates": ["a"], "weights": [1.0], "pmi": 1.0}, "pmi and weights together")):
        with pytest.raises(IpoError, match=message):
            load_settings({"judge": {"categories": {"chat": bad}}})


def test_saved_settings_load_per_model_and_old_configs_still_read():
    config = {"judge": {"category_templates": {"chat": "generic"}, "models": {"m": {
        "router": "model", "categories": {"code": {"templates": ["code", "code-bug"], "pmi": 0.5}}}}}}
    plain = load_settings(config)
    assert plain.for_category("chat").templates == ("generic",) and plain.router == "keyword"
    mine = load_settings(config, "m")
    assert mine.router == "model" and mine.for_category("code") == CategorySetting(("code", "code-bug"), 0.5)
    assert mine.digest(BUILTIN) != plain.digest(BUILTIN)


def test_judge_id_separates_settings(llama_backend):
    assert Judge(llama_backend).id == llama_backend.ref.identity  # the plain recipe keeps the policy's id
    assert judge_with(llama_backend, pmi=1.0).id.startswith(llama_backend.ref.identity + "#")
    assert judge_with(llama_backend, pmi=1.0).id != judge_with(llama_backend, pmi=0.5).id


def test_the_model_router_agrees_with_keywords_on_unambiguous_prompts(llama_backend):
    from ipo_tui.judge.model_router import ModelRouter
    from ipo_tui.judge.routing import route

    router = ModelRouter(llama_backend)
    # the 135M model never answers "safety" (measured: README); chat, code and math it tells apart
    prompts = ["Write a Python function that reverses a list.",
               "Fix the bug in this JavaScript function: function add(a, b) { return a - b; }",
               "What is 17 * 23?", "Solve for x: 3x + 5 = 20.", "Write a poem about autumn.",
               "Give me tips for a job interview."]
    assert [router.route(p) for p in prompts] == [route(p) for p in prompts]
    p = router.probabilities(prompts[0])
    assert p.sum() == pytest.approx(1.0) and not math.isnan(p[0])


def test_combine_is_what_judge_and_search_share():
    setting = CategorySetting(("a", "b"), pmi=1.0, length_slope=0.5, length_centre=1.0)
    args = [np.array([2.0]), np.array([4.0])], [np.array([1.0]), np.array([1.0])], [1, -1], np.array([3.0])
    assert combine(*args, setting)[0] == pytest.approx(((2 - 1) + -(4 - 1)) / 2 - 0.5 * (3 - 1))
    fitted = CategorySetting(("a", "b"), length_slope=0.5, length_centre=1.0, weights=(0.5, 2.0), pmi_weights=(1.0, 0.0))
    assert combine(*args, fitted)[0] == pytest.approx(0.5 * 2 + 2.0 * 4 - 1.0 * 1 - 0.5 * (3 - 1))  # signs are in the weights
