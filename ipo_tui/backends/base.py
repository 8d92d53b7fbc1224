"""The one interface every engine implements.

Scoring takes token ids as a shared prefix plus one suffix per candidate, so an engine computes
the prefix's KV cache once; generation takes chat messages and sampling settings.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from ipo_tui.backends.weights import ModelRef
from ipo_tui.errors import IpoError


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
