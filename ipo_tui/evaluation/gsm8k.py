"""GSM8K (Cobbe et al. 2021): grade-school word problems whose answer is one number; a response is
right when its final number equals the answer (lm-eval's "flexible extract": the last number in
the text, commas and a trailing period dropped), asked zero-shot with a request to reason first."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

DATA = Path(__file__).with_name("data") / "gsm8k-test.jsonl"
ASK = "\n\nSolve the problem step by step, then give the final answer as a number on the last line."
_NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


@cache
def items() -> list[dict]:
    """The 1,319 test problems: key, prompt (the question and the request), answer (a number)."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [{"key": row["id"], "prompt": row["prompt"] + ASK, "answer": row["answer"]} for row in rows]


def final_number(text: str) -> float | None:
    """The last number a text gives ("$1,250." reads 1250), or None if it gives none."""
    numbers = _NUMBER.findall(text)
    if not numbers:
        return None
    try:
        return float(numbers[-1].replace(",", "").replace("$", ""))
    except ValueError:
        return None


def check(item: dict, response: str) -> dict:
    given = final_number(response)
    return {"correct": given is not None and given == float(str(item["answer"]).replace(",", "")), "given": given}


def summarize(results: list[dict]) -> dict:
    from ipo_tui.evaluation.stats import wilson

    right = sum(r["correct"] for r in results)
    return {"accuracy": right / len(results) if results else None, "n": len(results),
            "interval95": {"accuracy": wilson(right, len(results))}}


def passed(result: dict, level: str = "") -> bool:
    return result["correct"]
