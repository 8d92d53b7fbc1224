"""The SQLite workspace: prompt sets, prompts, candidates, judgements, pairs and runs.

One file (WAL mode, foreign keys on), versioned migrations in `MIGRATIONS` applied in order and
recorded in `PRAGMA user_version`, and a transaction around every multi-row write, so a crash
or a kill leaves either all of a write or none of it. Opening refuses, before changing anything, a
file that is not a workspace, is damaged or is newer; a workspace this process may not write opens
read-only. A full disk, a read-only file or damage comes out as one line (IpoError).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from ipo_tui import config
from ipo_tui.errors import IpoError

PAIR_STATUSES = ("proposed", "accepted", "rejected", "edited")
# the pairs a person kept (a swap or an edit leaves a pair `edited`): what training and export take
# unless told otherwise, in the CLI, the app and the API alike
TRAINED_STATUSES = ("accepted", "edited")
# what a loop trains on: it runs unattended, so the judge's proposals count too, never a rejected pair
LOOP_STATUSES = ("proposed", *TRAINED_STATUSES)

MIGRATIONS = [
    """
    CREATE TABLE prompt_sets (
        id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, source TEXT, created_at TEXT NOT NULL);
    CREATE TABLE prompts (
        id INTEGER PRIMARY KEY,
        set_id INTEGER NOT NULL REFERENCES prompt_sets(id) ON DELETE CASCADE,
        position INTEGER NOT NULL, text TEXT NOT NULL, category TEXT, meta TEXT,
        UNIQUE (set_id, position));
    CREATE TABLE candidates (
        id INTEGER PRIMARY KEY,
        prompt_id INTEGER NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
        text TEXT NOT NULL, model TEXT NOT NULL, adapter TEXT NOT NULL DEFAULT '',
        sample_index INTEGER NOT NULL, seed INTEGER NOT NULL, sampling TEXT NOT NULL, created_at TEXT NOT NULL,
        UNIQUE (prompt_id, model, adapter, sample_index));
    CREATE TABLE judgements (
        id INTEGER PRIMARY KEY,
        candidate_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
        judge TEXT NOT NULL, template TEXT NOT NULL, category TEXT NOT NULL,
        p_yes REAL NOT NULL, mass REAL NOT NULL, logit_margin REAL NOT NULL, created_at TEXT NOT NULL,
        UNIQUE (candidate_id, judge, template));
    CREATE TABLE pairs (
        id INTEGER PRIMARY KEY,
        prompt_id INTEGER NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
        chosen_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
        rejected_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
        judge TEXT NOT NULL, margin REAL NOT NULL,
        status TEXT NOT NULL DEFAULT 'proposed'
            CHECK (status IN ('proposed', 'accepted', 'rejected', 'edited')),
        updated_at TEXT NOT NULL,
        UNIQUE (prompt_id, judge));
    CREATE TABLE runs (
        id TEXT PRIMARY KEY, kind TEXT NOT NULL, status TEXT NOT NULL, config TEXT NOT NULL,
        folder TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL);
    CREATE INDEX candidates_prompt ON candidates (prompt_id);
    CREATE INDEX judgements_candidate ON judgements (candidate_id);
    """,
    # the settings behind each judge id (a policy, and a digest of its judge settings), and the
    # person's last curation action on a pair: accept, reject, swap or edit
    """
    CREATE TABLE judges (id TEXT PRIMARY KEY, settings TEXT NOT NULL, created_at TEXT NOT NULL);
    ALTER TABLE pairs ADD COLUMN curation TEXT;
    UPDATE pairs SET curation = CASE status WHEN 'accepted' THEN 'accept' WHEN 'rejected' THEN 'reject'
                                             WHEN 'edited' THEN 'edit' END;
    """,
    # objective benchmarks: a policy (model + adapter) under generation settings, and each item's
    # response with the checker's verdict, so that a benchmark resumes and two policies pair up
    """
    CREATE TABLE benches (
        id TEXT PRIMARY KEY, model TEXT NOT NULL, adapter TEXT NOT NULL DEFAULT '', settings TEXT NOT NULL,
        created_at TEXT NOT NULL, UNIQUE (model, adapter, settings));
    CREATE TABLE bench_items (
        bench_id TEXT NOT NULL REFERENCES benches(id) ON DELETE CASCADE, task TEXT NOT NULL, item TEXT NOT NULL,
        response TEXT NOT NULL, result TEXT NOT NULL, seconds REAL NOT NULL, created_at TEXT NOT NULL,
        PRIMARY KEY (bench_id, task, item));
    """,
    # one score orders every judgement: its log-odds (the column logit_margin, read as `score`), and
    # whether that is one template's own log-odds (p'yes a probability) or a setting's combination:
    # the plain recipe's judge ids carry no settings digest (an external judge's id is `judge@policy`). Pairs' margins become score differences
    # wherever both sides are judged (a rule's margin, random's 0 or longer's characters, stays).
    """
    ALTER TABLE judgements ADD COLUMN probability INTEGER NOT NULL DEFAULT 0;
    UPDATE judgements SET probability = 1 WHERE template NOT LIKE '%+%' AND template <> 'self-reward'
        AND judge NOT GLOB '*#[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]' AND judge NOT GLOB '*#[0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f][0-9a-f]@*';
    UPDATE pairs SET margin = (
        SELECT jc.logit_margin - jr.logit_margin FROM judgements jc, judgements jr
        WHERE jc.candidate_id = pairs.chosen_id AND jc.judge = pairs.judge
          AND jr.candidate_id = pairs.rejected_id AND jr.judge = pairs.judge AND jr.template = jc.template
        ORDER BY jc.id DESC, jr.id DESC LIMIT 1)
    WHERE EXISTS (SELECT 1 FROM judgements WHERE candidate_id = pairs.chosen_id AND judge = pairs.judge)
      AND EXISTS (SELECT 1 FROM judgements WHERE candidate_id = pairs.rejected_id AND judge = pairs.judge);
    """,
    # curation a person can take back: each pair keeps the judge's own proposal (back to proposed
    # restores it; for a pair a person acted on, the order of its two scores says which way the
    # judge had it; an edited reply's original text is not known, so its pair resets to the edit)
    # and its category (the judge's routing, which an edit keeps); a margin may be
    # unknown (an edited side its judge has not scored); curation_log holds each pair's state before
    # every curation action, grouped by action, so the last action undoes as a whole
    """
    CREATE TABLE pairs_new (
        id INTEGER PRIMARY KEY,
        prompt_id INTEGER NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
        chosen_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
        rejected_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
        judge TEXT NOT NULL, margin REAL,
        status TEXT NOT NULL DEFAULT 'proposed'
            CHECK (status IN ('proposed', 'accepted', 'rejected', 'edited')),
        updated_at TEXT NOT NULL, curation TEXT, category TEXT,
        judge_chosen_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
        judge_rejected_id INTEGER NOT NULL REFERENCES candidates(id) ON DELETE CASCADE,
        judge_margin REAL,
        UNIQUE (prompt_id, judge));
    INSERT INTO pairs_new (id, prompt_id, chosen_id, rejected_id, judge, margin, status, updated_at, curation, category,
                           judge_chosen_id, judge_rejected_id, judge_margin)
    SELECT pr.id, pr.prompt_id, pr.chosen_id, pr.rejected_id, pr.judge, pr.margin, pr.status, pr.updated_at, pr.curation,
        COALESCE((SELECT category FROM judgements WHERE candidate_id = pr.chosen_id AND judge = pr.judge LIMIT 1),
                 (SELECT category FROM judgements WHERE candidate_id = pr.rejected_id AND judge = pr.judge LIMIT 1)),
        CASE WHEN swapped THEN pr.rejected_id ELSE pr.chosen_id END,
        CASE WHEN swapped THEN pr.chosen_id ELSE pr.rejected_id END,
        CASE WHEN swapped THEN -pr.margin ELSE pr.margin END
    FROM (SELECT pr.*, CASE
            WHEN pr.curation IS NULL THEN 0
            WHEN sc IS NOT NULL AND sr IS NOT NULL THEN sc < sr
            ELSE pr.curation = 'swap' END AS swapped
          FROM (SELECT p0.*,
                  (SELECT logit_margin FROM judgements WHERE candidate_id = p0.chosen_id AND judge = p0.judge
                   ORDER BY id DESC LIMIT 1) AS sc,
                  (SELECT logit_margin FROM judgements WHERE candidate_id = p0.rejected_id AND judge = p0.judge
                   ORDER BY id DESC LIMIT 1) AS sr
                FROM pairs p0) pr) pr;
    DROP TABLE pairs;
    ALTER TABLE pairs_new RENAME TO pairs;
    CREATE TABLE curation_log (
        id INTEGER PRIMARY KEY, action INTEGER NOT NULL, what TEXT NOT NULL,
        pair_id INTEGER NOT NULL REFERENCES pairs(id) ON DELETE CASCADE,
        chosen_id INTEGER NOT NULL, rejected_id INTEGER NOT NULL, margin REAL, status TEXT NOT NULL, curation TEXT,
        created_at TEXT NOT NULL);
    CREATE INDEX curation_log_action ON curation_log (action);
    """,
]
CURATIONS = ("accept", "reject", "swap", "edit")

BUSY_TIMEOUT_S = 30
# A quick_check at open reads every b-tree page, so that damage is one line at open rather than a traceback
# mid-command: it makes opening a 15 MB workspace (3,671 pages, in the page cache) take 12 ms instead of
# 0.6 ms, so it stays well under 0.1 s up to this size; a bigger file gets the schema check only.
QUICK_CHECK_MAX_BYTES = 64 * 2**20

# sqlite's primary result codes (sqlite3.SQLITE_* from Python 3.11) and, for Python 3.10, whose errors carry
# no code, the message of each
BUSY, READONLY, IOERR, CORRUPT, CANTOPEN, FULL, NOTADB = 5, 8, 10, 11, 14, 13, 26
_CODE_OF_MESSAGE = {"database is locked": BUSY, "attempt to write a readonly database": READONLY,
                    "disk I/O error": IOERR, "database disk image is malformed": CORRUPT,
                    "unable to open database file": CANTOPEN, "database or disk is full": FULL,
                    "file is not a database": NOTADB}


# a judgement's row: its score in the column logit_margin (the name it had before it ordered
# everything), and p_yes = sigmoid(score) kept for readers of the file
_INSERT_JUDGEMENT = ("INSERT OR REPLACE INTO judgements (candidate_id, judge, template, category, p_yes, mass, "
                     "logit_margin, probability, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _judgement_row(candidate_id: int, judge: str, j, stamp: str) -> tuple:
    return (candidate_id, judge, j.template, j.category, j.p_yes, j.mass, j.score, int(j.probability), stamp)


def curation_status(row) -> str:
    """A pair's status as a person reads it: `edited` names the swap or edit that made it so."""
    return f"{row['status']} ({row['curation']})" if row["status"] == "edited" and row["curation"] else row["status"]


def _count(pair_ids: list[int]) -> str:
    return f"pair {pair_ids[0]}" if len(pair_ids) == 1 else f"{len(pair_ids)} pairs"


def default_path() -> Path:
    return config.data_dir() / "workspace.sqlite"


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if code is not None else _CODE_OF_MESSAGE.get(str(exc))


def _statements(script: str) -> list[str]:
    """A migration script's statements, to run one by one inside a transaction: `executescript` would
    commit the open transaction first."""
    statements, pending = [], ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip() != ";":
                statements.append(pending)
            pending = ""
    return statements


def _tables(version: int) -> set[str]:
    """The tables a workspace of schema `version` has (a table rebuilt under a new name counts once)."""
    scripts = "".join(MIGRATIONS[:version])
    return set(re.findall(r"CREATE TABLE (\w+)", scripts)) - set(re.findall(r"ALTER TABLE (\w+) RENAME", scripts))


class Store:
    def __init__(self, path: Path | None = None):
        self.path = Path(path) if path else default_path()
        self.read_only = not self._writable()
        self.db: sqlite3.Connection | None = None
        try:
            self.db = self._connect_read_only() if self.read_only else sqlite3.connect(
                self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._open()
        except (sqlite3.Error, IpoError) as exc:
            if self.db is not None:
                self.db.close()
            problem = self._problem(exc) if isinstance(exc, sqlite3.Error) else str(exc)
            if problem is None:
                raise
            raise IpoError(problem) from None

    def _open(self) -> None:
        """Check what the file holds before changing anything, then switch to WAL and migrate."""
        self.db.row_factory = sqlite3.Row
        self._check_schema()
        self._check_pages()
        self.db.execute("PRAGMA foreign_keys=ON")
        if not self.read_only:
            self._enable_wal()
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._migrate()

    def _writable(self) -> bool:
        """Whether this process may write the file and make its -wal and -shm beside it."""
        folder = self.path.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IpoError(f"cannot make the folder {folder} for {self.path} ({exc.strerror}); "
                           "pass another --workspace") from None
        if not self.path.exists() and not os.access(folder, os.W_OK):
            raise IpoError(f"cannot create {self.path}: its folder is read-only; pass another --workspace")
        return os.access(folder, os.W_OK) and (not self.path.exists() or os.access(self.path, os.W_OK))

    def _connect_read_only(self) -> sqlite3.Connection:
        """`mode=ro` reads the -wal too but needs a -shm beside the file, which sqlite cannot make in a
        read-only folder; `immutable=1` needs neither but ignores the -wal, so it serves only when that is empty."""
        uri = "file:" + urllib.parse.quote(str(self.path))
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            db.execute("SELECT 1 FROM sqlite_master").fetchall()  # the -wal and -shm are opened at the first read
            return db
        except sqlite3.OperationalError as exc:
            db.close()
            if _primary_code(exc) not in (READONLY, CANTOPEN):
                raise
        wal = Path(f"{self.path}-wal")
        if wal.exists() and wal.stat().st_size:
            raise IpoError(f"{self.path} is read-only and its last writes are still in {wal.name}, which sqlite "
                           "cannot read in a read-only folder; open it once where it can be written")
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)

    def _check_schema(self) -> None:
        """Refuse a database that is not a workspace, is newer, is damaged or, read-only, would need migrating."""
        rows = self.db.execute(  # one statement, one snapshot: another process may be migrating the file
            "SELECT v.user_version, m.name FROM pragma_user_version v "
            "LEFT JOIN sqlite_master m ON m.type = 'table'").fetchall()
        version, tables = rows[0][0], {r[1] for r in rows if r[1] is not None}
        if tables and (version == 0 or not tables & _tables(len(MIGRATIONS))):
            raise IpoError(f"{self.path} is an SQLite database but not an ipo workspace (its tables: "
                           f"{', '.join(sorted(tables))}); nothing was changed; pass another --workspace")
        if version > len(MIGRATIONS):
            raise IpoError(f"{self.path} was written by a newer ipo-tui (schema {version}); upgrade ipo-tui")
        if missing := _tables(version) - tables:
            raise IpoError(self._damaged(f"table {', '.join(sorted(missing))} missing"))
        if self.read_only and version < len(MIGRATIONS):
            raise IpoError(f"{self.path} is read-only and its schema ({version}) is older than this ipo-tui's "
                           f"({len(MIGRATIONS)}): open it once where it can be written, so it is upgraded")

    def _check_pages(self) -> None:
        """Find damage now, as one line, rather than as a traceback in the middle of a command."""
        if self.path.exists() and self.path.stat().st_size <= QUICK_CHECK_MAX_BYTES:
            problems = [r[0] for r in self.db.execute("PRAGMA quick_check(1)")]
            if problems != ["ok"]:  # "*** in database main ***\nPage 126: ...": the page is the news
                raise IpoError(self._damaged(problems[0].splitlines()[-1]))

    def _damaged(self, detail: str) -> str:
        recovered = self.path.with_name(f"{self.path.stem}-recovered{self.path.suffix}")
        return (f"{self.path} is damaged ({detail}); recover what is left with "
                f"`sqlite3 {shlex.quote(str(self.path))} \".recover\" | sqlite3 {shlex.quote(str(recovered))}` "
                "and pass that as --workspace, or restore a backup")

    def _enable_wal(self) -> None:
        """Switch to WAL. Processes switching a new file at once each hold a read lock the others need
        released, so sqlite answers SQLITE_BUSY without waiting on the busy timeout: wait here instead."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self.db.execute("PRAGMA journal_mode=WAL").fetchall()
                return
            except sqlite3.OperationalError as exc:
                if _primary_code(exc) != BUSY or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def _migrate(self) -> None:
        """Apply the missing migrations in one transaction under the write lock, the version read again
        inside it, so processes opening a new workspace at once apply each migration once."""
        if self.db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS):
            return  # up to date: no write lock taken
        with self.transaction() as db:
            for number in range(db.execute("PRAGMA user_version").fetchone()[0], len(MIGRATIONS)):
                for statement in _statements(MIGRATIONS[number]):
                    db.execute(statement)
            db.execute(f"PRAGMA user_version={len(MIGRATIONS)}")

    def _problem(self, exc: sqlite3.Error) -> str | None:
        """The one line for a sqlite error that the person can act on; None for a bug's."""
        return {
            FULL: f"{self.path}: the disk is full; nothing of this write was stored (earlier data is intact); "
                  "free space and run the command again",
            READONLY: f"{self.path} is read-only: {exc}; copy it somewhere writable or pass another --workspace",
            IOERR: f"{self.path}: the disk reported an I/O error ({exc}); nothing of this write was stored; "
                   "check the disk and run the command again",
            CORRUPT: self._damaged(str(exc)),
            NOTADB: f"{self.path} is not an ipo workspace ({exc}); pass another --workspace",
            BUSY: f"{self.path} is locked by another process ({exc}); let it finish and run the command again",
            CANTOPEN: f"{self.path} cannot be opened ({exc}); check that it is a file you may read, "
                      "or pass another --workspace",
        }.get(_primary_code(exc))

    def check_writable(self) -> None:
        """Refuse, in one line, work that would write a workspace this process may only read."""
        if self.read_only:
            raise IpoError(f"{self.path} is read-only: this process may not write the file or its folder; "
                           "copy it somewhere writable or pass another --workspace")

    @contextmanager
    def transaction(self):
        """All of the writes inside, or none of them; a full disk, a read-only file, an I/O error or
        damage comes out as one line."""
        self.check_writable()
        try:
            self.db.execute("BEGIN IMMEDIATE")
            yield self.db
            self.db.execute("COMMIT")
        except BaseException as exc:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            problem = self._problem(exc) if isinstance(exc, sqlite3.Error) else None
            if problem is None:
                raise
            raise IpoError(problem) from None

    def close(self) -> None:
        self.db.close()

    # --- prompt sets --------------------------------------------------------------------------

    def add_prompt_set(self, name: str, source: str, prompts: list[dict]) -> int:
        """Store a named set of prompts ({"text", "category"?, "meta"?}) in one transaction."""
        if not prompts:
            raise IpoError(f"no prompts to import into {name!r}")
        with self.transaction() as db:
            if db.execute("SELECT 1 FROM prompt_sets WHERE name = ?", (name,)).fetchone():
                raise IpoError(f"a prompt set named {name!r} exists already; choose another --name")
            set_id = db.execute("INSERT INTO prompt_sets (name, source, created_at) VALUES (?, ?, ?)",
                                (name, source, now())).lastrowid
            db.executemany(
                "INSERT INTO prompts (set_id, position, text, category, meta) VALUES (?, ?, ?, ?, ?)",
                [(set_id, i, p["text"], p.get("category"), json.dumps(p.get("meta") or {}))
                 for i, p in enumerate(prompts)],
            )
        return set_id

    def add_prompt(self, set_name: str, text: str, category: str | None = None, source: str = "added") -> int:
        """Append one prompt to a set (made if missing); returns its id."""
        with self.transaction() as db:
            return self._append_prompt(db, self._set_id(db, set_name, source), text, category)

    @staticmethod
    def _set_id(db: sqlite3.Connection, name: str, source: str) -> int:
        """The id of the prompt set `name`, made if missing."""
        row = db.execute("SELECT id FROM prompt_sets WHERE name = ?", (name,)).fetchone()
        return row["id"] if row else db.execute(
            "INSERT INTO prompt_sets (name, source, created_at) VALUES (?, ?, ?)", (name, source, now())).lastrowid

    @staticmethod
    def _append_prompt(db: sqlite3.Connection, set_id: int, text: str, category: str | None) -> int:
        position = db.execute("SELECT COALESCE(MAX(position) + 1, 0) FROM prompts WHERE set_id = ?", (set_id,)).fetchone()[0]
        return db.execute("INSERT INTO prompts (set_id, position, text, category, meta) VALUES (?, ?, ?, ?, '{}')",
                          (set_id, position, text, category)).lastrowid

    def prompt_sets(self) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT s.*, COUNT(p.id) AS prompts FROM prompt_sets s LEFT JOIN prompts p ON p.set_id = s.id "
            "GROUP BY s.id ORDER BY s.id").fetchall()

    def prompt_set_name(self, set_id: int) -> str:
        return self.db.execute("SELECT name FROM prompt_sets WHERE id = ?", (set_id,)).fetchone()[0]

    def prompts(self, set_name: str, limit: int | None = None) -> list[sqlite3.Row]:
        row = self.db.execute("SELECT id FROM prompt_sets WHERE name = ?", (set_name,)).fetchone()
        if row is None:
            known = ", ".join(r["name"] for r in self.prompt_sets()) or "none yet"
            raise IpoError(f"no prompt set named {set_name!r} (known: {known}); import one with `ipo prompts import`")
        return self.db.execute("SELECT * FROM prompts WHERE set_id = ? ORDER BY position LIMIT ?",
                               (row["id"], -1 if limit is None else limit)).fetchall()

    # --- candidates and judgements ------------------------------------------------------------

    def add_candidates(self, prompt_id: int, model: str, adapter: str, sampling: dict,
                       samples: list[tuple[int, int, str]]) -> None:
        """Store (sample_index, seed, text) samples of one prompt; a sample already there is kept."""
        stamp, settings = now(), json.dumps(sampling, sort_keys=True)
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO candidates (prompt_id, text, model, adapter, sample_index, seed, sampling, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(prompt_id, text, model, adapter, index, seed, settings, stamp) for index, seed, text in samples],
            )

    def sample_indices(self, prompt_id: int, model: str, adapter: str) -> set[int]:
        rows = self.db.execute("SELECT sample_index FROM candidates WHERE prompt_id = ? AND model = ? AND adapter = ?",
                               (prompt_id, model, adapter))
        return {r[0] for r in rows}

    def candidates(self, prompt_id: int, model: str | None = None, adapter: str | None = None) -> list[sqlite3.Row]:
        sql, args = "SELECT * FROM candidates WHERE prompt_id = ?", [prompt_id]
        if model is not None:
            sql, args = sql + " AND model = ? AND adapter = ?", args + [model, adapter or ""]
        return self.db.execute(sql + " ORDER BY sample_index, id", args).fetchall()

    def add_judgements(self, judge: str, rows: list[tuple[int, object]], settings: dict | None = None) -> None:
        """Store (candidate_id, Judgement) rows by `judge`, whose `settings` are recorded with the id;
        a newer judgement replaces an older one."""
        stamp = now()
        with self.transaction() as db:
            if settings is not None:
                db.execute("INSERT OR IGNORE INTO judges (id, settings, created_at) VALUES (?, ?, ?)",
                           (judge, json.dumps(settings, sort_keys=True), stamp))
            db.executemany(
                _INSERT_JUDGEMENT, [_judgement_row(cid, judge, j, stamp) for cid, j in rows],
            )

    def judgements(self, prompt_id: int, judge: str, model: str, adapter: str) -> list[sqlite3.Row]:
        """The candidates of a prompt by one policy, with their judgement by `judge` (NULL where none yet)."""
        return self.db.execute(
            "SELECT c.id AS candidate_id, c.text, c.sample_index, j.logit_margin AS score, j.mass, j.template, "
            "j.category "
            "FROM candidates c LEFT JOIN judgements j ON j.candidate_id = c.id AND j.judge = ? "
            "WHERE c.prompt_id = ? AND c.model = ? AND c.adapter = ? ORDER BY c.sample_index, c.id",
            (judge, prompt_id, model, adapter)).fetchall()

    # --- pairs ----------------------------------------------------------------------------------

    def propose_pair(self, prompt_id: int, judge: str, chosen_id: int, rejected_id: int, margin: float,
                     category: str | None = None) -> None:
        """Propose (chosen, rejected) for a prompt, in the judge's `category`; a pair a person already
        curated is left as it is."""
        with self.transaction() as db:
            # a proposed pair the judge proposes anew: its older actions would undo to sides it no longer has
            db.execute("DELETE FROM curation_log WHERE pair_id IN (SELECT id FROM pairs WHERE prompt_id = ? "
                       "AND judge = ? AND status = 'proposed')", (prompt_id, judge))
            db.execute(
                "INSERT INTO pairs (prompt_id, chosen_id, rejected_id, judge, margin, status, updated_at, category, "
                "judge_chosen_id, judge_rejected_id, judge_margin) VALUES (?, ?, ?, ?, ?, 'proposed', ?, ?, ?, ?, ?) "
                "ON CONFLICT (prompt_id, judge) DO UPDATE SET chosen_id = excluded.chosen_id, "
                "rejected_id = excluded.rejected_id, margin = excluded.margin, updated_at = excluded.updated_at, "
                "category = excluded.category, judge_chosen_id = excluded.judge_chosen_id, "
                "judge_rejected_id = excluded.judge_rejected_id, judge_margin = excluded.judge_margin "
                "WHERE pairs.status = 'proposed'",
                (prompt_id, chosen_id, rejected_id, judge, margin, now(), category, chosen_id, rejected_id, margin))

    def set_pair_status(self, pair_ids: int | list[int], status: str, bulk: bool = False) -> None:
        """Accept or reject one pair or several at once (all of them, or none if an id is unknown). A
        `bulk` decision (every pair above a margin) is not a person's check of each pair: it leaves the
        pairs' curation action unrecorded. Accepting a swapped or edited pair keeps it `edited`, with
        its swap or edit on record: the person's sides are not the judge's."""
        if status not in ("accepted", "rejected"):
            raise IpoError(f"a pair can be set accepted or rejected, not {status!r}: a swap or an edit makes it "
                           "edited, and back to proposed restores the judge's own pair")
        ids = [pair_ids] if isinstance(pair_ids, int) else list(pair_ids)
        verb = {"accepted": "accept", "rejected": "reject"}[status]
        curation = None if bulk else verb
        with self.transaction() as db:
            self._log_curation(db, f"{'bulk ' if bulk else ''}{verb} of {_count(ids)}", ids)
            db.executemany(
                "UPDATE pairs SET status = CASE WHEN ? = 'accepted' AND (chosen_id <> judge_chosen_id "
                "OR rejected_id <> judge_rejected_id) THEN 'edited' ELSE ? END, curation = CASE WHEN ? = 'accepted' "
                "AND (chosen_id <> judge_chosen_id OR rejected_id <> judge_rejected_id) THEN (CASE WHEN "
                "chosen_id = judge_rejected_id AND rejected_id = judge_chosen_id THEN 'swap' ELSE 'edit' END) "
                "ELSE ? END, updated_at = ? WHERE id = ?", [(status, status, status, curation, now(), i) for i in ids])

    def swap_pair(self, pair_ids: int | list[int]) -> None:
        """A person says the judge had it backwards: chosen and rejected trade places, and the margin
        (the judge's score of the new chosen minus the new rejected) turns negative. Several pairs:
        all of them, or none if an id is unknown."""
        ids = [pair_ids] if isinstance(pair_ids, int) else list(pair_ids)
        with self.transaction() as db:
            self._log_curation(db, f"swap of {_count(ids)}", ids)
            db.executemany("UPDATE pairs SET chosen_id = rejected_id, rejected_id = chosen_id, margin = -margin, "
                           "status = 'edited', curation = 'swap', updated_at = ? WHERE id = ?", [(now(), i) for i in ids])

    def edit_pair(self, pair_id: int, chosen: str | None = None, rejected: str | None = None,
                  judgements: dict | None = None) -> None:
        """Replace a side's text by a person's edit, stored as a new candidate (model 'edited') so the
        sampled text stays; `judgements` ({"chosen"|"rejected": Judgement}) re-scores the new texts
        under the pair's judge. The margin follows the scores, and is unknown (None) while a side has
        none; the pair keeps its category."""
        judgements = judgements or {}
        with self.transaction() as db:
            self._log_curation(db, f"edit of {_count([pair_id])}", [pair_id])
            pair = db.execute("SELECT * FROM pairs WHERE id = ?", (pair_id,)).fetchone()
            ids = {"chosen": pair["chosen_id"], "rejected": pair["rejected_id"]}
            for side, text in (("chosen", chosen), ("rejected", rejected)):
                if text is None:
                    continue
                if not text.strip():
                    raise IpoError(f"the edited {side} response is empty; write a response or keep the old one")
                index = db.execute("SELECT COUNT(*) FROM candidates WHERE prompt_id = ? AND model = 'edited'",
                                   (pair["prompt_id"],)).fetchone()[0]
                ids[side] = db.execute(
                    "INSERT INTO candidates (prompt_id, text, model, adapter, sample_index, seed, sampling, created_at) "
                    "VALUES (?, ?, 'edited', '', ?, 0, '{}', ?)", (pair["prompt_id"], text, index, now())).lastrowid
                if side in judgements:
                    db.execute(_INSERT_JUDGEMENT, _judgement_row(ids[side], pair["judge"], judgements[side], now()))
            scores = {side: db.execute("SELECT logit_margin FROM judgements WHERE candidate_id = ? AND judge = ?",
                                       (cid, pair["judge"])).fetchone() for side, cid in ids.items()}
            margin = (scores["chosen"][0] - scores["rejected"][0]  # the score's margin (judge/scoring.py)
                      if scores["chosen"] and scores["rejected"] else None)
            db.execute("UPDATE pairs SET chosen_id = ?, rejected_id = ?, margin = ?, status = 'edited', curation = 'edit', "
                       "updated_at = ? WHERE id = ?", (ids["chosen"], ids["rejected"], margin, now(), pair_id))

    def reset_pairs(self, pair_ids: int | list[int]) -> None:
        """Back to proposed: the judge's own chosen, rejected and margin, no curation on record."""
        ids = [pair_ids] if isinstance(pair_ids, int) else list(pair_ids)
        with self.transaction() as db:
            self._log_curation(db, f"back to proposed of {_count(ids)}", ids)
            db.executemany("UPDATE pairs SET chosen_id = judge_chosen_id, rejected_id = judge_rejected_id, "
                           "margin = judge_margin, status = 'proposed', curation = NULL, updated_at = ? WHERE id = ?",
                           [(now(), i) for i in ids])

    def undo_curation(self) -> str | None:
        """Take back the last curation action (one pair's, or a bulk action's as a whole): its pairs
        return to their state before it. What was undone, in one line; None when nothing is left."""
        with self.transaction() as db:
            last = db.execute("SELECT action, what FROM curation_log ORDER BY action DESC LIMIT 1").fetchone()
            if last is None:
                return None
            db.execute("UPDATE pairs SET (chosen_id, rejected_id, margin, status, curation, updated_at) = "
                       "(SELECT l.chosen_id, l.rejected_id, l.margin, l.status, l.curation, ? FROM curation_log l "
                       " WHERE l.action = ? AND l.pair_id = pairs.id) "
                       "WHERE id IN (SELECT pair_id FROM curation_log WHERE action = ?)",
                       (now(), last["action"], last["action"]))
            db.execute("DELETE FROM curation_log WHERE action = ?", (last["action"],))
        return f"undid the {last['what']}"

    @staticmethod
    def _log_curation(db: sqlite3.Connection, what: str, pair_ids: list[int]) -> None:
        """Each pair's state before a curation action, for undo_curation; an unknown id fails the
        whole action."""
        action = db.execute("SELECT COALESCE(MAX(action), 0) + 1 FROM curation_log").fetchone()[0]
        for pair_id in pair_ids:
            if db.execute("INSERT INTO curation_log (action, what, pair_id, chosen_id, rejected_id, margin, status, "
                          "curation, created_at) SELECT ?, ?, id, chosen_id, rejected_id, margin, status, curation, ? "
                          "FROM pairs WHERE id = ?", (action, what, now(), pair_id)).rowcount == 0:
                raise IpoError(f"no pair with id {pair_id}; nothing was changed")

    def save_chosen_pair(self, set_name: str, instruction: str, category: str, judge: str, settings: dict,
                         candidates: list[tuple[str, str, int, int, str, object]], best: int, worst: int,
                         margin: float) -> tuple[int, bool]:
        """A person's pick, in one transaction: the prompt (found by its text in `set_name`, or added),
        its candidates ((model, adapter, sample index, seed, text, Judgement); one already there is
        kept) with their judgements, and (candidates[best], candidates[worst]) as an accepted pair. The pair id,
        and whether it is new: saving the same prompt under the same judge again updates its pair."""
        with self.transaction() as db:
            prompt_id = self._lab_prompt(db, set_name, instruction, category)
            db.execute("INSERT OR IGNORE INTO judges (id, settings, created_at) VALUES (?, ?, ?)",
                       (judge, json.dumps(settings, sort_keys=True), now()))
            ids = [self._lab_candidate(db, prompt_id, c) for c in candidates]
            # a candidate saved again under another category's template: its old score goes, so the
            # pair reads one score a side
            db.executemany("DELETE FROM judgements WHERE candidate_id = ? AND judge = ?", [(i, judge) for i in ids])
            db.executemany(_INSERT_JUDGEMENT, [_judgement_row(i, judge, c[5], now()) for i, c in zip(ids, candidates)])
            known = db.execute("SELECT id FROM pairs WHERE prompt_id = ? AND judge = ?", (prompt_id, judge)).fetchone()
            if known:  # the person's new pick replaces the pair: its older actions no longer undo
                db.execute("DELETE FROM curation_log WHERE pair_id = ?", (known["id"],))
            pair = (prompt_id, ids[best], ids[worst], judge, margin, now(), category, ids[best], ids[worst], margin)
            pair_id = db.execute(
                "INSERT INTO pairs (prompt_id, chosen_id, rejected_id, judge, margin, status, curation, updated_at, "
                "category, judge_chosen_id, judge_rejected_id, judge_margin) "
                "VALUES (?, ?, ?, ?, ?, 'accepted', 'accept', ?, ?, ?, ?, ?) "
                "ON CONFLICT (prompt_id, judge) DO UPDATE SET chosen_id = excluded.chosen_id, "
                "rejected_id = excluded.rejected_id, margin = excluded.margin, status = 'accepted', curation = 'accept', "
                "updated_at = excluded.updated_at, category = excluded.category, judge_chosen_id = excluded.judge_chosen_id, "
                "judge_rejected_id = excluded.judge_rejected_id, judge_margin = excluded.judge_margin RETURNING id",
                pair).fetchone()[0]
        return pair_id, known is None

    def _lab_prompt(self, db: sqlite3.Connection, set_name: str, text: str, category: str) -> int:
        """The prompt with this text in `set_name`, added if new."""
        set_id = self._set_id(db, set_name, "score lab")
        found = db.execute("SELECT id FROM prompts WHERE set_id = ? AND text = ? ORDER BY id LIMIT 1",
                           (set_id, text)).fetchone()
        return found["id"] if found else self._append_prompt(db, set_id, text, category)

    @staticmethod
    def _lab_candidate(db: sqlite3.Connection, prompt_id: int, candidate: tuple) -> int:
        """The id of a prompt's candidate with this model, adapter and text, stored if new at the
        first free sample index from the one asked."""
        model, adapter, index, seed, text = candidate[:5]
        found = db.execute("SELECT id FROM candidates WHERE prompt_id = ? AND model = ? AND adapter = ? AND text = ?",
                           (prompt_id, model, adapter, text)).fetchone()
        if found:
            return found["id"]
        used = {r[0] for r in db.execute("SELECT sample_index FROM candidates WHERE prompt_id = ? AND model = ? "
                                         "AND adapter = ?", (prompt_id, model, adapter))}
        while index in used:
            index += 1
        return db.execute("INSERT INTO candidates (prompt_id, text, model, adapter, sample_index, seed, sampling, "
                          "created_at) VALUES (?, ?, ?, ?, ?, ?, '{\"source\": \"score lab\"}', ?)",
                          (prompt_id, text, model, adapter, index, seed, now())).lastrowid

    def pairs(self, statuses: tuple[str, ...] = PAIR_STATUSES, set_name: str | None = None,
              judge: str | None = None) -> list[sqlite3.Row]:
        """Pairs with their texts and scores, for listing and export."""
        for status in statuses:
            if status not in PAIR_STATUSES:
                raise IpoError(f"unknown pair status {status!r}: choose among {', '.join(PAIR_STATUSES)}")
        sql = (
            "SELECT pr.id, pr.prompt_id, pr.status, pr.curation, pr.margin, pr.judge, pr.updated_at, p.text AS prompt, "
            "p.category AS prompt_category, "
            "s.name AS prompt_set, ch.text AS chosen, rj.text AS rejected, "
            "jc.logit_margin AS score_chosen, jr.logit_margin AS score_rejected, "
            "jc.probability AND jr.probability AS probability, "
            "COALESCE(pr.category, jc.category, jr.category, p.category) AS category "
            "FROM pairs pr JOIN prompts p ON p.id = pr.prompt_id JOIN prompt_sets s ON s.id = p.set_id "
            "JOIN candidates ch ON ch.id = pr.chosen_id JOIN candidates rj ON rj.id = pr.rejected_id "
            "LEFT JOIN judgements jc ON jc.id = (SELECT MAX(id) FROM judgements "
            "  WHERE candidate_id = pr.chosen_id AND judge = pr.judge) "
            "LEFT JOIN judgements jr ON jr.id = (SELECT MAX(id) FROM judgements "
            "  WHERE candidate_id = pr.rejected_id AND judge = pr.judge) "
            f"WHERE pr.status IN ({','.join('?' * len(statuses))})"
        )
        args: list = list(statuses)
        if set_name is not None:
            sql, args = sql + " AND s.name = ?", args + [set_name]
        if judge is not None:
            sql, args = sql + " AND pr.judge = ?", args + [judge]
        return self.db.execute(sql + " ORDER BY pr.id", args).fetchall()

    def curation_counts(self) -> list[sqlite3.Row]:
        """How often a person accepted, rejected, swapped or edited the judge's pairs: (judge, settings,
        category, curation, pairs) rows, curated pairs only."""
        return self.db.execute(
            "SELECT pr.judge, jd.settings, COALESCE(pr.category, jc.category, p.category, '') AS pair_category, pr.curation, "
            "COUNT(*) AS pairs FROM pairs pr JOIN prompts p ON p.id = pr.prompt_id "
            "LEFT JOIN judges jd ON jd.id = pr.judge "
            "LEFT JOIN judgements jc ON jc.id = (SELECT MAX(id) FROM judgements "
            "  WHERE candidate_id = pr.chosen_id AND judge = pr.judge) "
            "WHERE pr.curation IS NOT NULL GROUP BY pr.judge, pair_category, pr.curation ORDER BY pr.judge, pair_category"
        ).fetchall()

    # --- benchmarks ---------------------------------------------------------------------------

    def bench(self, model: str, adapter: str, settings: dict) -> str:
        """The id of the benchmark of this policy under these settings, made if new (bench-001, ...)."""
        key = json.dumps(settings, sort_keys=True)
        with self.transaction() as db:
            row = db.execute("SELECT id FROM benches WHERE model = ? AND adapter = ? AND settings = ?",
                             (model, adapter, key)).fetchone()
            if row:
                return row["id"]
            bench_id = f"bench-{db.execute('SELECT COUNT(*) FROM benches').fetchone()[0] + 1:03d}"
            db.execute("INSERT INTO benches (id, model, adapter, settings, created_at) VALUES (?, ?, ?, ?, ?)",
                       (bench_id, model, adapter, key, now()))
            return bench_id

    def benches(self) -> list[sqlite3.Row]:
        return self.db.execute(
            "SELECT b.*, GROUP_CONCAT(DISTINCT i.task) AS tasks, COUNT(i.item) AS items FROM benches b "
            "LEFT JOIN bench_items i ON i.bench_id = b.id GROUP BY b.id ORDER BY b.id").fetchall()

    def bench_row(self, bench_id: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM benches WHERE id = ?", (bench_id,)).fetchone()
        if row is None:
            raise IpoError(f"no benchmark {bench_id!r}; `ipo bench list` shows them")
        return row

    def add_bench_items(self, bench_id: str, task: str, rows: list[tuple[str, str, dict, float]]) -> None:
        """Store (item, response, result, seconds) rows of one task; an item stored already is kept."""
        stamp = now()
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO bench_items (bench_id, task, item, response, result, seconds, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(bench_id, task, item, response, json.dumps(result), seconds, stamp)
                 for item, response, result, seconds in rows])

    def bench_items(self, bench_id: str, task: str) -> dict[str, dict]:
        """item -> {"response", "result", "seconds"} for the items of a task stored so far."""
        rows = self.db.execute("SELECT item, response, result, seconds FROM bench_items WHERE bench_id = ? AND task = ?",
                               (bench_id, task))
        return {r["item"]: {"response": r["response"], "result": json.loads(r["result"]), "seconds": r["seconds"]}
                for r in rows}

    # --- runs -------------------------------------------------------------------------------------

    def add_run(self, run_id: str, kind: str, config: dict, folder: Path, status: str = "created") -> None:
        stamp = now()
        with self.transaction() as db:
            db.execute("INSERT INTO runs (id, kind, status, config, folder, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (run_id, kind, status, json.dumps(config), str(folder), stamp, stamp))

    def set_run(self, run_id: str, status: str | None = None, config: dict | None = None) -> None:
        with self.transaction() as db:
            if status is not None:
                db.execute("UPDATE runs SET status = ?, updated_at = ? WHERE id = ?", (status, now(), run_id))
            if config is not None:
                db.execute("UPDATE runs SET config = ?, updated_at = ? WHERE id = ?", (json.dumps(config), now(), run_id))

    def delete_run(self, run_id: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def run(self, run_id: str) -> sqlite3.Row:
        row = self.db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise IpoError(f"no run {run_id!r}; `ipo runs` lists them")
        return row

    def runs(self, kind: str | None = None) -> list[sqlite3.Row]:
        if kind is None:
            return self.db.execute("SELECT * FROM runs ORDER BY created_at, id").fetchall()
        return self.db.execute("SELECT * FROM runs WHERE kind = ? ORDER BY created_at, id", (kind,)).fetchall()
