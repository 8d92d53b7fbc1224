"""The person as a check on the judge: how often curation agreed with the judge's pairs.

An accepted pair is agreement, a swapped one (chosen and rejected trade places) disagreement;
a rejected pair (neither reply worth training on) and an edited one say nothing about the order,
so they are counted but left out of the rate. It is the judge's accuracy on the user's own data,
per judge setting and category. Bulk accepts are not checks of each pair and are not counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ipo_tui.evaluation.stats import wilson
from ipo_tui.judge.settings import category_setting


@dataclass
class Agreement:
    judge: str
    settings: str  # what the judge id's settings were, in short
    category: str | None
    accept: int = 0
    swap: int = 0
    reject: int = 0
    edit: int = 0

    @property
    def checked(self) -> int:
        return self.accept + self.swap

    @property
    def rate(self) -> float | None:
        return self.accept / self.checked if self.checked else None

    @property
    def interval95(self) -> tuple[float, float]:
        return wilson(self.accept, self.checked)


def person_agreement(store) -> list[Agreement]:
    rows: dict[tuple[str, str], Agreement] = {}
    for r in store.curation_counts():
        key = (r["judge"], r["pair_category"])
        if key not in rows:
            rows[key] = Agreement(r["judge"], _describe(r["settings"]), r["pair_category"] or None)  # none recorded: "–" in tables, null in JSON
        setattr(rows[key], r["curation"], getattr(rows[key], r["curation"]) + r["pairs"])
    return list(rows.values())


def _describe(settings: str | None) -> str:
    if not settings:
        return "plain recipe"
    s = json.loads(settings)
    cats = s.get("categories") or {}
    text = "; ".join(f"{c}: {category_setting(c, v).describe()}" for c, v in sorted(cats.items()))
    return (text or "plain recipe") + (f", {s['mode']}" if s.get("mode") == "pairwise" else "")
