"""Any OpenAI-compatible server that returns logprobs: vLLM, llama.cpp's server, llama-cpp-python's.

Generation goes through chat completions, one request per sample with seed `seed + i` (the seeds
the local backends use, so a resumed run asks for the same samples; servers that ignore `n`,
like llama-cpp-python's, need it anyway). With no tokenizer here, a long prompt is fitted by
characters: cut in the middle to what the server's context could hold (when it says its context),
then, each time the server refuses it as too long for its context, to half that. Judging asks
for one token at temperature 0 with the top logprobs of that first token (`first_token_logprobs`);
the Judge matches the Yes/No spellings in them by text. A chat endpoint takes messages, not token
ids, so this backend has no tokenizer: the server applies the model's chat template, and refuses
a judging prompt that does not fit its context.

Requests run on `concurrency` threads (that many in flight at most, across callers). Connection errors,
timeouts, 429 and 5xx answers are retried with exponential backoff; when the retries are spent, or
the server refuses a request outright (400, 401, 404...), an IpoError names the request.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable

from ipo_tui.backends.base import (
    CHARS_PER_TOKEN_MAX,
    MIN_KEPT,
    Backend,
    Capabilities,
    Sampling,
    cut_chars,
    cut_note,
    gist,
    prompt_room,
    sample_seed,
)
from ipo_tui.backends.weights import ModelRef
from ipo_tui.errors import IpoError

KEY_VARIABLES = ("IPO_API_KEY", "OPENAI_API_KEY")
URL_VARIABLE = "IPO_BASE_URL"
TOP_LOGPROBS = 20  # what OpenAI and vLLM (max_logprobs) allow by default
_TRANSIENT = {408, 409, 425, 429}  # and every 5xx
_NOT_IMPLEMENTED = 501  # a 5xx that retrying will not change
# how vLLM, llama.cpp's server, llama-cpp-python's and OpenAI refuse a prompt too long for the context
_CONTEXT_REFUSAL = re.compile(r"context (length|window|size)", re.IGNORECASE)


class Refused(IpoError):
    """The server answered a request with a final (non-transient) error status."""

    def __init__(self, status: int, message: str, detail: str):
        super().__init__(message)
        self.status, self.detail = status, detail


class ServerBackend(Backend):
    scores_by_text = True  # a chat endpoint: the Judge sends messages and reads the top logprobs

    def __init__(self, model: ModelRef | None = None, base_url: str | None = None, api_key: str | None = None,
                 concurrency: int = 4, timeout: float = 120.0, retries: int = 4, backoff: float = 0.5,
                 top_logprobs: int = TOP_LOGPROBS, device: str | None = None, dtype: str | None = None,
                 n_ctx: int | None = None, threads: int | None = None, adapter: str | None = None,
                 on_status: Callable[[str], None] = lambda msg: None):
        try:
            import httpx
        except ImportError:
            raise IpoError("the server backend needs httpx: pip install httpx") from None

        for option, value in (("--device", device), ("--dtype", dtype), ("--threads", threads)):
            if value not in (None, "auto"):
                raise IpoError(f"{option} applies to local backends; the server decides how it runs the model")
        if adapter:
            raise IpoError("--adapter: the server backend cannot apply an adapter; serve it (vLLM --lora-modules) "
                           "and name it with --model")
        if model is not None and model.kind != "hub":
            raise IpoError(f"the server backend takes the name of a served model (as /v1/models lists it), "
                           f"not the local {model.kind} {model.location}")
        if concurrency < 1 or retries < 0 or timeout <= 0 or top_logprobs < 1:
            raise IpoError("server settings out of range: need --concurrency >= 1, retries >= 0, timeout > 0, "
                           "top_logprobs >= 1")
        base_url = base_url or os.environ.get(URL_VARIABLE)
        if not base_url:
            raise IpoError(f"the server backend needs --base-url (e.g. http://127.0.0.1:8000/v1) or {URL_VARIABLE}")
        self.base_url = api_root(base_url)
        self.concurrency, self.retries, self.backoff, self.timeout = concurrency, retries, backoff, timeout
        self.top_logprobs = top_logprobs
        self._httpx = httpx
        key = api_key or next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
        self._client = httpx.Client(
            base_url=self.base_url, headers={"Authorization": f"Bearer {key}"} if key else {},
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )
        self._slots = threading.BoundedSemaphore(concurrency)
        try:
            on_status(f"asking {self.base_url} for its models")
            listed = self._request("GET", "/models", None, "listing the served models").get("data") or []
            self.model_name, context = _pick(listed, model.location if model else None, self.base_url)
        except BaseException:
            self.close()
            raise
        self.ref = ModelRef("hub", self.model_name, self.model_name)
        self.adapter = ""  # the server applies none; serving.connect labels a served policy with its local adapter
        self.capabilities = Capabilities(
            backend="server", device="remote", dtype="as served", threads=None,
            context_length=int(context or n_ctx or 0), can_train=False, supports_lora=False,
        )

    # --- what the Judge and the pipeline call ---------------------------------------------

    def first_token_logprobs(self, conversations: list[list[dict[str, str]]]) -> list[list[tuple[str, float]]]:
        """For each conversation, the (token text, logprob) pairs of the server's top logprobs for
        the first token of the assistant's answer (greedy, one token); [] when it generated none."""
        def one(i: int, messages):
            body = {"model": self.model_name, "messages": messages, "max_tokens": 1, "temperature": 0.0,
                    "logprobs": True, "top_logprobs": self.top_logprobs, "seed": 0}
            what = f"judging request {i + 1} of {len(conversations)}"  # its text is the template's start
            choice = self._choice(self._request("POST", "/chat/completions", body, what), what)
            logprobs = choice.get("logprobs")
            if not logprobs or logprobs.get("content") is None:
                raise IpoError(f"{self.base_url} returned no logprobs for {what}: this server cannot judge "
                               "(vLLM, llama.cpp's server and llama-cpp-python's return them)")
            content = logprobs["content"]
            if not content:  # it ended the answer at once: no first token to read
                return []
            return [(str(t["token"]), float(t["logprob"])) for t in content[0].get("top_logprobs") or []]

        return self._map(one, conversations)

    def generate(self, messages: list[dict[str, str]], sampling: Sampling) -> list[str]:
        *head, last = messages
        context = self.capabilities.context_length
        # the prompt's room in tokens, as a bound on its characters (cut_chars); None: not cut yet
        tokens = prompt_room(context, sampling.max_tokens) if context else None
        while True:
            fitted = [*head, {**last, "content": cut_chars(last["content"], tokens)}] if tokens else messages
            try:
                texts = self._samples(fitted, sampling)
                break
            except Refused as exc:
                tokens = (tokens or len(last["content"]) // CHARS_PER_TOKEN_MAX) // 2
                if exc.status != 400 or not _CONTEXT_REFUSAL.search(exc.detail) or tokens < MIN_KEPT:
                    raise
        if fitted[-1]["content"] != last["content"]:
            self.on_note(cut_note(messages, f"{len(fitted[-1]['content']):,} characters", context, sampling.max_tokens))
        return texts

    def _samples(self, messages: list[dict[str, str]], sampling: Sampling) -> list[str]:
        """`sampling.n` completions, one request each with its own seed."""
        def one(i: int, _):
            seed = sample_seed(sampling.seed, i)
            body = {"model": self.model_name, "messages": messages, "n": 1, "temperature": sampling.temperature,
                    "top_p": sampling.top_p, "max_tokens": sampling.max_tokens, "seed": seed}
            what = f"sample {i + 1} of {sampling.n} (seed {seed}) for {gist(messages)}"
            message = self._choice(self._request("POST", "/chat/completions", body, what), what).get("message") or {}
            return message.get("content") or ""

        return self._map(one, range(sampling.n))

    def load_adapter(self, name: str, folder: str) -> bool:
        """Ask the server to serve the PEFT adapter in `folder` (a path the server can read) as model
        `name`: vLLM's runtime LoRA loading (--enable-lora, VLLM_ALLOW_RUNTIME_LORA_UPDATING=True).
        True when it serves `name` now; False when the server has no such endpoint."""
        listed = self._request("GET", "/models", None, "listing the served models").get("data") or []
        if any(m.get("id") == name for m in listed):
            return True
        try:
            self._request("POST", "/load_lora_adapter", {"lora_name": name, "lora_path": folder},
                          f"loading adapter {name!r} from {folder}", answer_is_json=False)  # vLLM answers in text
        except Refused as exc:
            # no such route (a bare 404 "Not Found", as every web framework answers), not a refused adapter
            if exc.status in (405, _NOT_IMPLEMENTED) or (exc.status == 404 and exc.detail == "Not Found"):
                return False
            raise
        return True

    def close(self) -> None:
        self._client.close()

    # --- a chat endpoint takes messages, not token ids -------------------------------------

    def render_chat(self, messages):
        raise IpoError("the server backend applies the chat template on the server; it has no local rendering")

    def tokenize(self, text):
        raise IpoError("the server backend has no local tokenizer: it judges chat messages (first_token_logprobs)")

    def detokenize(self, ids):
        raise IpoError("the server backend has no local tokenizer: it judges chat messages (first_token_logprobs)")

    def last_logprobs(self, prefix, suffixes, ids):
        raise IpoError("the server backend cannot score token ids; the Judge uses first_token_logprobs with it")

    # --- requests ---------------------------------------------------------------------------

    def _map(self, fn, items) -> list:
        """fn(index, item) for every item on the pool; every request finishes (or fails) before the
        first failure, in request order, is raised."""
        items = list(items)
        results, errors = [None] * len(items), [None] * len(items)
        pending = iter(range(len(items)))
        take, stop = threading.Lock(), threading.Event()

        def worker():
            while not stop.is_set():
                with take:
                    i = next(pending, None)
                if i is None:
                    return
                with self._slots:  # in flight at most `concurrency`, whoever calls
                    try:
                        results[i] = fn(i, items[i])
                    except Exception as exc:  # noqa: BLE001  (raised in the caller, below)
                        errors[i] = exc

        # daemon threads: a Ctrl-C here need not wait for requests in flight to time out
        threads = [threading.Thread(target=worker, name="ipo-server", daemon=True)
                   for _ in range(min(self.concurrency, len(items)))]
        for thread in threads:
            thread.start()
        try:
            for thread in threads:
                thread.join()
        finally:
            stop.set()
        for error in errors:
            if error is not None:
                raise error
        return results

    def _request(self, method: str, path: str, body: dict | None, what: str, answer_is_json: bool = True) -> dict:
        """One request with retries on transient failures; the decoded JSON answer ({} when the
        answer is not meant to be JSON)."""
        httpx = self._httpx
        attempts = self.retries + 1
        for attempt in range(1, attempts + 1):
            wait = self.backoff * 2 ** (attempt - 1)
            try:
                response = self._client.request(method, path, json=body)
            except httpx.TimeoutException:
                reason = f"no answer within {self.timeout:g} s"
            except httpx.TransportError as exc:
                reason = _one_line(str(exc) or type(exc).__name__)
            else:
                if response.status_code < 400:
                    if not answer_is_json:
                        return {}
                    try:
                        return response.json()
                    except ValueError:
                        raise IpoError(f"{self.base_url}: {what}: the answer is not JSON "
                                       f"({_one_line(response.text)[:120]!r})") from None
                detail = _detail(response)
                reason = f"HTTP {response.status_code}: {detail}"
                if response.status_code == 401:
                    raise IpoError(f"{self.base_url} refused the API key ({reason}): set "
                                   f"{' or '.join(KEY_VARIABLES)}")
                final = response.status_code < 500 or response.status_code == _NOT_IMPLEMENTED
                if final and response.status_code not in _TRANSIENT:
                    raise Refused(response.status_code, f"{self.base_url} refused {what}: {reason}", detail)
                wait = max(wait, _retry_after(response))
            if attempt < attempts:
                time.sleep(wait)
        raise IpoError(f"{self.base_url}: {what} failed after {attempts} attempt{'s' * (attempts > 1)}: {reason}")

    def _choice(self, answer: dict, what: str) -> dict:
        choices = answer.get("choices") or []
        if not choices:
            raise IpoError(f"{self.base_url} answered {what} without choices")
        return choices[0]


def api_root(base_url: str) -> str:
    """The URL the OpenAI paths hang from: `base_url` itself when it ends in a version (/v1), else
    `base_url` + /v1."""
    url = base_url.strip().rstrip("/")
    if not re.match(r"^https?://[^/\s]+", url):
        raise IpoError(f"--base-url {base_url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)")
    return url if re.search(r"/v\d+$", url) else url + "/v1"


def _pick(listed: list[dict], wanted: str | None, base_url: str) -> tuple[str, int | None]:
    """The served model to name in requests, and its context length when the server says it."""
    ids = [str(m.get("id")) for m in listed if m.get("id")]
    if wanted:
        if ids and wanted not in ids:
            raise IpoError(f"{base_url} does not serve {wanted!r}; it serves {', '.join(ids)}")
        entry = next((m for m in listed if m.get("id") == wanted), {})
        return wanted, entry.get("max_model_len")
    roots = [m for m in listed if m.get("id") and not m.get("parent")]  # vLLM lists LoRA adapters with a parent
    if len(roots) != 1:
        served = ", ".join(ids) or "nothing"
        raise IpoError(f"{base_url} serves {served}: name the model with --model")
    return str(roots[0]["id"]), roots[0].get("max_model_len")


def _detail(response) -> str:
    try:
        error = response.json()
        error = error.get("error", error) if isinstance(error, dict) else error
        message = error.get("message") or error.get("detail") or error if isinstance(error, dict) else error
    except ValueError:
        message = response.text or response.reason_phrase
    text = _one_line(str(message))
    return text if len(text) <= 200 else text[:197] + "..."


def _retry_after(response) -> float:
    try:
        return min(float(response.headers.get("retry-after", 0)), 60.0)
    except ValueError:
        return 0.0


def _one_line(text: str) -> str:
    return " ".join(text.split())


def spawn_llama_cpp_server(model_path, threads: int = 1, port: int | None = None, alias: str | None = None,
                           n_ctx: int = 2048, ready_within: float = 180.0, log=None, lora=None):
    """Start llama-cpp-python's OpenAI-compatible server with ipo's llama.cpp set-up
    (`python -m ipo_tui.backends.llama_server`, needs `llama-cpp-python[server]`) on 127.0.0.1, with a GGUF LoRA file `lora` applied if given, and
    wait until it answers; returns (process, base_url).
    For tests, benchmarks and trying this backend without another server; the caller stops it."""
    import socket
    import subprocess
    import sys

    import httpx

    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    command = [sys.executable, "-m", "ipo_tui.backends.llama_server", "--model", str(model_path), "--host", "127.0.0.1",
               "--port", str(port), "--n_threads", str(threads), "--n_threads_batch", str(threads),
               "--n_ctx", str(n_ctx)]
    if alias:
        command += ["--model_alias", alias]
    if lora:
        command += ["--lora_path", str(lora)]
    process = subprocess.Popen(command, stdout=log or subprocess.DEVNULL, stderr=log or subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + ready_within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise IpoError(f"llama_cpp.server exited with status {process.returncode} before answering")
        try:
            if httpx.get(url + "/models", timeout=2.0).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    process.wait()
    raise IpoError(f"llama_cpp.server did not answer on {url} within {ready_within:g} s")
