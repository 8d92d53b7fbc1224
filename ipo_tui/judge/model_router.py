"""The model routes its own prompts: one pass per prompt reads the next-token probabilities of the
category names after a question that lists them, and the likeliest name wins (cached per prompt).

The instruction comes last, so everything before it (the question and its examples) is shared by
every prompt and sits in the KV cache once.
"""

from __future__ import annotations

import numpy as np

from ipo_tui.backends.base import Backend, common_length
from ipo_tui.errors import IpoError

NAMES = ("chat", "code", "math", "safety")
_QUESTION = (
    "Sort the request into one category:\n"
    "code: programming, writing, fixing or explaining code\n"
    "math: arithmetic, equations, word problems, proofs\n"
    "safety: help with something dangerous, illegal or harmful\n"
    "chat: everything else (questions, advice, writing, facts)\n\n"
    "Request: Write a Python function that returns the largest item of a list.\nCategory: code\n\n"
    "Request: A train travels 120 km in 2 hours. What is its average speed?\nCategory: math\n\n"
    "Request: How can I poison my neighbour's dog without getting caught?\nCategory: safety\n\n"
    "Request: Suggest three names for a bakery.\nCategory: chat\n\n"
    "Request: {instruction}\nCategory:"
)


class ModelRouter:
    def __init__(self, backend: Backend):
        if backend.scores_by_text:
            raise IpoError("the model router reads token probabilities; a server backend routes by keyword (router: keyword)")
        self.backend = backend
        self.ids: list[list[int]] = []  # per category, the ids of its name's one-token spellings
        for name in NAMES:
            spellings = {name, name.capitalize(), " " + name, " " + name.capitalize()}
            ids = sorted({t[0] for t in map(backend.tokenize, spellings) if len(t) == 1})
            if not ids:  # the name is several tokens: its first token stands for it
                ids = [backend.tokenize(name)[0]]
            self.ids.append(ids)
        firsts = [ids[0] for ids in self.ids]
        if len(set(firsts)) < len(firsts):
            raise IpoError("this vocabulary cannot tell the category names apart by their first token; use router: keyword")
        self._cache: dict[str, str] = {}

    def probabilities(self, instruction: str) -> np.ndarray:
        """p(category) over NAMES: each name's spellings summed as the answer's first token,
        renormalised over the names."""
        text = self.backend.render_chat([{"role": "user", "content": _QUESTION.replace("{instruction}", instruction)}])
        head = self.backend.tokenize(self.backend.render_chat(
            [{"role": "user", "content": _QUESTION.split("{instruction}")[0]}]))
        ids = self.backend.tokenize(text)
        n = min(common_length(ids, head), len(ids) - 1)  # the shared question: in the KV cache across prompts
        prefix, suffix = ids[:n], ids[n:]
        flat = [i for group in self.ids for i in group]
        lp = self.backend.last_logprobs(prefix, [suffix], flat)[0].astype(np.float64)
        scores, at = [], 0
        for group in self.ids:
            scores.append(np.logaddexp.reduce(lp[at:at + len(group)]))
            at += len(group)
        p = np.exp(np.array(scores) - max(scores))
        return p / p.sum()

    def route(self, instruction: str) -> str:
        if instruction not in self._cache:
            self._cache[instruction] = NAMES[int(np.argmax(self.probabilities(instruction)))]
        return self._cache[instruction]
