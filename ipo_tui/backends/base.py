"""The one interface every engine implements.

Scoring takes token ids as a shared prefix plus one suffix per candidate, so an engine computes
the prefix's KV cache once; generation takes chat messages and sampling settings.

Long prompts. A prompt that leaves too little of the context for the reply loses its middle
(`cut_middle`: an instruction's request sits at its start or its end), and the backend tells the
user once (`on_note`). Only the characters that enough tokens could spell are ever tokenized
(CHARS_PER_TOKEN_MAX each), so a 200,000-character prompt costs what one that fits costs.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ipo_tui.backends.weights import ModelRef
from ipo_tui.errors import IpoError

SEED_LIMIT = 2**31  # seeds lie in [0, 2**31): llama.cpp reads 2**32 - 1 (-1) as "random", servers take an int32
# No vocabulary spells more characters than this per token over a long text (English ~4, code ~6):
# text beyond it cannot fit, and is not tokenized to find that out.
CHARS_PER_TOKEN_MAX = 16
CUT_JOIN = " [...] "  # what stands for a cut middle
MIN_KEPT = 16  # tokens of a cut prompt below which it is no longer the user's prompt


class PromptCut(UserWarning):
    """A prompt was cut to fit the context (what `Backend.on_note` warns by default)."""


@dataclass(frozen=True)
class Capabilities:
    backend: str
    device: str
    dtype: str
    threads: int | None
    context_length: int
    can_train: bool
    supports_lora: bool


@dataclass(frozen=True)
class Sampling:
    n: int = 1
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 256
    seed: int = 0


class Backend(ABC):
    ref: ModelRef  # which weights
    adapter: str = ""  # the LoRA adapter applied on top, if any
    capabilities: Capabilities

    @abstractmethod
    def render_chat(self, messages: list[dict[str, str]]) -> str:
        """The model's chat template applied to `messages`, ending with the assistant's turn."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of text that already holds its special tokens (no BOS is added)."""

    @abstractmethod
    def detokenize(self, ids: list[int]) -> str: ...

    @abstractmethod
    def last_logprobs(self, prefix: list[int], suffixes: list[list[int]], ids: list[int]) -> np.ndarray:
        """For each suffix, the full-vocabulary log-softmax of the next token after prefix+suffix,
        taken at `ids`: an array of shape (len(suffixes), len(ids))."""

    def sequence_logprobs(self, prefix: list[int], suffixes: list[list[int]]) -> np.ndarray:
        """For each suffix, the log-probability of all its tokens after prefix (the sum over its
        tokens of log p(token | prefix and the suffix before it)): shape (len(suffixes),)."""
        raise IpoError(f"the {self.capabilities.backend} backend cannot read the probability of a given reply's "
                       "tokens (reply PMI); use the hf or llamacpp backend")

    @abstractmethod
    def generate(self, messages: list[dict[str, str]], sampling: Sampling) -> list[str]:
        """`sampling.n` completions of the assistant's turn."""

    def on_note(self, note: str) -> None:
        """Tell the user something about one request (a prompt cut to fit the context): a Python
        warning unless a face sets its own (`backend.on_note = print_a_note_line`)."""
        warnings.warn(note, PromptCut, stacklevel=3)

    def prompt_ids(self, messages: list[dict[str, str]], max_tokens: int) -> list[int]:
        """Token ids of the rendered conversation, its last message cut in the middle when the prompt
        would leave fewer than `max_tokens` (up to half the context) for the reply; a cut is noted once."""
        context = self.capabilities.context_length
        room = prompt_room(context, max_tokens)
        rendered = self.render_chat(messages)
        if len(rendered) <= CHARS_PER_TOKEN_MAX * room:  # else it cannot fit: skip tokenizing it all
            ids = self.tokenize(rendered)
            if len(ids) <= room:
                return ids
        *head, last = messages
        frame = len(self.tokenize(self.render_chat([*head, {**last, "content": ""}])))
        budget = room - frame
        while True:  # a cut's edges can merge with the template's tokens: cut again by the excess
            content = cut_middle(self, last["content"], budget)
            ids = self.tokenize(self.render_chat([*head, {**last, "content": content}]))
            if len(ids) <= room:
                break
            budget -= len(ids) - room
        if content != last["content"]:
            self.on_note(cut_note(messages, f"{len(ids) - frame} tokens", context, max_tokens))
        return ids

    generate_rows = 1  # samples worth putting in one generate_many call; an engine that batches raises it
    # an engine that cannot score token ids (a server behind a chat endpoint) judges chat messages
    # instead, through first_token_logprobs, and says so here
    scores_by_text = False

    def first_token_logprobs(self, conversations: list[list[dict[str, str]]]) -> list[list[tuple[str, float]]]:
        """For each conversation, the (token text, logprob) pairs of the top candidates for the first
        token of the assistant's answer. Only engines with `scores_by_text` offer it."""
        raise NotImplementedError(f"{type(self).__name__} scores token ids (last_logprobs), not chat messages")

    def generate_many(self, requests: list[tuple[list[dict[str, str]], Sampling]]) -> list[list[str]]:
        """`generate` for several conversations (sharing temperature, top_p and max_tokens); an
        engine that batches across prompts does them at once."""
        return [self.generate(messages, sampling) for messages, sampling in requests]

    def close(self) -> None:  # noqa: B027 (a backend that holds nothing native has nothing to free)
        """Free the engine's memory; the backend is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def sample_seed(seed: int, offset: int = 0) -> int:
    """The seed of the sample `offset` places after `seed`, in [0, SEED_LIMIT): seed + offset where
    it lies there (every seed stored so far), else wrapped into it, so that no engine reads it as
    "random" and a rerun draws the same samples (-1 draws what 2**31 - 1 draws)."""
    return (seed + offset) % SEED_LIMIT


def prompt_room(context: int, max_tokens: int) -> int:
    """The tokens a prompt may take: the context less the reply's `max_tokens`, which take half
    of it at most (a longer --max-tokens does not cut a prompt that leaves half the context)."""
    return context - min(max(max_tokens, 1), context // 2)


def char_span(text: str, tokens: int) -> int | None:
    """None when `tokens` tokens could spell all of `text`; else how many characters at each end
    they could spell at most (text between those ends cannot fit, and need not be tokenized)."""
    bound = CHARS_PER_TOKEN_MAX * max(tokens, 0)
    return None if len(text) <= bound else bound // 2


def cut_chars(text: str, tokens: int) -> str:
    """`text` without the middle characters that `tokens` tokens could never spell (CUT_JOIN
    instead); whole when it is short enough. For an engine with no tokenizer, and before tokenizing."""
    span = char_span(text, tokens)
    return text if span is None else text[:span] + CUT_JOIN + text[len(text) - span:]


def cut_middle(backend: Backend, text: str, budget: int) -> str:
    """`text` in at most about `budget` tokens: whole when it fits, else its first and last tokens
    with CUT_JOIN between. Only the characters at each end that `budget` tokens can spell are
    tokenized, so the cost does not grow with the text."""
    if budget < MIN_KEPT:
        raise IpoError(f"the prompt keeps {max(budget, 0)} tokens of the context: lower --max-tokens or raise --ctx")
    span = char_span(text, budget)
    if span is None:
        head = tail = backend.tokenize(text)
        if len(head) <= budget:
            return text
    else:
        head, tail = backend.tokenize(text[:span]), backend.tokenize(text[len(text) - span:])
    room = budget - len(backend.tokenize(CUT_JOIN))
    first = min(room // 2, len(head))
    last = min(room - room // 2, len(tail))
    return backend.detokenize(head[:first]) + CUT_JOIN + backend.detokenize(tail[len(tail) - last:])


def cut_note(messages: list[dict[str, str]], kept: str, context: int, max_tokens: int) -> str:
    """The one line that says a prompt was cut to fit (`context` 0: a server that did not say its own)."""
    size = len(messages[-1].get("content") or "")
    of = f" of {context} tokens" if context else ""
    return (f"prompt {gist(messages)} ({size:,} characters) cut in the middle to {kept} to fit the context{of} "
            f"with {max_tokens} to generate")


def gist(messages: list[dict[str, str]]) -> str:
    """The last user message, shortened: enough to say which request it was."""
    text = next((m.get("content") or "" for m in reversed(messages) if m.get("role") == "user"), "")
    text = " ".join(text[:200].split())
    return repr(text if len(text) <= 50 else text[:47] + "...")


def log_normalizer(logits: np.ndarray) -> np.ndarray:
    """log of the softmax's denominator over the last axis (the vocabulary), without overflow."""
    top = logits.max(axis=-1, keepdims=True)
    return top[..., 0] + np.log(np.exp(logits - top).sum(axis=-1))


def next_token_logprobs(logits: np.ndarray, targets: list[int]) -> np.ndarray:
    """log-softmax of each row of `logits` (positions x vocabulary) taken at that row's target token."""
    logits = logits.astype(np.float64)
    return logits[np.arange(len(targets)), targets] - log_normalizer(logits)


def split_common_prefix(seqs: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """The longest prefix all sequences share, and what is left of each (never empty)."""
    n = min(min(common_length(seqs[0], s) for s in seqs), min(len(s) for s in seqs) - 1)
    return list(seqs[0][:n]), [list(s[n:]) for s in seqs]


def common_length(a, b) -> int:
    """How many leading tokens two sequences share."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def plain_chat(messages: list[dict[str, str]]) -> str:
    """A neutral rendering for models without a chat template (base models)."""
    lines = [f"{m['role'].capitalize()}: {m['content']}" for m in messages]
    return "\n\n".join(lines) + "\n\nAssistant:"
