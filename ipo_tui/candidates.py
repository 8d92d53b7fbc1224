"""Reading candidate files for `ipo score`: JSONL, one {"response": ...} object a line, with an
optional "prompt" (else the --prompt given) and "category"."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ipo_tui.errors import IpoError


@dataclass(frozen=True)
class Candidate:
    prompt: str
    response: str
    category: str | None = None


def read_candidates(path: Path, default_prompt: str | None) -> list[Candidate]:
    if not path.is_file():
        raise IpoError(f"candidates file {path} does not exist")
    out = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IpoError(f"{path} line {n}: not valid JSON ({exc.msg}); fix that line") from None
            if not isinstance(row, dict):
                raise IpoError(f"{path} line {n}: expected an object like {{\"response\": \"...\"}}")
            response = row.get("response")
            if not isinstance(response, str) or not response.strip():
                raise IpoError(f"{path} line {n}: field 'response' is missing or empty; give the candidate's text")
            prompt = row.get("prompt", default_prompt)
            if not isinstance(prompt, str) or not prompt.strip():
                raise IpoError(f"{path} line {n}: no 'prompt' field and no --prompt given; give one of them")
            out.append(Candidate(prompt, response, row.get("category")))
    if not out:
        raise IpoError(f"{path} holds no candidates")
    return out
