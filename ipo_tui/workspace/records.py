"""Reading and writing records: JSONL, JSON, CSV and Parquet files, and HF dataset ids.

Every reader yields (where, record) so that an error can name the line or row it came from.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from collections.abc import Iterator

from ipo_tui.errors import IpoError

FORMATS = (".jsonl", ".json", ".csv", ".parquet")


def read_records(source: str) -> Iterator[tuple[str, dict]]:
    """(where, record) for each record of a file, or of an HF dataset id when no such file exists."""
    path = Path(source).expanduser()
    if not path.exists():
        if "/" in source and not source.startswith((".", "/", "~")) and path.suffix.lower() not in FORMATS:
            yield from _hub(source)
            return
        raise IpoError(f"{source} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _jsonl(path)
    elif suffix == ".json":
        yield from _json(path)
    elif suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as fh:
            for n, row in enumerate(csv.DictReader(fh), 2):  # line 1 is the header
                yield f"{path} line {n}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq

        for n, row in enumerate(pq.read_table(path).to_pylist(), 1):
            yield f"{path} row {n}", row
    else:
        raise IpoError(f"{path}: unknown format {suffix or '(none)'}; use one of {', '.join(FORMATS)}")


def _jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise IpoError(f"{path} line {n}: not valid JSON ({exc.msg}); fix that line") from None
            if not isinstance(row, dict):
                raise IpoError(f"{path} line {n}: expected a JSON object")
            yield f"{path} line {n}", row


def _json(path: Path) -> Iterator[tuple[str, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise IpoError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise IpoError(f"{path}: expected a JSON list of objects")
    for n, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise IpoError(f"{path} item {n}: expected a JSON object")
        yield f"{path} item {n}", row


def _hub(dataset_id: str) -> Iterator[tuple[str, dict]]:
    name, _, split = dataset_id.partition(":")
    try:
        from datasets import load_dataset

        data = load_dataset(name, split=split or "train")
    except Exception as exc:  # the hub raises many types; all mean "could not get it"
        raise IpoError(f"could not load dataset {name} from the hub ({type(exc).__name__}); give a local file") from None
    for n, row in enumerate(data, 1):
        yield f"{name} row {n}", row


def text_field(where: str, row: dict, field: str) -> str:
    value = row.get(field)
    if not isinstance(value, str) or not value.strip():
        raise IpoError(f"{where}: field {field!r} is missing or empty")
    return value


def write_records(path: Path, rows: list[dict]) -> None:
    """Write JSONL or Parquet (by suffix) atomically: a failed write leaves no half file."""
    suffix = path.suffix.lower()
    if suffix not in (".jsonl", ".parquet"):
        raise IpoError(f"{path}: write .jsonl or .parquet")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if suffix == ".jsonl":
        with open(tmp, "w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), tmp)
    tmp.replace(path)


def load_prompts(source: str, prompt_field: str = "prompt", category_field: str | None = "category") -> list[dict]:
    """Every prompt of a file, checked before anything is stored: a bad record names its line and field."""
    prompts = []
    for where, row in read_records(source):
        category = row.get(category_field) if category_field else None
        if category is not None and not isinstance(category, str):
            raise IpoError(f"{where}: field {category_field!r} must be text")
        meta = {k: v for k, v in row.items() if k not in (prompt_field, category_field)}
        prompts.append({"text": text_field(where, row, prompt_field), "category": category or None,
                        "meta": json.loads(json.dumps(meta, default=str))})
    if not prompts:
        raise IpoError(f"{source} holds no records")
    return prompts


def pair_records(rows, fmt: str, conversational: bool = False) -> list[dict]:
    """Stored pairs in a trainer's shape: TRL (standard or conversational) or LLaMA-Factory ranking."""
    if fmt == "trl":
        def turn(role, text):
            return [{"role": role, "content": text}] if conversational else text

        return [{"prompt": turn("user", r["prompt"]), "chosen": turn("assistant", r["chosen"]),
                 "rejected": turn("assistant", r["rejected"]), "score_chosen": r["score_chosen"],
                 "score_rejected": r["score_rejected"], "category": r["category"] or r["prompt_category"] or ""}
                for r in rows]
    if fmt == "llamafactory":
        return [{"instruction": r["prompt"], "input": "", "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    raise IpoError(f"unknown export format {fmt!r}: choose trl or llamafactory")
