"""p'yes on the embedded model, both backends: fast path = slow path, backends agree, cuts fit."""

import json
import math

import numpy as np
import pytest

from ipo_tui.backends.base import Sampling, split_common_prefix
from ipo_tui.judge.scoring import Judge
from tests.conftest import shared_file

QUESTION = "What is the capital of France?"
ANSWERS = [
    "The capital of France is Paris.",
    "Berlin is the capital of France, and it lies on the river Spree.",
    "I don't know.",
    "Paris. It has been the capital since the tenth century, apart from a few short periods.",
]


@pytest.fixture(scope="module")
def hf_judge(hf_backend):
    return Judge(hf_backend)


@pytest.fixture(scope="module")
def llama_judge(llama_backend):
    return Judge(llama_backend)


def test_variant_ids_and_probabilities(hf_judge):
    assert len(hf_judge.yes_ids) >= 2 and len(hf_judge.no_ids) >= 2
    judgements = hf_judge.score(QUESTION, ANSWERS)
    for j in judgements:
        assert 0 < j.p_yes < 1 and 0 < j.mass <= 1
        assert j.p_yes == pytest.approx(1 / (1 + math.exp(-j.score))) and j.probability  # one template alone
        assert (j.category, j.template) == ("chat", "chat")
    assert len({round(j.p_yes, 6) for j in judgements}) == len(ANSWERS)  # the responses matter


@pytest.mark.parametrize("pack_tokens", [1, 60, 2048])  # one suffix per pass, a few, all twenty
@pytest.mark.parametrize("question", [QUESTION, "Which city is the capital of France?", QUESTION])
def test_prefix_cached_packed_pass_equals_full_forward(hf_backend, hf_judge, question, pack_tokens, monkeypatch):
    # the second and third runs start from the cache the previous one kept (partly, then wholly shared)
    from ipo_tui.backends import hf

    monkeypatch.setattr(hf, "PACK_TOKENS", pack_tokens)
    template = hf_judge.template_for("chat")
    tokens = [hf_judge.render(template, question, a)[0] for a in ANSWERS * 5]
    prefix, suffixes = split_common_prefix(tokens)
    assert len(prefix) > 20
    ids = hf_judge.yes_ids + hf_judge.no_ids
    fast = hf_backend.last_logprobs(prefix, suffixes, ids)
    slow = np.concatenate([_full_forward(hf_backend, t, ids) for t in tokens])
    np.testing.assert_allclose(fast, slow, atol=1e-4)


def _full_forward(backend, tokens, ids):
    import torch

    with torch.inference_mode():
        logits = backend.model(torch.tensor([tokens])).logits[0, -1]
    return torch.log_softmax(logits, -1)[ids].numpy()[None]


def test_llama_kv_reuse_equals_fresh_context(llama_backend, llama_judge):
    template = llama_judge.template_for("chat")
    tokens = [llama_judge.render(template, QUESTION, a)[0] for a in ANSWERS]
    ids = llama_judge.yes_ids + llama_judge.no_ids
    batched = llama_backend.last_logprobs(*split_common_prefix(tokens), ids)
    llama_backend.llm.reset()
    one_by_one = np.concatenate([llama_backend.last_logprobs([], [t], ids) for t in reversed(tokens)])[::-1]
    np.testing.assert_allclose(batched, one_by_one, atol=1e-3)


@pytest.mark.parametrize("backend_fixture", ["hf_backend", "llama_backend"])
def test_a_replys_logprob_is_the_sum_of_its_next_token_logprobs(request, backend_fixture):
    backend = request.getfixturevalue(backend_fixture)
    prefix = backend.tokenize(backend.render_chat([{"role": "user", "content": QUESTION}]))
    replies = [backend.tokenize(a) for a in ANSWERS]

    def next_token(tokens, target):  # log p(target | tokens), from the judge's own one-position pass
        return float(backend.last_logprobs(tokens[:-1], [tokens[-1:]], [target])[0, 0])

    token_by_token = [sum(next_token(prefix + reply[:i], reply[i]) for i in range(len(reply))) for reply in replies]
    # llama.cpp sums in another order for a batch of positions than for one: a few thousandths of a nat
    np.testing.assert_allclose(backend.sequence_logprobs(prefix, replies), token_by_token, atol=1e-2)
    # a prefix already in the cache gives what a fresh one gives
    np.testing.assert_allclose(backend.sequence_logprobs(prefix, replies[::-1])[::-1], token_by_token, atol=1e-2)


def _agreement(hf_judge, llama_backend, prompt, responses, category=None):
    template = hf_judge.template_for(category or "chat")
    tokens = [hf_judge.render(template, prompt, r)[0] for r in responses]
    prefix, suffixes = split_common_prefix(tokens)
    ids = hf_judge.yes_ids + hf_judge.no_ids
    n_yes = len(hf_judge.yes_ids)

    def p_yes(lp):
        return 1 / (1 + np.exp(np.logaddexp.reduce(lp[:, n_yes:], 1) - np.logaddexp.reduce(lp[:, :n_yes], 1)))

    return p_yes(hf_judge.backend.last_logprobs(prefix, suffixes, ids)), p_yes(llama_backend.last_logprobs(prefix, suffixes, ids))


def test_backends_agree_on_own_examples(hf_judge, llama_backend):
    template = hf_judge.template_for("chat")
    for answer in ANSWERS:  # each backend renders and tokenizes these the same way
        messages = template.messages(QUESTION, answer)
        assert llama_backend.tokenize(llama_backend.render_chat(messages)) == hf_judge.render(template, QUESTION, answer)[0]
    hf, llama = _agreement(hf_judge, llama_backend, QUESTION, ANSWERS)
    assert np.abs(hf - llama).max() < 0.005


def test_one_text_one_score_on_rewardbench_pairs(hf_judge, llama_judge):
    # each backend renders and tokenizes the text itself: the GGUF's vocabulary on both
    rows = [json.loads(line) for line in shared_file("rewardbench-dev.jsonl").open()]
    rows = [r for r in rows if len(r["prompt"] + r["chosen"] + r["rejected"]) < 1500]  # keeps CI quick
    sample = rows[:: len(rows) // 24][:24]  # spread over every subset
    assert len({r["category"] for r in sample}) == 4
    gaps = []
    for row in sample:
        category = row["category"].replace("chat-hard", "chat")
        template = hf_judge.template_for(category)
        for response in (row["chosen"], row["rejected"]):
            assert hf_judge.render(template, row["prompt"], response) == llama_judge.render(template, row["prompt"], response)
        hf = hf_judge.score(row["prompt"], [row["chosen"], row["rejected"]], category)
        llama = llama_judge.score(row["prompt"], [row["chosen"], row["rejected"]], category)
        gaps.extend(abs(a.p_yes - b.p_yes) for a, b in zip(hf, llama))
    assert len(gaps) == 48 and max(gaps) < 0.005, f"largest p'yes gap {max(gaps):.4f}"


def test_long_prompt_is_cut_keeping_question_and_answer_end():
    from ipo_tui import backends
    from ipo_tui.backends import weights

    small = backends.load("llamacpp", weights.resolve(None), n_ctx=256)
    try:
        judge = Judge(small)
        response = " ".join(f"step {i} of the reasoning." for i in range(200)) + " So the answer is 42."
        [j] = judge.score("What is six times seven?", [response])
        assert "response cut to its last" in j.truncated and "256" in j.truncated
        tokens, _ = judge.render(judge.template_for("math"), "What is six times seven?", response)
        assert len(tokens) <= 256
        text = small.detokenize(tokens)
        assert "What is six times seven?" in text and "So the answer is 42." in text and "step 0 " not in text
        [j] = judge.score("Summarize: " + "blah " * 400 + "What is the main point?", ["The main point is blah."])
        assert "instruction cut in the middle" in j.truncated
    finally:
        small.close()


@pytest.mark.parametrize("backend_fixture", ["hf_backend", "llama_backend"])
def test_generation_is_seeded(request, backend_fixture):
    backend = request.getfixturevalue(backend_fixture)
    messages = [{"role": "user", "content": "Name a fruit."}]
    settings = Sampling(n=2, temperature=0.9, top_p=0.95, max_tokens=12, seed=7)
    first = backend.generate(messages, settings)
    assert len(first) == 2 and all(isinstance(t, str) and t.strip() for t in first)
    assert backend.generate(messages, settings) == first


def test_prompts_batched_together_generate_what_they_generate_alone(hf_backend):
    # left padding, its mask and the positions after it must leave each prompt's text unchanged
    greedy = Sampling(n=1, temperature=0.0, max_tokens=16)
    conversations = [[{"role": "user", "content": text}] for text in
                     ("Name a fruit.", "Explain in one sentence why the sky is blue during the day.")]
    alone = [hf_backend.generate(messages, greedy) for messages in conversations]
    together = hf_backend.generate_many([(messages, greedy) for messages in conversations])
    assert together == alone and all(texts[0].strip() for texts in alone)


def test_config_chooses_template_per_category(hf_backend):
    judge = Judge(hf_backend, {"judge": {"category_templates": {"chat": "generic"}}})
    [j] = judge.score(QUESTION, [ANSWERS[0]])
    assert (j.category, j.template) == ("chat", "generic")


def test_prefix_inside_the_kept_one(hf_judge):
    # fewer candidates of the same instruction: the new shared prefix is a beginning of the kept one
    one = hf_judge.score(QUESTION, [ANSWERS[0]], "chat")
    two = hf_judge.score(QUESTION, [ANSWERS[1], ANSWERS[0]], "chat")
    assert two[1].p_yes == pytest.approx(one[0].p_yes, abs=1e-4)
