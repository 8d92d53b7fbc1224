"""Reading candidate files for `ipo score`: one {"response": ...} record a line (JSONL, or any
format `datasets.read_records` reads), with an optional "prompt" (else --prompt) and "category"."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ipo_tui.errors import IpoError
from ipo_tui.workspace.records import read_records, text_field


@dataclass(frozen=True)
class Candidate:
    prompt: str
    response: str
    category: str | None = None


def read_candidates(path: Path, default_prompt: str | None) -> list[Candidate]:
    if not path.is_file():
        raise IpoError(f"candidates file {path} does not exist")
    out = []
    for where, row in read_records(str(path)):
        response = text_field(where, row, "response")
        prompt = row.get("prompt", default_prompt)
        if not isinstance(prompt, str) or not prompt.strip():
            raise IpoError(f"{where}: no 'prompt' field and no --prompt given; give one of them")
        out.append(Candidate(prompt, response, row.get("category")))
    if not out:
        raise IpoError(f"{path} holds no candidates")
    return out
