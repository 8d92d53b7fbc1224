"""p'yes scoring: evaluation templates rendered to token ids, Yes/No variant ids, Judgements.

p'yes = p(Yes) / (p(Yes) + p(No)) = sigmoid(z_yes - z_no), read from the next-token distribution
after the evaluation prompt, where p(Yes) sums the probabilities of every single-token spelling of
"Yes" (likewise "No"). One forward pass per candidate, no generation.

A backend that cannot score token ids (a remote server behind a chat endpoint) offers
`first_token_logprobs(conversations)` instead: for each list of chat messages, the (token text,
logprob) pairs the server returns for the first token of the assistant's answer. The Judge then
sends messages, not token ids, and matches the spellings by text (`from_top_logprobs`).

The judge's settings (judge/settings.py) choose, per category, the templates whose log-odds are
averaged (or weighted, as the search fitted them), a per-response baseline (the response under a
content-free instruction), a length correction, the reply's own PMI with the instruction and a
calibration offset; `score_terms` is the one place those are applied (calibration apart, in
`Judge.score`). The score they add up to is what orders judgements: `ranked`, `margin`, `prefers`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from ipo_tui.backends.base import CHARS_PER_TOKEN_MAX, Backend, cut_chars, cut_middle, split_common_prefix
from ipo_tui.errors import IpoError
from ipo_tui.judge.routing import route
from ipo_tui.judge.settings import CategorySetting, JudgeSettings, load_settings
from ipo_tui.judge.templates import Template
from ipo_tui.judge.templates import templates as load_templates

YES_VARIANTS = ("Yes", " Yes", "yes", " yes", "YES", " YES")
NO_VARIANTS = ("No", " No", "no", " no", "NO", " NO")
_YES_TEXT = frozenset(v.strip() for v in YES_VARIANTS)  # how a returned token's text is matched
_NO_TEXT = frozenset(v.strip() for v in NO_VARIANTS)
CONTENT_FREE = "N/A"  # the instruction of a response's baseline, the reply of a calibration offset
_CUT_MARK = "[...] "
_TAIL_MIN = 32  # tokens of the response always kept when the instruction itself must be cut


@dataclass(frozen=True)
class Judgement:
    response: str
    # The judge's log-odds that the response is good: z_yes - z_no for one template (log-sum-exp over
    # the variant ids), the setting's combination otherwise. It orders, compares and thresholds every
    # judgement: a combined score runs far past where its sigmoid rounds to 1.0. NaN when missing.
    score: float
    mass: float  # p(Yes) + p(No) over the full vocabulary (over the top logprobs a server returned)
    category: str
    template: str  # the templates whose log-odds were combined, joined by "+"
    low_mass: bool
    truncated: str | None = None  # what was cut to fit the context, if anything
    missing: bool = False  # neither Yes nor No among a server's top logprobs: no score
    probability: bool = False  # the score is one template's own log-odds: p_yes is p(Yes) / (p(Yes) + p(No))

    @property
    def p_yes(self) -> float:
        return sigmoid(self.score)

    def as_dict(self) -> dict:
        return {
            "response": self.response, "score": None if self.missing else self.score,  # JSON has no NaN
            "p_yes": None if self.missing else self.p_yes, "probability": self.probability,
            "mass": self.mass, "category": self.category, "template": self.template,
            "low_mass": self.low_mass, "truncated": self.truncated, "missing": self.missing,
        }


# --- one score orders every judgement -------------------------------------------------------------

def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def ranked(items: list, score=attrgetter("score")) -> list:
    """Best score first; items without one (missing, NaN or None) last, in their order."""
    def key(item):
        s = score(item)
        return (1, 0.0) if s is None or math.isnan(s) else (0, -s)

    return sorted(items, key=key)


def margin(chosen: float | None, rejected: float | None) -> float:
    """How far the judge prefers `chosen` to `rejected`, in score units (NaN when either has no score)."""
    return math.nan if chosen is None or rejected is None else chosen - rejected


def prefers(chosen: float | None, rejected: float | None) -> bool:
    """Whether the judge scores `chosen` above `rejected`: a tie or a missing score is not a preference."""
    return margin(chosen, rejected) > 0


def score_label(probabilities) -> str:
    """What a column of scores shows: p'yes where every judgement's score is one template's own
    log-odds, the score itself (log-odds) where any is a combination (None, an unjudged side, says
    nothing)."""
    return "p'yes" if all(p for p in probabilities if p is not None) else "score"


def shown(score: float | None, as_probability: bool) -> str | None:
    """A score as a person reads it: p'yes (3 decimals) or signed log-odds; None where there is none."""
    if score is None or math.isnan(score):
        return None
    return f"{sigmoid(score):.3f}" if as_probability else f"{score:+.2f}"


def variant_ids(backend: Backend, variants: tuple[str, ...]) -> list[int]:
    """The ids of the spellings that are one token in this vocabulary, each once."""
    ids: list[int] = []
    for text in variants:
        tokens = backend.tokenize(text)
        if len(tokens) == 1 and tokens[0] not in ids:
            ids.append(tokens[0])
    return ids


def log_length(texts: list[str]) -> np.ndarray:
    """The length a judge's margin is corrected for: log(1 + characters)."""
    return np.log1p(np.array([len(t) for t in texts], dtype=np.float64))


def score_terms(margins: list[np.ndarray], baselines: list[np.ndarray] | None, signs: list[int],
                lengths: np.ndarray, setting: CategorySetting,
                reply: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Each term of a category's score, by name, from each template's raw z_yes - z_no (and, when
    the setting uses them, each template's margin for the same responses under a content-free
    instruction, and each reply's (PMI with the instruction, tokens)): a_t * m_t per template,
    - sum_t b_t * m0_t, - length_slope * (log length - centre), reply_pmi * R + reply_pmi_per_token *
    R / tokens; with (a, b) the setting's coefficients (for a hand-written setting, the mean over
    templates of sign * (m - pmi * m0))."""
    a, b = setting.coefficients(signs)
    terms = {name: w * m for name, w, m in zip(setting.templates, a, margins)}
    if setting.uses_baselines:
        terms["content-free margins"] = -sum(w * m0 for w, m0 in zip(b, baselines))
    if setting.length_slope:
        terms["length"] = -setting.length_slope * (lengths - setting.length_centre)
    if setting.uses_reply_pmi:
        pmi, tokens = reply
        terms["reply PMI"] = setting.reply_pmi * pmi + setting.reply_pmi_per_token * pmi / tokens
    return terms


def combine(margins: list[np.ndarray], baselines: list[np.ndarray] | None, signs: list[int],
            lengths: np.ndarray, setting: CategorySetting,
            reply: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """A category's score: the sum of its terms."""
    return sum(score_terms(margins, baselines, signs, lengths, setting, reply).values())


class Judge:
    def __init__(self, backend: Backend, config: dict | None = None, settings: JudgeSettings | None = None):
        self.backend = backend
        self.templates = load_templates(config)
        self.settings = settings or load_settings(config, backend.ref.name)
        self.min_mass = self.settings.min_mass
        self._baselines: dict[tuple, float] = {}  # (template texts, response) -> margin under CONTENT_FREE
        self._free_logprobs: dict[tuple, float] = {}  # (response, tokens kept) -> log p(reply | CONTENT_FREE)
        self._offsets: dict[tuple, float] = {}  # (category, instruction) -> calibration offset
        self._router = None  # the model router, made on first use
        # a server returns token texts, not ids: its spellings are matched by text (from_top_logprobs)
        self.by_text = backend.scores_by_text
        self.yes_ids = [] if self.by_text else variant_ids(backend, YES_VARIANTS)
        self.no_ids = [] if self.by_text else variant_ids(backend, NO_VARIANTS)
        if not self.by_text and (not self.yes_ids or not self.no_ids):
            raise IpoError("this model's vocabulary has no single token for Yes or No; it cannot be used as a judge")
        self.missing = 0  # judgements so far with neither Yes nor No among a server's top logprobs
        # per category: each score term's summed |value| over the responses judged, and their number
        self.term_sizes: dict[str, dict[str, float]] = {}
        self.judged: dict[str, int] = {}

    @property
    def policy(self) -> str:
        """The weights that judge: the model, and the adapter on it if any."""
        identity = self.backend.ref.identity
        return f"{identity}+{self.backend.adapter}" if self.backend.adapter else identity

    @property
    def id(self) -> str:
        """What the workspace records as this judge: the policy, and a digest of the settings unless
        they are the plain recipe, so judgements made under different settings never mix."""
        digest = self.settings.digest(self.templates)
        return self.policy if digest == _default_digest() else f"{self.policy}#{digest}"

    def describe(self) -> dict:
        """The settings, as recorded with the judgements."""
        return self.settings.as_config()

    def summary(self) -> str:
        """One line saying how this judge judges."""
        s = self.settings
        parts = [f"{c}: {v.describe()}" for c, v in sorted(s.categories.items())] or ["each category's own template"]
        extra = [f"mode {s.mode}"] + (["router model"] if s.router == "model" else []) + (["calibrated"] if s.calibrate else [])
        name = "(plain recipe)" if self.id == self.policy else self.id[len(self.policy) + 1:]
        return f"judge {name}: {'; '.join(parts)}; {', '.join(extra)}"

    def route(self, instruction: str) -> str:
        """The category of an instruction, by the configured router."""
        if self.settings.router == "keyword":
            return route(instruction)
        if self._router is None:
            from ipo_tui.judge.model_router import ModelRouter

            self._router = ModelRouter(self.backend)
        return self._router.route(instruction)

    def setting_for(self, category: str) -> CategorySetting:
        return self.settings.for_category(category)

    def template_for(self, category: str) -> Template:
        """The category's first template (the one the lab shows and edits)."""
        return self.named(self.setting_for(category).templates[0])

    def named(self, name: str) -> Template:
        if name not in self.templates:
            known = ", ".join(sorted(self.templates))
            raise IpoError(f"unknown category or template {name!r}: choose one of {known}")
        return self.templates[name]

    def render(self, template: Template, instruction: str, response: str) -> tuple[list[int], str | None]:
        """Token ids of the evaluation prompt, cut to the context if needed, and a note of the cut.

        The instruction is kept whole when it can be, and the response keeps its end (where final
        answers and conclusions sit); what goes is the start of the response, then the middle of
        the instruction (cut_middle, the rule generation uses), by the same amount whatever the
        response, so every candidate of an instruction shares its evaluated prefix. Text that the
        context could never hold is dropped before tokenizing (cut_chars), so a huge prompt costs
        what a fitting one does.
        """
        backend, limit = self.backend, self.backend.capabilities.context_length
        instruction, response = cut_chars(instruction, limit), response[-CHARS_PER_TOKEN_MAX * limit:]
        ids = backend.tokenize(backend.render_chat(template.messages(instruction, response)))
        if len(ids) <= limit:
            return ids, None
        resp_ids = backend.tokenize(response)
        slack = len(backend.tokenize(_CUT_MARK)) + 2
        keep_resp = len(resp_ids) - (len(ids) - limit + slack)
        notes = []
        if keep_resp < _TAIL_MIN:
            keep_resp = min(len(resp_ids), _TAIL_MIN)
            frame = len(backend.tokenize(backend.render_chat(template.messages("", ""))))
            keep_inst = limit - frame - slack - _TAIL_MIN  # the same for every response
            if keep_inst < 16:
                raise IpoError(f"the evaluation prompt cannot fit the context of {limit} tokens; use a model with a longer context")
            cut = cut_middle(backend, instruction, keep_inst)
            if cut != instruction:
                notes.append(f"instruction cut in the middle to {keep_inst} tokens")
            instruction = cut
        if keep_resp < len(resp_ids):
            response = _CUT_MARK + backend.detokenize(resp_ids[len(resp_ids) - keep_resp:])
            notes.append(f"response cut to its last {keep_resp} of {len(resp_ids)} tokens")
        ids = backend.tokenize(backend.render_chat(template.messages(instruction, response)))
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
        category = category or self.route(instruction)
        setting = self.setting_for(category)
        terms, mass, notes = self._terms(instruction, responses, setting)
        scores = sum(terms.values())
        if self.settings.calibrate:
            scores = scores - self.offset(instruction, category)
        self.missing += int(np.isnan(scores).sum())
        self._tally(category, terms)
        probability = setting.single and self.named(setting.templates[0]).sign > 0 and not self.settings.calibrate
        return [
            Judgement(
                response=r, score=float(m), mass=float(ms), category=category,
                template="+".join(setting.templates), low_mass=bool(ms < self.min_mass), truncated=note,
                missing=bool(math.isnan(m)), probability=probability,
            )
            for r, note, m, ms in zip(responses, notes, scores, mass)
        ]

    def _terms(self, instruction: str, responses: list[str], setting: CategorySetting):
        """(score terms, mass, truncation notes) under a category's setting."""
        templates = [self.named(name) for name in setting.templates]
        raw = [self.margins(t, instruction, responses) for t in templates]
        baselines = [self.baselines(t, responses) for t in templates] if setting.uses_baselines else None
        reply = self.reply_pmi(instruction, responses) if setting.uses_reply_pmi else None
        terms = score_terms([m for m, _, _ in raw], baselines, [t.sign for t in templates], log_length(responses),
                            setting, reply)
        mass = np.mean([ms for _, ms, _ in raw], axis=0)
        notes = [next((n[i] for _, _, n in raw if n[i]), None) for i in range(len(responses))]
        return terms, mass, notes

    def _tally(self, category: str, terms: dict[str, np.ndarray]) -> None:
        sizes = self.term_sizes.setdefault(category, {})
        for name, values in terms.items():
            sizes[name] = sizes.get(name, 0.0) + float(np.nansum(np.abs(values)))
        self.judged[category] = self.judged.get(category, 0) + len(next(iter(terms.values())))

    def terms_report(self) -> str | None:
        """Per category whose setting has several terms, the share of |score| each carried on the
        responses judged so far, largest first: a term with most of it can decide the ranking
        alone. None where every score was one template's."""
        lines = []
        for category, sizes in sorted(self.term_sizes.items()):
            total = sum(sizes.values())
            if len(sizes) < 2 or not total:
                continue
            shares = sorted(((size / total, name) for name, size in sizes.items()), reverse=True)
            line = (f"{category} score terms on the {self.judged[category]} responses judged (share of |score|): "
                    + ", ".join(f"{name} {share:.0%}" for share, name in shares))
            if sizes.get("reply PMI", 0.0) / total >= 0.5:
                line += ("; the reply PMI is summed over the reply's tokens, so it grows with the reply's length "
                         "and can decide the ranking alone")
            lines.append(line)
        return "\n".join(lines) or None

    def margins(self, template: Template, instruction: str, responses: list[str]):
        """Raw (z_yes - z_no, Yes+No mass, truncation notes) of each response under one template."""
        if self.by_text:
            tops = self.backend.first_token_logprobs([template.messages(instruction, r) for r in responses])
            margin, mass = np.array([from_top_logprobs(top) for top in tops]).reshape(-1, 2).T
            return margin, mass, [None] * len(responses)  # the server refuses what does not fit its context
        rendered = [self.render(template, instruction, r) for r in responses]
        margin, mass = self.score_tokens([ids for ids, _ in rendered])
        return margin, mass, [note for _, note in rendered]

    def baselines(self, template: Template, responses: list[str]) -> np.ndarray:
        """Each response's raw margin under a content-free instruction: what the model thinks of the
        reply whatever was asked. Cached per template text and response; computed together, so the
        content-free prefix is evaluated once."""
        key = (template.system, template.user)
        todo = [r for r in dict.fromkeys(responses) if (key, r) not in self._baselines]
        if todo:
            margin, _, _ = self.margins(template, CONTENT_FREE, todo)
            self._baselines.update({(key, r): float(m) for r, m in zip(todo, margin)})
        return np.array([self._baselines[(key, r)] for r in responses])

    def reply_pmi(self, instruction: str, responses: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(PMI, tokens) of each response as the model's own answer: log p(reply | instruction) -
        log p(reply | CONTENT_FREE), summed over the reply's tokens. A reply longer than the context
        leaves is measured on its first tokens (the same ones under both instructions). The
        content-free side is cached per reply, and computed together, with its prefix evaluated once."""
        prefix = self.backend.tokenize(self.backend.render_chat([{"role": "user", "content": instruction}]))
        free = self.backend.tokenize(self.backend.render_chat([{"role": "user", "content": CONTENT_FREE}]))
        room = self.backend.capabilities.context_length - max(len(prefix), len(free))
        if room < _TAIL_MIN:
            raise IpoError(f"the instruction leaves {max(room, 0)} tokens of the context for the reply; raise --ctx "
                           "or judge without reply PMI")
        replies = [self.backend.tokenize(r)[:room] for r in responses]
        keys = [(r, room) for r in responses]
        todo = {k: ids for k, ids in zip(keys, replies) if k not in self._free_logprobs}
        if todo:
            self._free_logprobs.update(zip(todo, self.backend.sequence_logprobs(free, list(todo.values()))))
        given = self.backend.sequence_logprobs(prefix, replies)
        return given - np.array([self._free_logprobs[k] for k in keys]), np.array([len(r) for r in replies], dtype=float)

    def offset(self, instruction: str, category: str) -> float:
        """The calibration offset of (category setting, instruction): the score of a content-free
        reply, so that such a reply scores 0 (p'yes 0.5). It is the same for every candidate of an
        instruction, so it never changes their ranking; it moves thresholds and comparisons across
        prompts. One extra pass per instruction, cached."""
        key = (category, instruction)
        if key not in self._offsets:
            terms, _, _ = self._terms(instruction, [CONTENT_FREE], self.setting_for(category))
            self._offsets[key] = float(sum(terms.values())[0])
        return self._offsets[key]

    def score_tokens(self, token_lists: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(z_yes - z_no, p(Yes) + p(No)) for fully rendered evaluation prompts."""
        prefix, suffixes = split_common_prefix(token_lists)
        lp = self.backend.last_logprobs(prefix, suffixes, self.yes_ids + self.no_ids).astype(np.float64)
        n_yes = len(self.yes_ids)
        lp_yes = np.logaddexp.reduce(lp[:, :n_yes], axis=1)
        lp_no = np.logaddexp.reduce(lp[:, n_yes:], axis=1)
        return lp_yes - lp_no, np.exp(lp_yes) + np.exp(lp_no)


def configured_judge(backend: Backend, flags: dict | None = None, config: dict | None = None) -> Judge:
    """The judge a user configured for this model: the config's templates and settings, those saved
    for the model by `ipo prompts search` on top, and a command's --judge-* `flags` over both."""
    from ipo_tui.config import load_config
    from ipo_tui.judge.settings import override

    config = load_config() if config is None else config
    judge = Judge(backend, config, override(load_settings(config, backend.ref.name), **(flags or {})))
    for setting in judge.settings.categories.values():
        for name in setting.templates:
            judge.named(name)  # an unknown template fails here, before any work
    return judge


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


@functools.cache
def _default_digest() -> str:
    return JudgeSettings().digest(load_templates(None))


