"""p'yes scoring: evaluation templates rendered to token ids, Yes/No variant ids, Judgements.

p'yes = p(Yes) / (p(Yes) + p(No)) = sigmoid(z_yes - z_no), read from the next-token distribution
after the evaluation prompt, where p(Yes) sums the probabilities of every single-token spelling of
"Yes" (likewise "No"). One forward pass per candidate, no generation.

A backend that cannot score token ids (a remote server behind a chat endpoint) offers
`first_token_logprobs(conversations)` instead: for each list of chat messages, the (token text,
logprob) pairs the server returns for the first token of the assistant's answer. The Judge then
sends messages, not token ids, and matches the spellings by text (`from_top_logprobs`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ipo_tui.backends.base import Backend, split_common_prefix
from ipo_tui.errors import IpoError
from ipo_tui.judge.routing import route
from ipo_tui.judge.templates import Template
from ipo_tui.judge.templates import templates as load_templates

YES_VARIANTS = ("Yes", " Yes", "yes", " yes", "YES", " YES")
NO_VARIANTS = ("No", " No", "no", " no", "NO", " NO")
_YES_TEXT = frozenset(v.strip() for v in YES_VARIANTS)  # how a returned token's text is matched
_NO_TEXT = frozenset(v.strip() for v in NO_VARIANTS)
DEFAULT_MIN_MASS = 0.01  # the embedded 135M model gives 0.06-0.2 on ordinary prompts
_CUT_MARK = "[...] "
_TAIL_MIN = 32  # tokens of the response always kept when the instruction itself must be cut


@dataclass(frozen=True)
class Judgement:
    response: str
    p_yes: float
    logit_margin: float  # z_yes - z_no (log-sum-exp over the variant ids); p_yes = sigmoid of it
    mass: float  # p(Yes) + p(No) over the full vocabulary (over the top logprobs a server returned)
    category: str
    template: str
    low_mass: bool
    truncated: str | None = None  # what was cut to fit the context, if anything
    missing: bool = False  # neither Yes nor No among a server's top logprobs: p_yes, logit_margin are NaN

    def as_dict(self) -> dict:
        return {
            "response": self.response, "p_yes": None if self.missing else self.p_yes,  # JSON has no NaN
            "logit_margin": None if self.missing else self.logit_margin,
            "mass": self.mass, "category": self.category, "template": self.template,
            "low_mass": self.low_mass, "truncated": self.truncated, "missing": self.missing,
        }


def variant_ids(backend: Backend, variants: tuple[str, ...]) -> list[int]:
    """The ids of the spellings that are one token in this vocabulary, each once."""
    ids: list[int] = []
    for text in variants:
        tokens = backend.tokenize(text)
        if len(tokens) == 1 and tokens[0] not in ids:
            ids.append(tokens[0])
    return ids


class Judge:
    def __init__(self, backend: Backend, config: dict | None = None):
        self.backend = backend
        self.templates = load_templates(config)
        judge_cfg = (config or {}).get("judge") or {}
        self.min_mass = float(judge_cfg.get("min_mass", DEFAULT_MIN_MASS))
        self.category_templates: dict[str, str] = dict(judge_cfg.get("category_templates") or {})
        # a server returns token texts, not ids: its spellings are matched by text (from_top_logprobs)
        self.by_text = backend.scores_by_text
        self.yes_ids = [] if self.by_text else variant_ids(backend, YES_VARIANTS)
        self.no_ids = [] if self.by_text else variant_ids(backend, NO_VARIANTS)
        if not self.by_text and (not self.yes_ids or not self.no_ids):
            raise IpoError("this model's vocabulary has no single token for Yes or No; it cannot be used as a judge")
        self.missing = 0  # judgements so far with neither Yes nor No among a server's top logprobs

    def template_for(self, category: str) -> Template:
        name = self.category_templates.get(category, category)
        if name not in self.templates:
            known = ", ".join(sorted(self.templates))
            raise IpoError(f"unknown category or template {name!r}: choose one of {known}")
        return self.templates[name]

    def render(self, template: Template, instruction: str, response: str) -> tuple[list[int], str | None]:
        """Token ids of the evaluation prompt, cut to the context if needed, and a note of the cut.

        The instruction is kept whole when it can be, and the response keeps its end (where final
        answers and conclusions sit); what goes is the start of the response, then the middle of
        the instruction.
        """
        limit = self.backend.capabilities.context_length
        ids = self.backend.tokenize(self.backend.render_chat(template.messages(instruction, response)))
        if len(ids) <= limit:
            return ids, None
        resp_ids = self.backend.tokenize(response)
        overflow = len(ids) - limit + len(self.backend.tokenize(_CUT_MARK)) + 2
        keep_resp = len(resp_ids) - overflow
        notes = []
        if keep_resp < _TAIL_MIN:
            keep_resp = min(len(resp_ids), _TAIL_MIN)
            inst_ids = self.backend.tokenize(instruction)
            cut = overflow - (len(resp_ids) - keep_resp)
            keep_inst = len(inst_ids) - cut
            if keep_inst < 16:
                raise IpoError(f"the evaluation prompt cannot fit the context of {limit} tokens; use a model with a longer context")
            head = keep_inst // 2
            instruction = (self.backend.detokenize(inst_ids[:head]) + " " + _CUT_MARK
                           + self.backend.detokenize(inst_ids[len(inst_ids) - (keep_inst - head):]))
            notes.append(f"instruction cut in the middle to {keep_inst} of {len(inst_ids)} tokens")
        if keep_resp < len(resp_ids):
            response = _CUT_MARK + self.backend.detokenize(resp_ids[len(resp_ids) - keep_resp:])
            notes.append(f"response cut to its last {keep_resp} of {len(resp_ids)} tokens")
        ids = self.backend.tokenize(self.backend.render_chat(template.messages(instruction, response)))
        if len(ids) > limit:  # re-tokenizing at the cut can merge differently; drop the excess
            ids = ids[len(ids) - limit:]
        return ids, f"{'; '.join(notes)} to fit the context of {limit} tokens"

    def score(self, instruction: str, responses: list[str], category: str | None = None) -> list[Judgement]:
        """Judge each response to one instruction; all share the prompt's prefix in the KV cache."""
        if not instruction.strip():
            raise IpoError("the instruction is empty: give the prompt the responses answer")
        for i, response in enumerate(responses, 1):
            if not response.strip():
                raise IpoError(f"response {i} is empty: give each candidate some text")
        category = category or route(instruction)
        template = self.template_for(category)
        if self.by_text:
            tops = self.backend.first_token_logprobs([template.messages(instruction, r) for r in responses])
            margin, mass = np.array([from_top_logprobs(top) for top in tops]).reshape(-1, 2).T
            self.missing += int(np.isnan(margin).sum())
            notes = [None] * len(responses)  # the server refuses what does not fit its context
        else:
            rendered = [self.render(template, instruction, r) for r in responses]
            margin, mass = self.score_tokens([ids for ids, _ in rendered])
            notes = [note for _, note in rendered]
        return [
            Judgement(
                response=r, p_yes=_sigmoid(m), logit_margin=float(m), mass=float(ms), category=category,
                template=template.name, low_mass=bool(ms < self.min_mass), truncated=note,
                missing=bool(math.isnan(m)),
            )
            for r, note, m, ms in zip(responses, notes, margin, mass)
        ]

    def score_tokens(self, token_lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(z_yes - z_no, p(Yes) + p(No)) for fully rendered evaluation prompts."""
        prefix, suffixes = split_common_prefix(token_lists)
        lp = self.backend.last_logprobs(prefix, suffixes, self.yes_ids + self.no_ids).astype(np.float64)
        n_yes = len(self.yes_ids)
        lp_yes = np.logaddexp.reduce(lp[:, :n_yes], axis=1)
        lp_no = np.logaddexp.reduce(lp[:, n_yes:], axis=1)
        return lp_yes - lp_no, np.exp(lp_yes) + np.exp(lp_no)


def from_top_logprobs(top: list[tuple[str, float]]) -> tuple[float, float]:
    """(z_yes - z_no, p(Yes) + p(No)) from the top logprobs a server returned for the first token.

    A token counts as Yes (No) when its text, whitespace trimmed, is one of the variant spellings.
    Neither among them: (NaN, 0.0), a missing judgement, never a made-up score. Only one of them:
    the other's probability is at most the lowest returned, so it is taken at that bound, and p'yes
    is the least extreme value the server's answer allows.
    """
    yes = [lp for token, lp in top if token.strip() in _YES_TEXT]
    no = [lp for token, lp in top if token.strip() in _NO_TEXT]
    if not yes and not no:
        return math.nan, 0.0
    floor = min(lp for _, lp in top)
    lp_yes = float(np.logaddexp.reduce(yes)) if yes else floor
    lp_no = float(np.logaddexp.reduce(no)) if no else floor
    return lp_yes - lp_no, float(sum(math.exp(lp) for lp in yes + no))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def ranked(judgements: list[Judgement]) -> list[Judgement]:
    """Best p'yes first; missing judgements (no score) last."""
    return sorted(judgements, key=lambda j: (j.missing, 0.0 if j.missing else -j.p_yes))
