"""The statistics every evaluation shares: intervals for a proportion, the paired test for two
policies on the same items, and the fixed sample of a file that a --limit takes."""

from __future__ import annotations

import math


def wilson(correct: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% for z = 1.96); (0, 1) for no trials."""
    if total == 0:
        return 0.0, 1.0
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(only_a: int, only_b: int) -> float:
    """The exact (binomial) McNemar test's two-sided p-value: of the items where two policies
    disagree, `only_a` are right under A alone and `only_b` under B alone; under the null each
    disagreement goes either way with probability 1/2."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def spread(rows: list, limit: int | None) -> list:
    """A fixed sample of `limit` rows spread evenly over `rows` (all of them without a limit), so
    that a file grouped by subset keeps every subset, and every run with the same limit takes the
    same rows."""
    if not limit or limit >= len(rows):
        return list(rows)
    return [rows[i * len(rows) // limit] for i in range(limit)]
