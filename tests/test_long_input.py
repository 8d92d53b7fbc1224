"""A prompt longer than the context is cut in the middle (one warning), never aborting a set; the
seeds derived per sample stay in [0, 2**31) and draw the same samples again."""

import dataclasses
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ipo_tui import backends
from ipo_tui.backends import weights
from ipo_tui.backends.base import CHARS_PER_TOKEN_MAX, CUT_JOIN, SEED_LIMIT, PromptCut, Sampling, sample_seed
from ipo_tui.errors import IpoError
from ipo_tui.judge.scoring import Judge
from ipo_tui.loop import stages
from ipo_tui.workspace.store import Store

OPENING = "Read this log, then answer the question at its end.\n"
QUESTION = "\nQuestion: what colour is the sky on a clear day?"
FILLER = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(5000))
LONG = OPENING + FILLER[:200_000 - len(OPENING) - len(QUESTION)] + QUESTION
CONTEXT = 512  # a small context keeps the cut prompt quick to evaluate


@pytest.fixture(scope="module")
def small_llama():
    backend = backends.load("llamacpp", weights.resolve(None), n_ctx=CONTEXT)
    yield backend
    backend.close()


def _store(tmp_path, name: str, texts: list[str]) -> tuple[Store, list]:
    store = Store(tmp_path / f"{name}.sqlite")
    store.add_prompt_set("set", "test", [{"text": t} for t in texts])
    return store, store.prompts("set")


def _cuts(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, PromptCut)]


def test_a_long_prompt_between_two_is_cut_once_and_the_set_is_generated_and_judged(small_llama, tmp_path):
    assert len(LONG) == 200_000
    store, rows = _store(tmp_path, "ws", ["Name a fruit.", LONG, "Say hello in French."])
    policy = stages.policy_of(small_llama)
    with pytest.warns(PromptCut) as record:
        added = stages.generate(store, small_llama, policy, rows, 2, Sampling(2, 0.8, 0.95, 12, 0))
    assert added == 6 and all(len(store.candidates(r["id"])) == 2 for r in rows)
    [note] = _cuts(record)  # one per prompt, not per sample
    assert "(200,000 characters) cut in the middle to" in note and f"context of {CONTEXT} tokens" in note

    judge = Judge(small_llama)
    assert stages.judge(store, judge, policy, rows) == 6
    [first] = judge.score(LONG, ["Blue."])
    assert first.truncated and "instruction cut in the middle" in first.truncated


def test_a_cut_keeps_both_ends_and_fits_and_never_tokenizes_the_whole_text(small_llama, monkeypatch):
    seen = []
    tokenize = small_llama.tokenize
    monkeypatch.setattr(small_llama, "tokenize", lambda text: seen.append(len(text)) or tokenize(text))
    with pytest.warns(PromptCut):
        ids = small_llama.prompt_ids([{"role": "user", "content": LONG}], 100)
    assert len(ids) <= CONTEXT - 100
    assert max(seen) <= CHARS_PER_TOKEN_MAX * CONTEXT  # a bounded share of the 200,000 characters
    text = small_llama.detokenize(ids)
    assert OPENING.strip() in text and CUT_JOIN in text and QUESTION.strip() in text

    short = [{"role": "user", "content": "Name a fruit."}]
    assert small_llama.prompt_ids(short, 100) == small_llama.tokenize(small_llama.render_chat(short))
    with pytest.raises(IpoError, match="lower --max-tokens or raise --ctx"):
        small_llama.prompt_ids([{"role": "system", "content": "word " * 600}, {"role": "user", "content": "Hi."}], 8)


def test_hf_cuts_a_long_prompt_inside_a_batch(hf_backend, monkeypatch):
    monkeypatch.setattr(hf_backend, "capabilities", dataclasses.replace(hf_backend.capabilities, context_length=128))
    greedy = Sampling(1, 0.0, 1.0, 8, 0)
    conversations = [[{"role": "user", "content": text}] for text in ("Name a fruit.", LONG, "Say hi.")]
    with pytest.warns(PromptCut) as record:
        results = hf_backend.generate_many([(messages, greedy) for messages in conversations])
    assert [len(texts) for texts in results] == [1, 1, 1]
    [note] = _cuts(record)
    assert "context of 128 tokens with 8 to generate" in note
    with pytest.warns(PromptCut):
        assert len(hf_backend.prompt_ids(conversations[1], 8)) <= 128 - 8


@pytest.mark.parametrize("seed", [0, -1, SEED_LIMIT - 1])
def test_seeds_stay_in_range_and_a_run_or_a_resumed_one_draws_the_same_samples(small_llama, tmp_path, seed):
    texts = ["Name a fruit.", "Say hello in French."]
    policy = stages.policy_of(small_llama)
    sampling = Sampling(2, 0.8, 0.95, 8, seed)
    drawn = []
    for name, steps in (("once", (2,)), ("again", (2,)), ("resumed", (1, 2))):
        store, rows = _store(tmp_path, name, texts)
        for n in steps:
            stages.generate(store, small_llama, policy, rows, n, sampling)
        drawn.append({(r["position"], c["sample_index"]): (c["seed"], c["text"])
                      for r in rows for c in store.candidates(r["id"])})
    assert drawn[0] == drawn[1] == drawn[2] and len(drawn[0]) == 4
    assert all(0 <= s < SEED_LIMIT and s == sample_seed(seed, 1009 * p + i) for (p, i), (s, _) in drawn[0].items())
    if seed == 0:  # the seeds stored before sample_seed existed
        assert {key: s for key, (s, _) in drawn[0].items()} == {(0, 0): 0, (0, 1): 1, (1, 0): 1009, (1, 1): 1010}


def test_sample_seed_wraps_into_range_only_when_out_of_it():
    assert [sample_seed(7, 3), sample_seed(-1), sample_seed(SEED_LIMIT - 1, 1), sample_seed(-5, 1009)] == [
        10, SEED_LIMIT - 1, 0, 1004]


# --- a server with no tokenizer: cut by characters, then by half on each refusal -----------------

class _Server(BaseHTTPRequestHandler):
    """Lists one model (with `context` when set); refuses chat messages longer than `fits` characters
    as vLLM does, else answers '<characters>:<seed>'."""

    context: int | None = None
    fits = 3000
    sent: list = []

    def log_message(self, *args):
        pass

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"data": [{"id": "stand-in", "max_model_len": self.context}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        content = body["messages"][-1]["content"]
        type(self).sent.append((content, body["seed"]))
        if content == "bad":
            self._send(400, {"error": {"message": "unsupported request"}})
        elif len(content) > self.fits:
            self._send(400, {"error": {"message": "This model's maximum context length is 1024 tokens. However, "
                                                  f"you requested {len(content) // 4} tokens."}})
        else:
            self._send(200, {"choices": [{"message": {"role": "assistant", "content": f"{len(content)}:{body['seed']}"}}]})


@pytest.fixture
def stand_in():
    _Server.sent = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Server)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("context", [None, 1024])
def test_a_server_gets_the_prompt_cut_until_it_fits_its_context(stand_in, monkeypatch, context):
    monkeypatch.setattr(_Server, "context", context)
    remote = backends.load("server", None, base_url=stand_in, concurrency=2)
    try:
        with pytest.warns(PromptCut) as record:
            texts = remote.generate([{"role": "user", "content": LONG}], Sampling(n=2, max_tokens=64, seed=-1))
        kept, _ = _Server.sent[-1]
        assert texts == [f"{len(kept)}:{SEED_LIMIT - 1}", f"{len(kept)}:0"]
        assert len(kept) <= _Server.fits and kept.startswith(OPENING) and kept.endswith(QUESTION) and CUT_JOIN in kept
        [note] = _cuts(record)
        assert f"cut in the middle to {len(kept):,} characters" in note
        if context:  # the first request is bounded already by what the context could hold
            assert len(_Server.sent[0][0]) <= CHARS_PER_TOKEN_MAX * context + len(CUT_JOIN)
        with pytest.raises(IpoError, match="HTTP 400: unsupported request"):
            remote.generate([{"role": "user", "content": "bad"}], Sampling(n=1))
    finally:
        remote.close()
