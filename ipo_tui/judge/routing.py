"""The category router: which evaluation template fits an instruction."""

from __future__ import annotations

import re

# Checked in this order: a request for harmful help is a safety question even when it mentions code.
_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("safety", re.compile(
        r"\b(kill|murder|weapon|bomb|explosive|poison|suicide|self-harm|steal|hack into|malware|"
        r"ransomware|drugs?|meth|cocaine|launder|terroris\w*|shoot|assault|attack|abuse|harass\w*|"
        r"illegal|counterfeit|bypass security|exploit)\b", re.I)),
    ("code", re.compile(
        r"```|\bdef |\bfunction\b|\bclass\b|\b(python|javascript|typescript|java|c\+\+|rust|golang|"
        r"sql|regex|bash|html|css|api|compile|compiler|debug|bug|algorithm|code|program|script|"
        r"implement)\b|#include|=>|\breturn\b", re.I)),
    ("math", re.compile(
        r"\b(calculate|compute|solve|equation|integral|derivative|probability|how many|how much|"
        r"sum of|product of|percent|percentage|average|fraction|prove|theorem)\b|"
        r"\d+\s*[-+*/^x×÷]\s*\d+|\$\d", re.I)),
)


def route(instruction: str) -> str:
    """The first category whose keywords appear in the instruction; 'chat' otherwise."""
    for category, pattern in _RULES:
        if pattern.search(instruction):
            return category
    return "chat"


# Labels that prompt sets and pair files use for the same categories (MT-Bench, RewardBench).
_ALIASES = {"chat": "chat", "chat-hard": "chat", "code": "code", "coding": "code", "math": "math",
            "safety": "safety", "refusals": "safety", "generic": "generic"}


def category_for(label: str | None, instruction: str, router=route) -> str:
    """A dataset's own category label where it names one of ours, else the router's choice."""
    return _ALIASES.get((label or "").strip().lower()) or router(instruction)
