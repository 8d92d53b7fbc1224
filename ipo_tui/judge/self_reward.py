"""The Self-Rewarding baseline: the model writes a 1-5 score under an additive rubric.

Greedy generation, then a tolerant parser; an output with no score counts as a parse failure
(and, in a pairwise comparison, as wrong) rather than being given a made-up value.
"""

from __future__ import annotations

import re

from ipo_tui.backends.base import Backend, Sampling

RUBRIC = """Rate the response to the user's request below on a scale of 1 to 5. Start at 1 point and add points as follows:
- Add 1 point if the response is relevant and gives some information related to the request, even if incomplete.
- Add another point if it addresses a substantial part of the request in a useful way, though not all of it.
- Add a third point if it is clearly written from an assistant's perspective and answers the request directly and comprehensively.
- Add a fourth point if it is impeccable: expert, accurate, engaging, with nothing extraneous.

Request:
{instruction}

Response:
{response}

Briefly justify your rating, then end with the line "Score: <points>"."""

MAX_TOKENS = 96
_PATTERNS = (
    re.compile(r"score\W{0,3}(?:is|of)?\W{0,3}([1-5])(?:\.\d+)?\b", re.I),
    re.compile(r"\b([1-5])(?:\.\d+)?\s*(?:/|out of)\s*5\b", re.I),
    re.compile(r"\b([1-5])\s*points?\b", re.I),
    re.compile(r"^\W*([1-5])\W*$"),
)


def parse_score(text: str) -> int | None:
    """The score a rating text gives, from the most explicit form it uses; None if it gives none."""
    for pattern in _PATTERNS:
        matches = pattern.findall(text)
        if matches:
            return int(matches[-1])  # the last one: models restate the rubric before concluding
    return None


def rate(backend: Backend, instruction: str, response: str, max_tokens: int = MAX_TOKENS) -> tuple[int | None, str]:
    messages = [{"role": "user", "content": RUBRIC.format(instruction=instruction, response=response)}]
    [text] = backend.generate(messages, Sampling(n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0))
    return parse_score(text), text
