"""Reading and writing records: JSONL, JSON, CSV and Parquet files, and datasets on the Hugging Face
hub (hf:NAME).

Every reader yields (where, record) so that an error can name the line or row it came from.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ipo_tui import verbosity
from ipo_tui.errors import IpoError

FORMATS = (".jsonl", ".json", ".csv", ".parquet")
HUB = "hf:"  # hf:NAME[:SPLIT], a dataset on the Hugging Face hub


def read_records(source: str) -> Iterator[tuple[str, dict]]:
    """(where, record) for each record of a file, or of a dataset on the Hugging Face hub named
    hf:NAME[:SPLIT]. The hub only when asked: a mistyped path is refused at once, not after half a
    minute of retries against a hub."""
    if source.startswith(HUB):
        yield from _hub(source.removeprefix(HUB))
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise IpoError(_not_found(source))
    suffix = path.suffix.lower()
    reader = _READERS.get(suffix)
    if reader is None:
        raise IpoError(f"{path}: unknown format {suffix or '(none)'}; use one of {', '.join(FORMATS)}")
    if path.is_dir() and suffix != ".parquet":  # a folder of Parquet files is one dataset to pyarrow
        raise IpoError(f"{path} is a folder, not a {suffix} file; give the file itself")
    try:
        yield from reader(path)
    except UnicodeDecodeError:
        raise IpoError(_not_utf8(path)) from None
    except OSError as exc:
        raise IpoError(f"{path}: cannot read it ({exc.strerror or exc}); check the file and its permissions") from None


def _not_found(source: str) -> str:
    """The line for a source that is no file, with the hub's spelling where it reads like a dataset id."""
    dataset_like = "/" in source and not source.startswith((".", "/", "~")) and Path(source).suffix.lower() not in FORMATS
    return f"{source} does not exist" + (f" (a dataset on the Hugging Face hub: hf:{source})" if dataset_like else "")


def _not_utf8(path: Path) -> str:
    """The line for a text file that is not UTF-8, naming its first line that is not (a text-mode
    reader decodes in blocks, so where it failed says little)."""
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"{path} line {n}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8"
    return f"{path}: not UTF-8 text; save the file as UTF-8"


# The text readers take "utf-8-sig": a byte-order mark (Excel writes one) is dropped, not read
# into the first line or the first column's name.
def _jsonl(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, encoding="utf-8-sig") as fh:
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
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as exc:
        raise IpoError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(data, list):
        raise IpoError(f"{path}: expected a JSON list of objects")
    for n, row in enumerate(data, 1):
        if not isinstance(row, dict):
            raise IpoError(f"{path} item {n}: expected a JSON object")
        yield f"{path} item {n}", row


def _csv(path: Path) -> Iterator[tuple[str, dict]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        try:
            for row in reader:  # line_num: the line the row ends on (a quoted field may span lines)
                where = f"{path} line {reader.line_num}"
                if None in row:  # DictReader files the fields beyond the header under None
                    raise IpoError(f"{where}: more fields than the header names; quote a field that holds a comma")
                yield where, row
        except csv.Error as exc:
            raise IpoError(f"{path} line {reader.line_num}: not valid CSV ({exc}); fix that line") from None


def _parquet(path: Path) -> Iterator[tuple[str, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:  # pyarrow's OSError without an errno: damaged contents
        if getattr(exc, "errno", None):
            raise  # the system refused the file: read_records says so
        # "Could not open Parquet input source '<path>': <reason>. <advice>": the reason alone
        reason = str(exc).splitlines()[0].rpartition("': ")[2].split(". ")[0].rstrip(".")
        raise IpoError(f"{path}: not a Parquet file ({reason}); check what it holds, name it by its format") from None
    for n, row in enumerate(table.to_pylist(), 1):
        yield f"{path} row {n}", row


_READERS = {".jsonl": _jsonl, ".json": _json, ".csv": _csv, ".parquet": _parquet}


def _hub(dataset_id: str) -> Iterator[tuple[str, dict]]:
    name, _, split = dataset_id.partition(":")
    try:
        from datasets import load_dataset

        verbosity.quiet_datasets()
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


@dataclass(frozen=True)
class Duplicate:
    """A record left out because an earlier record of the file has its prompt text or its id."""

    where: str  # its position in the file: "line 9", "item 3" or "row 12"
    first: str  # the position of the earlier record
    same: str  # what it repeats: "text" or "id"


@dataclass(frozen=True)
class PromptFile:
    """The prompts of a file, and the duplicates left out of them."""

    prompts: list[dict]
    skipped: list[Duplicate]

    def skipped_summary(self) -> str | None:
        """One line on the duplicates left out ("skipped 3 duplicate prompts (lines 4, 9, 12) ..."), or None."""
        if not self.skipped:
            return None
        n, unit = len(self.skipped), self.skipped[0].where.split()[0]  # one file: one kind of position
        numbers = [d.where.split()[1] for d in self.skipped]
        shown = ", ".join(numbers[:10]) + (f" and {n - 10} more" if n > 10 else "")
        s = "s" if n > 1 else ""
        return f"skipped {n} duplicate prompt{s} ({unit}{s} {shown}): the same text or id as an earlier one"


def read_prompts(source: str, prompt_field: str = "prompt", category_field: str | None = "category",
                 keep_duplicates: bool = False, id_field: str | None = "id") -> PromptFile:
    """Every prompt of a file, checked before anything is stored (a bad record names its line and
    field), less the records that repeat an earlier one's text or `id_field`, unless `keep_duplicates`."""
    prompts, skipped, seen = [], [], {}
    for where, row in read_records(source):
        prompt = _prompt(where, row, prompt_field, category_field)
        record_id = row.get(id_field) if id_field else None
        repeat = None if keep_duplicates else _repeat(seen, _position(where), prompt["text"], record_id)
        if repeat:
            skipped.append(repeat)
        else:
            prompts.append(prompt)
    if not prompts:
        raise IpoError(f"{source} holds no records")
    return PromptFile(prompts, skipped)


def load_prompts(source: str, prompt_field: str = "prompt", category_field: str | None = "category") -> list[dict]:
    """Every prompt of a file, duplicates included (`read_prompts` leaves them out and says which)."""
    return read_prompts(source, prompt_field, category_field, keep_duplicates=True).prompts


def _prompt(where: str, row: dict, prompt_field: str, category_field: str | None) -> dict:
    """A record as a prompt to store: its text, its category, and every other field as meta."""
    category = row.get(category_field) if category_field else None
    if category is not None and not isinstance(category, str):
        raise IpoError(f"{where}: field {category_field!r} must be text")
    meta = json.loads(json.dumps({k: v for k, v in row.items() if k not in (prompt_field, category_field)},
                                 default=str))
    if found := _non_finite(meta, ""):
        field, value = found  # Python's json reads and writes NaN and Infinity; no other JSON reader does
        raise IpoError(f"{where}: {json.dumps(value)} in field {field!r} is not valid JSON; write null or a number")
    return {"text": text_field(where, row, prompt_field), "category": category or None, "meta": meta}


def _non_finite(value, path: str) -> tuple[str, float] | None:
    """(where, value) of the first NaN or infinity inside a JSON value, or None."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path, value)
    if isinstance(value, dict):
        items = ((f"{path}.{k}" if path else k, v) for k, v in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(value))
    else:
        return None
    return next((found for inner, v in items if (found := _non_finite(v, inner))), None)


def _position(where: str) -> str:
    """The position in a reader's `where`: "line 9" of "/data/my prompts.jsonl line 9" (or "item 3", "row 12")."""
    return " ".join(where.rsplit(" ", 2)[-2:])


def _repeat(seen: dict[tuple[str, str], str], position: str, text: str, record_id) -> Duplicate | None:
    """The Duplicate when an earlier record had this text (ends' spaces aside) or id; otherwise
    None, and both are noted in `seen` (a skipped record's are not: nothing of it is stored)."""
    keys = [("text", text.strip())]
    if record_id not in (None, ""):  # a CSV's empty id cell is no id
        keys.append(("id", json.dumps(record_id, sort_keys=True, default=str)))
    for key in keys:
        if key in seen:
            return Duplicate(position, seen[key], key[0])
    for key in keys:
        seen[key] = position
    return None


def pair_records(rows, fmt: str, conversational: bool = False) -> list[dict]:
    """Stored pairs in a trainer's shape: TRL (standard or conversational) or LLaMA-Factory ranking."""
    if fmt == "trl":
        def turn(role, text):
            return [{"role": role, "content": text}] if conversational else text

        return [{"prompt": turn("user", r["prompt"]), "chosen": turn("assistant", r["chosen"]),
                 "rejected": turn("assistant", r["rejected"]), "score_chosen": r["score_chosen"],
                 "score_rejected": r["score_rejected"], "category": r["category"] or r["prompt_category"] or None}
                for r in rows]
    if fmt == "llamafactory":
        return [{"instruction": r["prompt"], "input": "", "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows]
    raise IpoError(f"unknown export format {fmt!r}: choose trl or llamafactory")
