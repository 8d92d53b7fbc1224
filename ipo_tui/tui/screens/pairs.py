"""Pairs: the workspace's chosen/rejected pairs, sorted and filtered, curated one key at a time.

Every change goes to the store at once (one transaction each); the table is reread after it.
Scores read as p'yes where every shown pair's are one template's own log-odds, as signed log-odds
where any is a combination (its p'yes would read 1.000); margins are log-odds differences.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Label, Select, Static, TextArea

from ipo_tui.errors import IpoError
from ipo_tui.evaluation.stats import wilson
from ipo_tui.judge.scoring import score_label, shown
from ipo_tui.tui.screens.base import ModeScreen, one_line
from ipo_tui.workspace.store import PAIR_STATUSES

STATUS_STYLE = {"proposed": "yellow", "accepted": "green", "rejected": "red", "edited": "cyan"}
COLUMNS = (  # key, label, width
    ("id", "#", 4), ("status", "status", 8), ("set", "set", 9), ("category", "cat.", 7),
    ("margin", "margin", 8), ("score_chosen", "p'ch", 7), ("score_rejected", "p'rj", 7),
    ("prompt", "prompt", 15), ("chosen", "chosen", 16), ("rejected", "rejected", 16),
)
SORT_ORDER = ("id", "margin", "score_chosen", "score_rejected", "status", "category", "set", "prompt")
SCORE_HEADERS = {"p'yes": ("p'ch", "p'rj"), "score": ("s'ch", "s'rj")}  # the score columns' labels, by reading


def pair_value(row, key: str):
    value = {"set": row["prompt_set"], "category": row["category"] or row["prompt_category"] or ""}.get(key)
    if value is None and key in row.keys():  # noqa: SIM118 (`in` on a sqlite3.Row looks through its values)
        value = row[key]
    if isinstance(value, str):
        return value.lower()
    return -math.inf if value is None else value  # an unjudged side sorts below every score


def score_text(score: float | None, reading: str) -> str:
    return shown(score, reading == "p'yes") or "—"


def missing_store_method(store, name: str) -> str | None:
    if hasattr(store, name):
        return None
    return f"this workspace store has no {name}() yet (a core change is pending): nothing was changed"


class PairsScreen(ModeScreen):
    CSS_PATH = "pairs.tcss"

    MODE = "pairs"
    BINDINGS = [
        Binding("enter", "open", "Open", show=False),
        Binding("a", "set_status('accepted')", "Accept"),
        Binding("r", "set_status('rejected')", "Reject"),
        Binding("s", "swap", "Swap"),
        Binding("e", "edit", "Edit"),
        Binding("b", "bulk_accept", "Bulk-accept"),
        Binding("x", "export", "Export"),
        Binding("slash", "search", "Search"),
        Binding("o", "sort_next", "Sort"),
        Binding("v", "sort_reverse", "Reverse", show=False),
        Binding("f", "status_next", "Status filter", show=False),
        Binding("escape", "focus_table", "Table", show=False),
    ]
    HELP = """\
| key | what |
| --- | --- |
| `enter` | open the pair side by side |
| `a` / `r` | accept / reject the pair under the cursor |
| `s` | swap chosen and rejected |
| `e` | edit the texts (then `ctrl+s` saves and re-scores with the loaded model) |
| `b` | accept every shown *proposed* pair whose margin is at least the bulk margin (log-odds) |
| `x` | export (TRL JSONL by default) |
| `/` | search the prompt and both texts; `escape` back to the table |
| `o` / `v` | next sort column / reverse (or click a column header) |
| `f` | next status filter |

Every change is written to the workspace at once.
"""

    def __init__(self) -> None:
        super().__init__()
        self.sort_key = "id"
        self.sort_reverse = False
        self.rows: list = []  # what the table shows, in order
        self.reading = "p'yes"  # how the shown pairs' scores read: "p'yes" or "score"
        self.labels = {key: label for key, label, _ in COLUMNS}  # the column labels for that reading

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="pairs-filters", classes="row"):
            yield Label("status", classes="inline-label")
            yield Select([("all", "all"), *((s, s) for s in PAIR_STATUSES)], value="all", allow_blank=False, id="status-filter")
            yield Label("set", classes="inline-label")
            yield Select([("all", "all")], value="all", allow_blank=False, id="set-filter")
            yield Input(placeholder="search (/)", id="search")
            yield Label("bulk margin ≥", classes="inline-label")
            yield Input("0.5", id="bulk-margin", type="number", max_length=6)
        yield DataTable(id="pairs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="agreement")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        for key, label, width in COLUMNS:
            table.add_column(label, key=key, width=width)
        self.reload()
        table.focus()

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.reload()

    # --- reading ----------------------------------------------------------------------------------

    def reload(self, keep: int | None = None) -> None:
        """Reread the pairs from the store and refill the table (the cursor stays on its pair)."""
        table = self.query_one(DataTable)
        if keep is None:
            keep = self.current_id()
        try:
            store = self.app.store
            sets = [r["name"] for r in store.prompt_sets()]
            set_select = self.query_one("#set-filter", Select)
            chosen_set = set_select.value if set_select.value in sets else "all"
            options = [("all", "all"), *((s, s) for s in sets)]
            if [o[1] for o in options] != [o[1] for o in getattr(self, "_set_options", [])]:
                self._set_options = options
                with set_select.prevent(Select.Changed):
                    set_select.set_options(options)
                    set_select.value = chosen_set
            status = self.query_one("#status-filter", Select).value
            rows = store.pairs(PAIR_STATUSES if status == "all" else (status,),
                               None if chosen_set == "all" else chosen_set)
        except IpoError as exc:
            self.error(str(exc), "pairs")
            return
        needle = self.query_one("#search", Input).value.strip().lower()
        if needle:
            rows = [r for r in rows if needle in f"{r['prompt']}\n{r['chosen']}\n{r['rejected']}".lower()]
        rows.sort(key=lambda r: (pair_value(r, self.sort_key), r["id"]), reverse=self.sort_reverse)
        self.rows = rows
        self.reading = score_label(r["probability"] for r in rows)
        self.labels.update(zip(("score_chosen", "score_rejected"), SCORE_HEADERS[self.reading]))
        table.clear()
        for r in rows:
            table.add_row(*self._cells(r), key=str(r["id"]))
        for key, label in self.labels.items():
            arrow = (" ▼" if self.sort_reverse else " ▲") if key == self.sort_key else ""
            table.columns[key].label = Text(label + arrow)
        if keep is not None and str(keep) in {str(r["id"]) for r in rows}:
            table.move_cursor(row=table.get_row_index(str(keep)), animate=False)
        self._summary()
        self._agreement(store)

    def _agreement(self, store) -> None:
        """How often the person agreed with each judge setting: its accuracy on the user's own data."""
        from ipo_tui.evaluation.agreement import person_agreement

        by_judge: dict[str, list] = {}
        for a in person_agreement(store):
            by_judge.setdefault(a.settings, []).append(a)
        lines = []
        for settings, rows in by_judge.items():
            agreed, checked = sum(a.accept for a in rows), sum(a.checked for a in rows)
            if not checked:
                continue
            low, high = wilson(agreed, checked)
            cats = " · ".join(f"{a.category or '–'} {a.accept}/{a.checked}" for a in rows if a.checked)
            lines.append(f"you agreed with the judge ({settings}) on {agreed} of {checked} checked pairs: "
                         f"{agreed / checked:.2f} (95% {low:.2f}–{high:.2f}) · {cats}")
        self.query_one("#agreement", Static).update(
            "\n".join(lines[-3:]) or "agreement with the judge: none checked yet (accepting or swapping a pair checks it)")

    def _cells(self, r) -> list:
        status = Text(r["status"], style=STATUS_STYLE.get(r["status"], ""))
        return [str(r["id"]), status, one_line(r["prompt_set"], 9), r["category"] or r["prompt_category"] or "",
                f"{r['margin']:+.2f}", score_text(r["score_chosen"], self.reading),
                score_text(r["score_rejected"], self.reading),
                one_line(r["prompt"], 15), one_line(r["chosen"], 16), one_line(r["rejected"], 16)]

    def _summary(self) -> None:
        counts = dict.fromkeys(PAIR_STATUSES, 0)
        for r in self.rows:
            counts[r["status"]] = counts.get(r["status"], 0) + 1
        parts = " · ".join(f"{n} {s}" for s, n in counts.items() if n)
        label = self.labels[self.sort_key]
        self.set_status(f"{len(self.rows)} pairs shown{': ' + parts if parts else ''} · sorted by {label}"
                        f" {'descending' if self.sort_reverse else 'ascending'}")

    def current_id(self) -> int | None:
        table = self.query_one(DataTable)
        if not self.rows or table.cursor_row is None or not 0 <= table.cursor_row < len(self.rows):
            return None
        return int(self.rows[table.cursor_row]["id"])

    def current_row(self):
        pair_id = self.current_id()
        return next((r for r in self.rows if r["id"] == pair_id), None)

    # --- filters and sorting ----------------------------------------------------------------------

    @on(Select.Changed, "#status-filter, #set-filter")
    def _filter_changed(self) -> None:
        self.reload()

    @on(Input.Changed, "#search")
    def _search_changed(self) -> None:
        self.reload()

    @on(Input.Submitted, "#search")
    def action_focus_table(self) -> None:
        self.query_one(DataTable).focus()

    def action_search(self) -> None:
        self.query_one("#search", Input).focus()

    def action_status_next(self) -> None:
        select = self.query_one("#status-filter", Select)
        options = ("all", *PAIR_STATUSES)
        select.value = options[(options.index(str(select.value)) + 1) % len(options)]

    @on(DataTable.HeaderSelected)
    def _header(self, event: DataTable.HeaderSelected) -> None:
        key = str(event.column_key.value)
        if key == self.sort_key:
            self.sort_reverse = not self.sort_reverse
        else:
            self.sort_key, self.sort_reverse = key, key in ("margin", "score_chosen", "score_rejected")
        self.reload()

    def action_sort_next(self) -> None:
        self.sort_key = SORT_ORDER[(SORT_ORDER.index(self.sort_key) + 1) % len(SORT_ORDER)] if self.sort_key in SORT_ORDER else "id"
        self.sort_reverse = self.sort_key in ("margin", "score_chosen", "score_rejected")
        self.reload()

    def action_sort_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self.reload()

    # --- changes ----------------------------------------------------------------------------------

    @on(DataTable.RowSelected)
    def _row_selected(self) -> None:
        self.action_open()

    def action_open(self, edit: bool = False) -> None:
        row = self.current_row()
        if row is None:
            self.set_status("no pair here", "yellow")
            return
        self.app.push_screen(PairScreen(row["id"], edit=edit), lambda _=None: self.reload())

    def action_set_status(self, status: str) -> None:
        pair_id = self.current_id()
        if pair_id is None:
            return
        try:
            self.app.store.set_pair_status(pair_id, status)
        except IpoError as exc:
            self.error(str(exc), "pairs")
            return
        self.reload(keep=pair_id)
        table = self.query_one(DataTable)
        if self.current_id() == pair_id and table.cursor_row < table.row_count - 1:
            table.move_cursor(row=table.cursor_row + 1, animate=False)  # on to the next pair
        self.notify(f"pair #{pair_id} {status}", timeout=2)

    def action_swap(self) -> None:
        pair_id = self.current_id()
        if pair_id is None:
            return
        if swap_pair(self, pair_id):
            self.reload(keep=pair_id)

    def action_edit(self) -> None:
        self.action_open(edit=True)

    def action_bulk_accept(self) -> None:
        try:
            threshold = float(self.query_one("#bulk-margin", Input).value)
        except ValueError:
            self.error("the bulk margin is not a number", "bulk-accept")
            return
        ids = [r["id"] for r in self.rows if r["status"] == "proposed" and r["margin"] >= threshold]
        try:
            if ids:
                self.app.store.set_pair_status(ids, "accepted", bulk=True)  # one transaction: all of them or none
        except IpoError as exc:
            self.error(str(exc), "bulk-accept")
            return
        self.reload()
        self.set_status(f"accepted {len(ids)} proposed pairs with margin ≥ {threshold:g}", "green")

    def action_export(self) -> None:
        self.app.push_screen(ExportScreen(), self._export)

    def _export(self, choice) -> None:
        if not choice:
            return
        from ipo_tui.workspace.records import pair_records, write_records

        path, fmt, statuses = choice
        try:
            rows = self.app.store.pairs(statuses)
            if not rows:
                raise IpoError(f"no pairs with status {', '.join(statuses)} to export")
            conversational = fmt == "trl-conversational"
            write_records(Path(path).expanduser(), pair_records(rows, "trl" if conversational else fmt, conversational))
        except IpoError as exc:
            self.error(str(exc), "export")
            return
        except OSError as exc:
            self.error(f"cannot write {path}: {exc.strerror or exc}", "export")
            return
        self.set_status(f"wrote {len(rows)} pairs to {path}", "green")
        self.notify(f"wrote {len(rows)} pairs to {path}", title="export")


def swap_pair(screen, pair_id: int) -> bool:
    store = screen.app.store
    problem = missing_store_method(store, "swap_pair")
    if problem:
        screen.error(problem, "swap")
        return False
    try:
        store.swap_pair(pair_id)
    except IpoError as exc:
        screen.error(str(exc), "swap")
        return False
    screen.notify(f"pair #{pair_id}: chosen and rejected swapped", timeout=2)
    return True


class Rescored(Message):
    def __init__(self, pair_id: int, chosen: str, rejected: str, judgements, error: str | None) -> None:
        super().__init__()
        self.pair_id, self.chosen, self.rejected = pair_id, chosen, rejected
        self.judgements, self.error = judgements, error


class PairScreen(ModalScreen):
    """One pair side by side; the same keys as the table, and an editor for both texts."""

    CSS_PATH = "pairs.tcss"

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("a", "set_status('accepted')", "Accept"),
        Binding("r", "set_status('rejected')", "Reject"),
        Binding("s", "swap", "Swap"),
        Binding("e", "edit", "Edit"),
        Binding("ctrl+s", "save", "Save edit", show=False),
    ]

    def __init__(self, pair_id: int, edit: bool = False) -> None:
        super().__init__()
        self.pair_id = pair_id
        self.start_editing = edit
        self.editing = False
        self.row = None

    def compose(self) -> ComposeResult:
        with Vertical(id="pair-box", classes="dialog"):
            yield Static("", id="pair-title")
            with VerticalScroll(id="pair-prompt"):
                yield Static("", id="pair-prompt-text")
            with Horizontal(id="pair-sides"):
                with Vertical(classes="pair-side"):
                    yield Label("", id="chosen-label")
                    yield TextArea("", id="chosen-text", read_only=True, soft_wrap=True)
                with Vertical(classes="pair-side"):
                    yield Label("", id="rejected-label")
                    yield TextArea("", id="rejected-text", read_only=True, soft_wrap=True)
            yield Static("", id="pair-note")
            yield Static("a accept · r reject · s swap · e edit (ctrl+s saves, escape cancels) · escape close",
                         id="pair-keys")

    def on_mount(self) -> None:
        self.load()
        if self.start_editing:
            self.action_edit()

    def load(self) -> None:
        try:
            self.row = next((r for r in self.app.store.pairs() if r["id"] == self.pair_id), None)
        except IpoError as exc:
            self.query_one("#pair-note", Static).update(Text(f"✗ {exc}", style="red"))
            return
        if self.row is None:
            self.dismiss()
            return
        r = self.row
        reading = score_label([r["probability"]])
        category = r["category"] or r["prompt_category"] or ""
        self.query_one("#pair-title", Static).update(Text.assemble(
            (f"Pair #{r['id']}  ", "bold"), (r["status"], f"bold {STATUS_STYLE.get(r['status'], '')}"),
            (f"  · margin {r['margin']:+.2f} · {category} · set {r['prompt_set']} · judge {one_line(r['judge'], 40)}", "dim")))
        self.query_one("#pair-prompt-text", Static).update(Text(r["prompt"]))
        for side, style in (("chosen", "bold green"), ("rejected", "bold red")):
            self.query_one(f"#{side}-label", Label).update(
                Text.assemble((f"{side}  ", style), f"{reading} {score_text(r[f'score_{side}'], reading)}"))
        self.query_one("#chosen-text", TextArea).load_text(r["chosen"])
        self.query_one("#rejected-text", TextArea).load_text(r["rejected"])

    def note(self, text: str, style: str = "") -> None:
        self.query_one("#pair-note", Static).update(Text(text, style=style))

    def action_close(self) -> None:
        if self.editing:
            self.editing = False
            for area in self.query(TextArea):
                area.read_only = True
            self.load()
            self.note("edit cancelled")
            return
        self.dismiss()

    def action_set_status(self, status: str) -> None:
        try:
            self.app.store.set_pair_status(self.pair_id, status)
        except IpoError as exc:
            self.note(f"✗ {exc}", "red")
            return
        self.load()
        self.note(f"{status}", STATUS_STYLE.get(status, ""))

    def action_swap(self) -> None:
        if swap_pair(self, self.pair_id):
            self.load()
            self.note("swapped chosen and rejected")
        else:
            self.note(missing_store_method(self.app.store, "swap_pair") or "not swapped", "red")

    def action_edit(self) -> None:
        self.editing = True
        for area in self.query(TextArea):
            area.read_only = False
        self.query_one("#chosen-text", TextArea).focus()
        self.note("editing: ctrl+s saves (and re-scores with the loaded model), escape cancels", "yellow")

    def action_save(self) -> None:
        if not self.editing or self.row is None:
            return
        problem = missing_store_method(self.app.store, "edit_pair")
        if problem:
            self.note(problem, "red")
            return
        chosen = self.query_one("#chosen-text", TextArea).text
        rejected = self.query_one("#rejected-text", TextArea).text
        if not chosen.strip() or not rejected.strip():
            self.note("both texts need some content", "red")
            return
        if self.app.judge is None or self.app.judge.id != self.row["judge"]:
            # another judge's scores never join this pair's: the edit is saved unscored
            why = "no model loaded" if self.app.judge is None else "the loaded judge did not propose this pair"
            if self._store_edit(chosen, rejected, None):
                self.note(f"saved (not re-scored: {why})", "yellow")
            return
        from ipo_tui.judge.routing import category_for

        category = category_for(self.row["category"] or self.row["prompt_category"], self.row["prompt"])
        self.note("re-scoring…", "dim")
        self._rescore(self.row["prompt"], chosen, rejected, category)

    @work(thread=True, exclusive=True, group="rescore", exit_on_error=False)
    def _rescore(self, prompt: str, chosen: str, rejected: str, category: str) -> None:
        with self.app.engine_lock:
            judge = self.app.judge
            try:
                judgements = judge.score(prompt, [chosen, rejected], category)
                error = None
            except Exception as exc:
                judgements, error = None, str(exc) if isinstance(exc, IpoError) else f"{type(exc).__name__}: {exc}"
        self.post_message(Rescored(self.pair_id, chosen, rejected, judgements, error))

    def on_rescored(self, message: Rescored) -> None:
        if message.error:
            self.note(f"✗ re-scoring failed: {message.error}; nothing saved", "red")
            return
        if self._store_edit(message.chosen, message.rejected, message.judgements):
            jc, jr = message.judgements
            reading = score_label([jc.probability, jr.probability])
            self.note(f"saved and re-scored by the loaded model: {reading} chosen {score_text(jc.score, reading)}, "
                      f"rejected {score_text(jr.score, reading)}", "green")

    def _store_edit(self, chosen: str, rejected: str, judgements) -> bool:
        """Store the edit (new candidates, status 'edited'); with judgements, their scores and margin."""
        store = self.app.store
        edits = {"chosen": chosen if chosen != self.row["chosen"] else None,
                 "rejected": rejected if rejected != self.row["rejected"] else None}
        if edits["chosen"] is None and edits["rejected"] is None:
            self.note("nothing changed", "yellow")
            return False
        try:
            scores = None
            if judgements is not None:
                scores = {side: j for side, j in zip(("chosen", "rejected"), judgements) if edits[side] is not None}
            store.edit_pair(self.pair_id, chosen=edits["chosen"], rejected=edits["rejected"], judgements=scores)
        except IpoError as exc:
            self.note(f"✗ {exc}", "red")
            return False
        self.editing = False
        for area in self.query(TextArea):
            area.read_only = True
        self.load()
        return True


class ExportScreen(ModalScreen):
    CSS_PATH = "pairs.tcss"

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]
    STATUS_CHOICES = {
        "proposed, accepted, edited": ("proposed", "accepted", "edited"),
        "accepted, edited": ("accepted", "edited"),
        "accepted": ("accepted",),
    }

    def compose(self) -> ComposeResult:
        with Vertical(id="export-box", classes="dialog"):
            yield Label("Export pairs: enter writes, escape cancels", classes="field-label")
            yield Label("file (.jsonl or .parquet)")
            yield Input(str(Path.cwd() / "pairs.jsonl"), id="export-path")
            yield Label("format")
            yield Select([("TRL (prompt, chosen, rejected, scores, category)", "trl"),
                          ("TRL conversational", "trl-conversational"),
                          ("LLaMA-Factory ranking", "llamafactory")], value="trl", allow_blank=False, id="export-format")
            yield Label("statuses")
            yield Select([(k, k) for k in self.STATUS_CHOICES], value="proposed, accepted, edited", allow_blank=False,
                         id="export-statuses")

    def on_mount(self) -> None:
        self.query_one("#export-path", Input).focus()

    @on(Input.Submitted)
    def _submit(self) -> None:
        path = self.query_one("#export-path", Input).value.strip()
        if not path:
            return
        fmt = self.query_one("#export-format", Select).value
        statuses = self.STATUS_CHOICES[self.query_one("#export-statuses", Select).value]
        self.dismiss((path, fmt, statuses))
