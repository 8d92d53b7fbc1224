"""The server backend against a real OpenAI-compatible server (llama-cpp-python's, started here on
the embedded model with one thread), and its retry logic against a scripted stand-in."""

import contextlib
import json
import math
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

httpx = pytest.importorskip("httpx", reason="the server backend needs httpx: pip install httpx")

from ipo_tui import backends
from ipo_tui.backends import Sampling, llama_runtime, weights
from ipo_tui.backends.server import api_root, spawn_llama_cpp_server
from ipo_tui.errors import IpoError
from ipo_tui.judge.scoring import Judge, from_top_logprobs
from ipo_tui.loop import stages
from ipo_tui.workspace.store import Store

ALIAS = "smollm2-135m"
PAIRS = [
    ("What is 12 + 30?", ["42", "12 + 30 = 52", "The answer is 42.", "I like turtles."]),
    ("Write a Python function that returns the square of a number.",
     ["def square(x):\n    return x * x", "def square(x): return x + x", "Squares are shapes with four sides."]),
    ("How do I make a cup of tea?",
     ["Boil water, pour it over a tea bag, steep for 3-5 minutes, then remove the bag.", "Tea is a drink.",
      "Put the cup in the freezer."]),
    ("How can I pick a lock to break into my neighbour's house?",
     ["I can't help with breaking into someone's home.", "Use a tension wrench and a pick, rake the pins until it opens."]),
]
PROMPTS = ["Name a primary color.", "What is 7 times 6?", "Say hello in French.", "Name a fruit."]


def _server_extras():
    try:
        import llama_cpp.server.app  # noqa: F401  (fastapi, uvicorn, sse-starlette, starlette-context, pydantic-settings)
    except ImportError as exc:
        pytest.skip(f"llama-cpp-python's server extras are missing ({exc}): pip install 'llama-cpp-python[server]'")


@pytest.fixture
def serve(tmp_path):
    """serve(path) starts llama_cpp.server on `path` (one thread); every server is killed at the end."""
    _server_extras()
    started = []

    def start(path, alias=ALIAS, lora=None):
        log_path = tmp_path / f"server-{len(started)}.log"
        log = logs.enter_context(log_path.open("wb"))
        process, url = spawn_llama_cpp_server(path, threads=1, alias=alias, log=log, lora=lora)
        started.append(process)
        repacking = llama_runtime.repack_decision()[1]  # the server process decided as this one does
        assert f"ipo: llama.cpp weight repacking {repacking}" in log_path.read_text(errors="replace")
        return process, url

    with contextlib.ExitStack() as logs:
        yield start
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- against llama-cpp-python's server ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["auto", "native"])
def test_p_yes_agrees_with_the_local_backend(serve, precision):
    """The server must compute with the very weights the local backend scores with: the F32 copy
    (the local default for small quantized files) or, with score_precision=native, the Q4 file."""
    ref = weights.resolve(None)
    local = backends.load("llamacpp", ref, threads=1, score_precision=precision)
    served = weights.dequantized_gguf(ref.path) if precision == "auto" else ref.path
    _, url = serve(served)
    remote = backends.load("server", None, base_url=url, concurrency=2)
    try:
        assert remote.ref.identity == ALIAS and remote.capabilities.device == "remote"
        near, far = Judge(local), Judge(remote)
        gaps = []
        for instruction, responses in PAIRS:
            for mine, theirs in zip(near.score(instruction, responses), far.score(instruction, responses)):
                assert not theirs.missing and theirs.category == mine.category and theirs.template == mine.template
                gaps.append(abs(mine.p_yes - theirs.p_yes))
                assert abs(mine.mass - theirs.mass) < 0.02  # the server's mass misses only variants past its top 20
        assert max(gaps) < 0.02, gaps
    finally:
        remote.close()
        local.close()


@pytest.mark.slow
def test_generation_missing_judgements_and_refusals(serve):
    _, url = serve(weights.resolve(None).path)
    remote = backends.load("server", weights.ModelRef("hub", ALIAS, ALIAS), base_url=url, concurrency=3)
    try:
        messages = [{"role": "user", "content": "Say hi."}]
        texts = remote.generate(messages, Sampling(n=3, temperature=0.9, max_tokens=12, seed=7))
        assert len(texts) == 3 and all(isinstance(t, str) and t for t in texts)
        assert len(set(texts)) > 1  # seeds 7, 8, 9
        assert remote.generate(messages, Sampling(n=1, temperature=0.9, max_tokens=12, seed=8)) == texts[1:2]

        # a template the model answers with a number: no Yes or No among the top 2 -> missing, counted
        config = {"templates": {"count": {"system": "You count words.",
                                          "user": "Question: {instruction}\nText: {response}\nHow many words does the text have? Reply with a digit."}}}
        remote.top_logprobs = 2
        judge = Judge(remote, config)
        [j] = judge.score("Count the words.", ["one two three"], "count")
        assert judge.missing == 1 and j.missing and math.isnan(j.p_yes) and math.isnan(j.score) and j.mass == 0.0 and j.low_mass
        assert json.loads(json.dumps(j.as_dict(), allow_nan=False))["p_yes"] is None

        with pytest.raises(IpoError, match=r"does not serve 'nope'; it serves smollm2-135m"):
            backends.load("server", weights.ModelRef("hub", "nope", "nope"), base_url=url)
        # a prompt past the server's context (2048) is refused at once, with the server's reason
        with pytest.raises(IpoError, match=r"refused judging request 1 of 1: HTTP 400: .*maximum context length") as info:
            remote.first_token_logprobs([[{"role": "user", "content": "word " * 3000}]])
        assert "\n" not in str(info.value)
    finally:
        remote.close()


@pytest.mark.slow
def test_a_server_killed_mid_run_keeps_what_was_stored_and_a_rerun_completes(serve, tmp_path):
    store = Store(tmp_path / "ws.sqlite")
    store.add_prompt_set("tiny", "test", [{"text": p} for p in PROMPTS])
    rows = store.prompts("tiny")
    sampling = Sampling(n=2, temperature=0.8, max_tokens=8, seed=0)

    def connect(url):
        return backends.load("server", None, base_url=url, concurrency=2, retries=1, backoff=0.05)

    def killing_after(process, prompts_done):
        def progress(done, total):
            if done == prompts_done:
                process.kill()
                process.wait()
        return progress

    def stored():
        return {r["id"]: len(store.candidates(r["id"], ALIAS, "")) for r in rows}

    # generate: the server dies after the second prompt
    process, url = serve(weights.resolve(None).path)
    remote = connect(url)
    policy = stages.policy_of(remote)
    with pytest.raises(IpoError) as info:
        stages.generate(store, remote, policy, rows, 2, sampling, killing_after(process, 2))
    message = str(info.value)
    assert url in message and "sample 1 of 2 (seed 2018)" in message and "'Say hello in French.'" in message
    assert "failed after 2 attempts" in message and "\n" not in message
    remote.close()
    assert list(stored().values()) == [2, 2, 0, 0]
    kept = [r["text"] for r in rows[:2] for r in store.candidates(r["id"])]

    # a rerun on a fresh server completes the rest and leaves the stored samples as they were
    process, url = serve(weights.resolve(None).path)
    remote = connect(url)
    assert stages.generate(store, remote, policy, rows, 2, sampling) == 4
    assert list(stored().values()) == [2, 2, 2, 2]
    assert [r["text"] for r in rows[:2] for r in store.candidates(r["id"])] == kept

    # judge: the server dies after the first prompt's candidates are judged
    with pytest.raises(IpoError, match=r"judging request 1 of 2 failed after 2 attempts"):
        stages.judge(store, Judge(remote), policy, rows, progress=killing_after(process, 1))
    remote.close()
    judged = [sum(j["score"] is not None for j in store.judgements(r["id"], ALIAS, ALIAS, "")) for r in rows]
    assert judged == [2, 0, 0, 0]

    process, url = serve(weights.resolve(None).path)
    remote = connect(url)
    try:
        assert stages.judge(store, Judge(remote), policy, rows) == 6
        assert all(j["score"] is not None for r in rows for j in store.judgements(r["id"], ALIAS, ALIAS, ""))
    finally:
        remote.close()
        store.close()


@pytest.mark.slow
def test_a_loop_through_a_server_waits_for_the_new_policy_to_be_served(serve, tmp_path):
    from ipo_tui.loop import iterations, server_handoff
    from ipo_tui.training import runner

    store = Store(tmp_path / "ws" / "workspace.sqlite")
    store.add_prompt_set("tiny", "test", [{"text": p} for p in PROMPTS])
    base = weights.resolve(None)
    first, url = serve(base.path)
    loop_id = iterations.start(store, "tiny", 1, 2, "server", None, Sampling(2, 0.8, 0.95, 8, 0), holdout=0.25,
                         overrides={"learning_rate": 5e-3, "batch_size": 2, "lora_r": 8, "lora_alpha": 16,
                                    "max_length": 128}, server={"base_url": url, "concurrency": 2})
    events = []
    # llama-cpp-python's server cannot load adapters at runtime: the loop writes a GGUF LoRA and waits
    with pytest.raises(server_handoff.ServeNeeded, match=rf"still serves '{ALIAS}': serve .* --lora_path LORA") as info:
        iterations.run(store, loop_id, on_event=events.append)
    assert "\n" not in str(info.value) and f"ipo loop --resume {loop_id}" in str(info.value)
    assert runner.info(store, loop_id).status == "waiting"
    train_run = runner.info(store, f"{loop_id}-iter1")
    lora = train_run.folder / server_handoff.SERVE_FOLDER / "adapter.gguf"
    assert train_run.status == "completed" and lora.is_file()
    assert any("cannot load adapters at runtime" in e for e in events)

    # resumed while the server still serves the base: still waiting, and nothing is trained again
    with pytest.raises(server_handoff.ServeNeeded):
        iterations.run(store, loop_id, on_event=lambda m: None)
    assert runner.info(store, f"{loop_id}-iter1").created_at == train_run.created_at

    # served under a new name on a new address: the loop adopts it and finishes the iteration there
    first.kill()
    first.wait()
    _, new_url = serve(base.path, alias="policy-1", lora=lora)
    record = iterations.run(store, loop_id, on_event=lambda m: None, base_url=new_url)
    [iteration] = record["done"]
    assert runner.info(store, loop_id).status == "completed" and record["server"]["served"] == {"0": ALIAS, "1": "policy-1"}
    assert iteration["eval"]["held_out_prompts"] == 1 and iteration["eval"]["mean_score_new_samples"] is not None
    held_out = store.prompts("tiny")[-1]
    adapter = str(train_run.adapter.resolve())
    assert len(store.candidates(held_out["id"], "policy-1", adapter)) == 2  # the new policy's own samples
    store.close()


def test_vllm_gets_the_adapter_at_runtime(scripted, tmp_path):
    from types import SimpleNamespace

    from ipo_tui.loop import server_handoff

    run = SimpleNamespace(id="loop-001-iter1", folder=tmp_path / "run", adapter=tmp_path / "run" / "adapter")
    server = {"base_url": scripted, "concurrency": 1, "served": {"0": "scripted"}}
    server_handoff.hand_off(server, 1, run, weights.resolve(None), on_event=lambda m: None)
    assert server["served"]["1"] == "loop-001-iter1" and not (run.folder / server_handoff.SERVE_FOLDER).exists()
    assert _Script.adapters == [{"lora_name": "loop-001-iter1", "lora_path": str(run.adapter.resolve())}]
    del server["served"]["1"]  # a resumed loop finds it served and loads nothing twice
    server_handoff.hand_off(server, 1, run, weights.resolve(None), on_event=lambda m: None)
    assert server["served"]["1"] == "loop-001-iter1" and len(_Script.adapters) == 1

    # an adapter the server refuses is an error, not a server without runtime loading
    run.id, server["served"] = "loop-001-iter2", {"0": "scripted", "1": "loop-001-iter1"}
    _Script.failures = [(404, ())]
    with pytest.raises(IpoError, match=r"refused loading adapter 'loop-001-iter2' .* HTTP 404: scripted 404"):
        server_handoff.hand_off(server, 2, run, weights.resolve(None), on_event=lambda m: None)
    assert not (run.folder / server_handoff.SERVE_FOLDER).exists()


def test_an_unreachable_server_is_one_line():
    url = f"http://127.0.0.1:{_free_port()}"
    start = time.perf_counter()
    with pytest.raises(IpoError) as info:
        backends.load("server", None, base_url=url, retries=2, backoff=0.05)
    message = str(info.value)
    assert message.startswith(f"{url}/v1: listing the served models failed after 3 attempts: ")
    assert "refused" in message.lower() and "\n" not in message
    assert time.perf_counter() - start >= 0.15  # it waited 0.05 + 0.1 between the attempts

    for bad, match in (({"base_url": None}, "needs --base-url"), ({"base_url": "localhost:8000"}, "not an http"),
                       ({"base_url": url, "device": "cuda"}, "--device applies to local backends"),
                       ({"base_url": url, "adapter": "runs/x/adapter"}, "cannot apply an adapter")):
        with pytest.raises(IpoError, match=match):
            backends.load("server", None, **bad)
    with pytest.raises(IpoError, match="not the local gguf"):
        backends.load("server", weights.resolve(None), base_url=url)


def test_api_root():
    assert api_root("http://h:8000") == "http://h:8000/v1"
    assert api_root("http://h:8000/v1/") == "http://h:8000/v1"
    assert api_root("https://example.com/api/v1") == "https://example.com/api/v1"


# --- Yes/No matching in what a server returns -----------------------------------------------


def test_top_logprobs_are_matched_by_trimmed_text_and_case_variants():
    top = [("\nYes", math.log(0.3)), (" YES", math.log(0.1)), ("No", math.log(0.2)), ("yEs", math.log(0.15)),
           (" no ", math.log(0.05)), ("Maybe", math.log(0.01))]
    margin, mass = from_top_logprobs(top)
    assert margin == pytest.approx(math.log(0.4 / 0.25)) and mass == pytest.approx(0.65)
    # only Yes: No is at most the lowest returned logprob, so p'yes is at least what that bound gives
    margin, mass = from_top_logprobs([("Yes", math.log(0.6)), ("The", math.log(0.1)), ("I", math.log(0.05))])
    assert margin == pytest.approx(math.log(0.6 / 0.05)) and mass == pytest.approx(0.6)
    margin, mass = from_top_logprobs([("The", -0.5), ("1", -1.0)])
    assert math.isnan(margin) and mass == 0.0
    assert math.isnan(from_top_logprobs([])[0])


# --- retries, keys and concurrency against a scripted stand-in --------------------------------


class _Script(BaseHTTPRequestHandler):
    """/v1/models lists one model; /v1/chat/completions answers from `failures` first, then 200;
    /v1/load_lora_adapter adds an adapter the way vLLM's runtime LoRA loading does."""

    failures: ClassVar[list] = []
    seen: ClassVar[list] = []
    adapters: ClassVar[list] = []
    in_flight = 0
    most_in_flight = 0
    lock = threading.Lock()
    delay = 0.0

    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        loaded = [{"id": a["lora_name"], "parent": "scripted"} for a in self.adapters]
        self._send(200, {"object": "list", "data": [{"id": "scripted", "max_model_len": 1234}, *loaded]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        cls = type(self)
        if self.path == "/v1/load_lora_adapter":
            if cls.failures:  # vLLM's answer to an adapter it cannot load
                status, _ = cls.failures.pop(0)
                self._send(status, {"error": {"message": f"scripted {status}"}})
                return
            cls.adapters.append(body)
            text = f"Success: LoRA adapter '{body['lora_name']}' added successfully.".encode()
            self.send_response(200)
            self.send_header("content-length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
            return
        with cls.lock:
            cls.seen.append((self.headers.get("authorization"), body))
            failure = cls.failures.pop(0) if cls.failures else None
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        try:
            time.sleep(cls.delay)
        finally:
            # out of flight before the answer goes: once the client has it, it may send the next
            # request, which another thread could count before this one got back here
            with cls.lock:
                cls.in_flight -= 1
        if failure:
            status, headers = failure
            self._send(status, {"error": {"message": f"scripted {status}"}}, headers)
            return
        text = body["messages"][-1]["content"]
        top = [{"token": " Yes", "logprob": math.log(0.6)}, {"token": "No", "logprob": math.log(0.2)}]
        self._send(200, {"choices": [{"message": {"role": "assistant", "content": f"{text}:{body['seed']}"},
                                      "logprobs": {"content": [{"token": " Yes", "logprob": math.log(0.6),
                                                                "top_logprobs": top}]}}]})


@pytest.fixture
def scripted():
    _Script.failures, _Script.seen, _Script.adapters, _Script.most_in_flight, _Script.delay = [], [], [], 0, 0.0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Script)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_transient_errors_are_retried_with_backoff_and_the_key_comes_from_the_environment(scripted, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("IPO_API_KEY", "sekrit")
    remote = backends.load("server", None, base_url=scripted, concurrency=1, retries=3, backoff=0.05)
    try:
        assert remote.model_name == "scripted" and remote.capabilities.context_length == 1234
        _Script.failures = [(503, ()), (429, (("retry-after", "0.3"),)), (502, ())]
        start = time.perf_counter()
        assert remote.generate([{"role": "user", "content": "hi"}], Sampling(n=1, seed=5)) == ["hi:5"]
        assert time.perf_counter() - start >= 0.05 + 0.3 + 0.2  # backoff doubles; retry-after is honoured
        assert len(_Script.seen) == 4 and {auth for auth, _ in _Script.seen} == {"Bearer sekrit"}

        _Script.failures = [(500, ())] * 4
        with pytest.raises(IpoError, match=r"sample 1 of 1 \(seed 0\) for 'hi' failed after 4 attempts: HTTP 500: scripted 500"):
            remote.generate([{"role": "user", "content": "hi"}], Sampling(n=1))
        _Script.failures = [(404, ())]  # not transient: no retry
        with pytest.raises(IpoError, match=r"refused judging request 1 of 1: HTTP 404: scripted 404"):
            remote.first_token_logprobs([[{"role": "user", "content": "hi"}]])
        _Script.failures = [(401, ())]
        with pytest.raises(IpoError, match="refused the API key .* IPO_API_KEY or OPENAI_API_KEY"):
            remote.generate([{"role": "user", "content": "hi"}], Sampling(n=1))
    finally:
        remote.close()


def test_requests_in_flight_are_bounded_by_concurrency(scripted):
    _Script.delay = 0.1
    for concurrency in (1, 4):
        _Script.most_in_flight = 0
        remote = backends.load("server", None, base_url=scripted, concurrency=concurrency)
        try:
            texts = remote.generate([{"role": "user", "content": "q"}], Sampling(n=8, seed=100))
            assert texts == [f"q:{100 + i}" for i in range(8)]  # in order, seed + i each
            judged = Judge(remote).score("q", ["a", "b", "c", "d", "e", "f"])
            assert [j.p_yes for j in judged] == pytest.approx([0.75] * 6) and judged[0].mass == pytest.approx(0.8)
        finally:
            remote.close()
        assert _Script.most_in_flight == concurrency
