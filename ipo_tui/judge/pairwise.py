"""Pairwise mode: "which reply is better, A or B", asked in both orders, for pair-only uses.

d1 = z_A - z_B with the first reply shown as A, d2 = the same with it shown as B. The first reply's
margin is (d1 - d2) / 2, so a judge that leans to a position gains nothing from it; (d1 + d2) / 2
is that lean, and a comparison is position-consistent when both orders pick the same reply. A small
model often answers "A" whatever it is shown: then few comparisons are consistent and the margin is
noise, which `PositionReport.warning` says.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ipo_tui.backends.base import Backend, split_common_prefix
from ipo_tui.errors import IpoError

SYSTEM = "You are a strict, fair reviewer. You answer every question with a single letter: A or B."
USER = ("Which reply answers the request better: more helpful, more accurate, and doing exactly what was asked?"
        "\n\nRequest:\n{instruction}\n\nReply A:\n{a}\n\nReply B:\n{b}\n\nAnswer A or B.")
A_VARIANTS = ("A", " A")
B_VARIANTS = ("B", " B")
USELESS_BELOW = 0.5  # position-consistent fraction under which the verdicts are mostly position


@dataclass(frozen=True)
class Comparison:
    margin: float  # > 0: the first reply is better (log-odds, the position's lean cancelled)
    bias: float  # > 0: the judge leans to whichever reply is shown as A
    consistent: bool  # both orders picked the same reply


@dataclass
class PositionReport:
    comparisons: int = 0
    consistent: int = 0
    first_position: int = 0  # comparisons where both orders answered A
    bias_sum: float = 0.0

    def add(self, c: Comparison, d1: float, d2: float) -> None:
        self.comparisons += 1
        self.consistent += c.consistent
        self.first_position += d1 > 0 and d2 > 0
        self.bias_sum += c.bias

    def as_dict(self) -> dict:
        n = max(self.comparisons, 1)
        return {"comparisons": self.comparisons, "consistent": self.consistent / n,
                "always_a": self.first_position / n, "mean_bias": self.bias_sum / n}

    @property
    def warning(self) -> str | None:
        if not self.comparisons or self.consistent / self.comparisons >= USELESS_BELOW:
            return None
        return (f"pairwise judge: only {self.consistent / self.comparisons:.0%} of comparisons pick the same reply in "
                f"both orders ({self.first_position / self.comparisons:.0%} answer A either way): its verdicts follow "
                "the position, not the replies, on this model; use the pointwise judge")


class PairwiseJudge:
    def __init__(self, backend: Backend):
        if backend.scores_by_text:
            raise IpoError("pairwise mode reads token probabilities of A and B; a server backend judges pointwise")
        from ipo_tui.judge.scoring import variant_ids

        self.backend = backend
        self.a_ids, self.b_ids = variant_ids(backend, A_VARIANTS), variant_ids(backend, B_VARIANTS)
        if not self.a_ids or not self.b_ids:
            raise IpoError("this model's vocabulary has no single token for A or B; it cannot judge pairwise")
        self.report = PositionReport()

    def _render(self, instruction: str, a: str, b: str) -> list[int]:
        user = USER.replace("{instruction}", instruction).replace("{a}", a).replace("{b}", b)
        return self.backend.tokenize(self.backend.render_chat([{"role": "system", "content": SYSTEM},
                                                               {"role": "user", "content": user}]))

    def _fit(self, instruction: str, first: str, second: str) -> tuple[str, str]:
        """Both replies cut to their ends, equally, when the two together overflow the context."""
        limit = self.backend.capabilities.context_length
        over = len(self._render(instruction, first, second)) - limit + 16
        if over <= 0:
            return first, second
        ids = [self.backend.tokenize(first), self.backend.tokenize(second)]
        keep = max(32, (len(ids[0]) + len(ids[1]) - over) // 2)
        return tuple(self.backend.detokenize(t[-keep:]) if len(t) > keep else text for t, text in zip(ids, (first, second)))

    def raw(self, instruction: str, first: str, second: str) -> tuple[float, float]:
        """(d1, d2): z_A - z_B with `first` shown as A, then with it shown as B."""
        first, second = self._fit(instruction, first, second)
        prefix, suffixes = split_common_prefix([self._render(instruction, first, second),
                                                self._render(instruction, second, first)])
        lp = self.backend.last_logprobs(prefix, suffixes, self.a_ids + self.b_ids).astype(np.float64)
        n = len(self.a_ids)
        d = np.logaddexp.reduce(lp[:, :n], axis=1) - np.logaddexp.reduce(lp[:, n:], axis=1)
        return float(d[0]), float(d[1])

    def compare(self, instruction: str, first: str, second: str) -> Comparison:
        d1, d2 = self.raw(instruction, first, second)
        c = combine(d1, d2)
        self.report.add(c, d1, d2)
        return c


def combine(d1: float, d2: float) -> Comparison:
    return Comparison((d1 - d2) / 2, (d1 + d2) / 2, (d1 > 0) != (d2 > 0))
