"""Pairs: the workspace's chosen/rejected pairs, sorted and filtered, curated one key at a time.

Every change goes to the store at once (one transaction each, undone by `u`); the table is reread
after it. Scores read as p'yes where every shown pair's are one template's own log-odds, as signed
log-odds where any is a combination (its p'yes would read 1.000); margins are log-odds differences,
"—" where an edited side has no score from the pair's judge.
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
from ipo_tui.tui.screens.base import ModeScreen, count, one_line
from ipo_tui.workspace.store import PAIR_STATUSES, TRAINED_STATUSES, curation_status

STATUS_STYLE = {"proposed": "yellow", "accepted": "green", "rejected": "red", "edited": "cyan"}
TRAINED = " + ".join(TRAINED_STATUSES)  # what training and export take by default, as the screens say it
# key, label, width from WIDE terminal columns on, width below (0: left out); prompt, chosen and
# rejected share what is left, so that in 80 columns they stay readable (the detail shows the rest)
COLUMNS = (
    ("id", "#", 4, 4), ("status", "status", 13, 13), ("set", "set", 9, 0), ("category", "cat.", 7, 6),
    ("margin", "margin", 7, 6), ("score_chosen", "p'ch", 6, 0), ("score_rejected", "p'rj", 6, 0),
)
TEXTS = ("prompt", "chosen", "rejected")
WIDE = 100
SORT_ORDER = ("id", "margin", "score_chosen", "score_rejected", "status", "category", "set", "prompt")
SCORE_HEADERS = {"p'yes": ("p'ch", "p'rj"), "score": ("s'ch", "s'rj")}  # the score columns' labels, by reading


def column_widths(width: int) -> dict[str, int]:
    """Each shown column's width, in order, in a table `width` cells wide."""
    widths = {key: wide if width >= WIDE else narrow for key, _, wide, narrow in COLUMNS}
    widths = {key: w for key, w in widths.items() if w}
    # a DataTable pads every cell by one on each side; two cells stay free for the scrollbar
    padding = 2 * (len(widths) + len(TEXTS)) + 2
    share = max(8, (width - padding - sum(widths.values())) // len(TEXTS))
    return widths | dict.fromkeys(TEXTS, share)


def pair_value(row, key: str):
    value = row["prompt_set"] if key == "set" else row[key]
    if isinstance(value, str):
        return value.lower()
    return -math.inf if value is None else value  # an unjudged side, an unknown margin sorts below every score


def score_text(score: float | None, reading: str) -> str:
    return shown(score, reading == "p'yes") or "—"


def margin_text(margin: float | None) -> str:
    return "—" if margin is None else f"{margin:+.2f}"


def status_text(row) -> Text:
    return Text(curation_status(row), style=STATUS_STYLE.get(row["status"], ""))


def judge_name(judge_id: str, engine) -> str:
    """A pair's judge named as the rest of the app names its model, not by the file the workspace
    records (a judge id is model[+adapter][#settings digest], or judge@judged policy for an outside
    judge of a loop)."""
    judge, at, judged = judge_id.partition("@")
    if at:
        return f"{judge_name(judge, engine)} judging {judge_name(judged, engine)}"
    policy, _, digest = judge.partition("#")
    identity, plus, _ = policy.partition("+")
    return model_name(identity, engine) + (" + adapter" if plus else "") + (f" #{digest}" if digest else "")


def model_name(identity: str, engine) -> str:
    """The loaded model's name where it is these weights, the embedded model's or a registered
    name, else the file or folder name (what the Model screen calls a model passed by path)."""
    from ipo_tui.backends import weights

    if engine is not None and engine.ref.identity == identity:
        return engine.ref.name
    if identity == weights.EMBEDDED_FILE:
        return weights.EMBEDDED_NAME
    names = {location: name for name, location in weights.registered().items()}
    return names.get(identity) or Path(identity).name


class PairsScreen(ModeScreen):
    CSS_PATH = "pairs.tcss"

    MODE = "pairs"
    BINDINGS = [
        Binding("enter", "open", "Open", show=False),
        Binding("a", "set_status('accepted')", "Accept ↓"),
        Binding("r", "set_status('rejected')", "Reject ↓"),
        Binding("s", "swap", "Swap"),
        Binding("e", "edit", "Edit"),
        Binding("u", "undo", "Undo"),
        Binding("p", "reset", "Proposed", show=False),
        Binding("b", "bulk_accept", "Bulk-accept", show=False),
        Binding("x", "export", "Export"),
        Binding("slash", "search", "Search", show=False),
        Binding("o", "sort_next", "Sort", show=False),
        Binding("v", "sort_reverse", "Reverse", show=False),
        Binding("f", "status_next", "Status filter", show=False),
        Binding("escape", "focus_table", "Table", show=False),
    ]
    HELP = f"""\
| key | what |
| --- | --- |
| `enter` | open the pair side by side |
| `a` / `r` | accept / reject the highlighted pair, **then move down** to the next one (↓ in the footer) |
| `s` | swap chosen and rejected: you overrule the judge; the pair becomes `edited (swap)`, its margin negative |
| `e` | edit the texts (`ctrl+s` saves; the loaded model re-scores them if it is the pair's judge, else the margin reads —) |
| `p` | back to proposed: the judge's own chosen, rejected and margin |
| `u` | undo the last curation action (a bulk accept as a whole) |
| `b` | accept every shown *proposed* pair whose margin is at least the bulk margin (log-odds), once you confirm |
| `x` | export: the pairs that train ({TRAINED}) unless you choose otherwise; asks before overwriting a file |
| `/` | search the prompt and both texts; `escape` back to the table |
| `o` / `v` | next sort column / reverse (or click a column header) |
| `f` | next status filter |

Training and export take **{TRAINED}** pairs unless told otherwise: proposed (not yet reviewed) and
rejected pairs are left out. A swap and an edit both leave a pair `edited`. Every change is written
to the workspace at once; `u` takes the last one back.
"""

    def __init__(self) -> None:
        super().__init__()
        self.sort_key = "id"
        self.sort_reverse = False
        self.rows: list = []  # what the table shows, in order
        self.widths: dict[str, int] = {}  # the shown columns and their widths, for the screen's width
        self.reading = "p'yes"  # how the shown pairs' scores read: "p'yes" or "score"
        self.labels = {key: label for key, label, *_ in COLUMNS} | {key: key for key in TEXTS}
        self.dialogs = 0  # this screen's dialogs pushed and not yet returned from

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="pairs-filters", classes="row"):
            yield Label("status", classes="inline-label")
            yield Select([("all", "all"), *((s, s) for s in PAIR_STATUSES)], value="all", allow_blank=False, id="status-filter")
            yield Label("set", classes="inline-label")
            yield Select([("all", "all")], value="all", allow_blank=False, id="set-filter")
            yield Input(placeholder="search (/)", id="search")
            yield Label("bulk ≥", classes="inline-label")
            bulk = Input("0.5", id="bulk-margin", type="number", max_length=6)
            bulk.tooltip = "b accepts every shown proposed pair whose margin (log-odds) is at least this"
            yield bulk
        yield DataTable(id="pairs-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="agreement")

    def on_mount(self) -> None:
        self.reload()
        self.query_one(DataTable).focus()

    def on_screen_resume(self) -> None:
        """Back from another screen, whose changes the table shows; back from one of this screen's
        dialogs, whose callback has already reloaded (and reloading again would replace its result
        line by the summary)."""
        if self.dialogs:
            self.dialogs -= 1
        elif self.is_mounted:
            self.reload()

    def open_dialog(self, dialog: ModalScreen, callback) -> None:
        self.dialogs += 1
        self.app.push_screen(dialog, callback)

    def on_resize(self) -> None:
        if column_widths(self.app.size.width) != self.widths:
            self.reload()

    # --- reading ----------------------------------------------------------------------------------

    def reload(self, keep: int | None = None) -> None:
        """Reread the pairs from the store and refill the table. The cursor goes to the pair `keep`
        (default: the highlighted one), or stays on its row where that pair is no longer shown."""
        table = self.query_one(DataTable)
        row_before = table.cursor_row
        if keep is None:
            keep = self.current_id()
        try:
            rows = self._read()
        except IpoError as exc:
            self.error(str(exc), "pairs")
            return
        rows.sort(key=lambda r: (pair_value(r, self.sort_key), r["id"]), reverse=self.sort_reverse)
        self.rows = rows
        self.reading = score_label(r["probability"] for r in rows)
        self.labels.update(zip(("score_chosen", "score_rejected"), SCORE_HEADERS[self.reading]))
        self._fill(table)
        ids = [r["id"] for r in rows]
        if rows:
            table.move_cursor(row=ids.index(keep) if keep in ids else min(row_before, len(rows) - 1), animate=False)
        self._summary()
        self._agreement(self.app.store)

    def _read(self) -> list:
        """The pairs the filters and the search let through (the set filter's choices updated)."""
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
        rows = store.pairs(PAIR_STATUSES if status == "all" else (status,), None if chosen_set == "all" else chosen_set)
        needle = self.query_one("#search", Input).value.strip().lower()
        return [r for r in rows if needle in f"{r['prompt']}\n{r['chosen']}\n{r['rejected']}".lower()]

    def _fill(self, table: DataTable) -> None:
        """The table's columns (for the screen's width) and rows."""
        widths = column_widths(self.app.size.width)
        if widths != self.widths:
            self.widths = widths
            table.clear(columns=True)
            for key, width in widths.items():
                table.add_column(self.labels[key], key=key, width=width)
        table.clear()
        for r in self.rows:
            cells = self._cells(r)
            table.add_row(*(cells[key] for key in widths), key=str(r["id"]))
        for key in widths:
            arrow = (" ▼" if self.sort_reverse else " ▲") if key == self.sort_key else ""
            table.columns[key].label = Text(self.labels[key] + arrow)

    def _cells(self, r) -> dict:
        return {"id": str(r["id"]), "status": status_text(r), "set": one_line(r["prompt_set"], 9),
                "category": r["category"] or "", "margin": margin_text(r["margin"]),
                "score_chosen": score_text(r["score_chosen"], self.reading),
                "score_rejected": score_text(r["score_rejected"], self.reading),
                **{key: one_line(r[key], self.widths[key]) for key in TEXTS}}

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

    def _summary(self) -> None:
        counts = dict.fromkeys(PAIR_STATUSES, 0)
        for r in self.rows:
            counts[r["status"]] += 1
        trained = sum(counts[s] for s in TRAINED_STATUSES)
        parts = " · ".join(f"{n} {s}" for s, n in counts.items() if n)
        order = "descending" if self.sort_reverse else "ascending"
        self.set_status(f"{count(len(self.rows), 'pair')} shown{': ' + parts if parts else ''} · {trained} train ({TRAINED})"
                        f" · sorted by {self.labels[self.sort_key]} {order}")

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
        shown_keys = [key for key in SORT_ORDER if key in self.widths]  # a column left out at this width is skipped
        at = shown_keys.index(self.sort_key) if self.sort_key in shown_keys else -1
        self.sort_key = shown_keys[(at + 1) % len(shown_keys)]
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
        self.open_dialog(PairScreen(row["id"], edit=edit), lambda _=None: self.reload())

    def action_set_status(self, status: str) -> None:
        """Accept or reject the highlighted pair, then highlight the pair that was below it (fast
        curation; a filter may hide the curated pair, a sort may move it)."""
        pair_id = self.current_id()
        if pair_id is None:
            return
        below = self.query_one(DataTable).cursor_row + 1
        after = self.rows[below]["id"] if below < len(self.rows) else pair_id
        if self._curate(lambda store: store.set_pair_status(pair_id, status), status):
            self.reload(keep=after)
            # an accepted swap or edit stays `edited`: its sides are the person's, not the judge's
            now = next((r["status"] for r in self.rows if r["id"] == pair_id), status)
            self.notify(f"pair #{pair_id} {status}" + (f", still {now}" if now != status else ""), timeout=2)

    def action_swap(self) -> None:
        pair_id = self.current_id()
        if pair_id is not None and self._curate(lambda store: store.swap_pair(pair_id), "swap"):
            self.reload(keep=pair_id)
            self.notify(f"pair #{pair_id}: chosen and rejected swapped", timeout=2)

    def action_reset(self) -> None:
        pair_id = self.current_id()
        if pair_id is not None and self._curate(lambda store: store.reset_pairs([pair_id]), "back to proposed"):
            self.reload(keep=pair_id)
            self.set_status(f"pair #{pair_id} back to proposed: the judge's own chosen, rejected and margin", "green")

    def action_undo(self) -> None:
        try:
            undone = self.app.store.undo_curation()
        except IpoError as exc:
            self.error(str(exc), "undo")
            return
        self.reload()
        self.set_status(undone or "nothing to undo", "green" if undone else "yellow")

    def _curate(self, change, title: str) -> bool:
        """Make one change to the store; a refusal shows, never raises."""
        try:
            change(self.app.store)
        except IpoError as exc:
            self.error(str(exc), title)
            return False
        return True

    def action_edit(self) -> None:
        self.action_open(edit=True)

    def action_bulk_accept(self) -> None:
        try:
            threshold = float(self.query_one("#bulk-margin", Input).value)
        except ValueError:
            self.error("the bulk margin is not a number", "bulk-accept")
            return
        ids = [r["id"] for r in self.rows
               if r["status"] == "proposed" and r["margin"] is not None and r["margin"] >= threshold]
        if not ids:
            self.set_status(f"no shown proposed pair has a margin ≥ {threshold:g}: nothing to accept", "yellow")
            return
        question = (f"Accept {len(ids)} shown proposed pair{'s' if len(ids) > 1 else ''} with margin ≥ {threshold:g} "
                    "(log-odds), without checking each? u undoes it as a whole.")

        def accept(yes: bool | None) -> None:
            if not yes:
                self.set_status("bulk-accept cancelled: nothing changed", "yellow")
            elif self._curate(lambda store: store.set_pair_status(ids, "accepted", bulk=True), "bulk-accept"):
                self.reload()
                self.set_status(f"accepted {len(ids)} proposed pairs with margin ≥ {threshold:g}", "green")

        self.open_dialog(ConfirmScreen(question), accept)

    def action_export(self) -> None:
        self.open_dialog(ExportScreen(), self._export_chosen)

    def _export_chosen(self, choice) -> None:
        """Export as chosen in the dialog, once told to overwrite a file that is there."""
        if not choice:
            return
        typed, fmt, statuses = choice
        path = Path(typed).expanduser()
        if not path.is_file():
            self._export(path, fmt, statuses)
            return

        def overwrite(yes: bool | None) -> None:
            if yes:
                self._export(path, fmt, statuses)
            else:
                self.set_status(f"not exported: {path} is left as it was", "yellow")

        self.open_dialog(ConfirmScreen(f"{path} exists. Overwrite it?"), overwrite)

    def _export(self, path: Path, fmt: str, statuses: tuple[str, ...]) -> None:
        from ipo_tui.workspace.records import pair_records, write_records

        try:
            rows = self.app.store.pairs(statuses)
            if not rows:
                raise IpoError(f"no pairs with status {', '.join(statuses)} to export")
            conversational = fmt == "trl-conversational"
            write_records(path, pair_records(rows, "trl" if conversational else fmt, conversational))
        except IpoError as exc:
            self.error(str(exc), "export")
            return
        except OSError as exc:
            self.error(f"cannot write {path}: {exc.strerror or exc}", "export")
            return
        self.set_status(f"wrote {count(len(rows), 'pair')} ({', '.join(statuses)}) to {path}", "green")
        self.notify(f"wrote {count(len(rows), 'pair')} to {path}", title="export")


class ConfirmScreen(ModalScreen[bool]):
    """A yes/no question before a change made in one go (a bulk accept, an overwritten file)."""

    CSS_PATH = "pairs.tcss"

    BINDINGS = [Binding("y", "dismiss(True)", "Yes"), Binding("n,escape", "dismiss(False)", "No")]
    KEYS = "y yes · n or escape no"

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="confirm-box", classes="dialog"):
            yield Static(self.question, id="confirm-question", markup=False)  # a path may hold brackets
            yield Static(self.KEYS, id="confirm-keys")


class Rescored(Message):
    def __init__(self, pair_id: int, chosen: str, rejected: str, judgements, error: str | None) -> None:
        super().__init__()
        self.pair_id, self.chosen, self.rejected = pair_id, chosen, rejected
        self.judgements, self.error = judgements, error


class PairScreen(ModalScreen):
    """One pair side by side; the table's keys, and an editor for both texts."""

    CSS_PATH = "pairs.tcss"

    BINDINGS = [
        Binding("escape", "close", "Close"),
        Binding("a", "set_status('accepted')", "Accept"),
        Binding("r", "set_status('rejected')", "Reject"),
        Binding("s", "swap", "Swap"),
        Binding("e", "edit", "Edit"),
        Binding("p", "reset", "Proposed"),
        Binding("u", "undo", "Undo"),
        Binding("ctrl+s", "save", "Save edit", show=False),
    ]
    KEYS = "a accept · r reject · s swap · e edit · p back to proposed · u undo · escape close"

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
            yield Static(self.KEYS, id="pair-keys")

    def on_mount(self) -> None:
        self.load()
        if self.start_editing and self.row is not None:
            self.action_edit()

    def load(self) -> None:
        try:
            self.row = next((r for r in self.app.store.pairs() if r["id"] == self.pair_id), None)
        except IpoError as exc:
            self.note(f"✗ {exc}", "red")
            return
        if self.row is None:
            self.dismiss()
            return
        r = self.row
        reading = score_label([r["probability"]])
        swapped = ": you overruled the judge" if r["curation"] == "swap" and r["status"] == "edited" else ""
        self.query_one("#pair-title", Static).update(Text.assemble(
            (f"Pair #{r['id']}  ", "bold"), status_text(r), (swapped, "cyan"),
            (f"  · margin {margin_text(r['margin'])} · {r['category'] or '–'} · set {r['prompt_set']}"
             f" · judge {judge_name(r['judge'], self.app.engine)}", "dim")))
        self.query_one("#pair-prompt-text", Static).update(Text(r["prompt"]))
        for side, style in (("chosen", "bold green"), ("rejected", "bold red")):
            self.query_one(f"#{side}-label", Label).update(
                Text.assemble((f"{side}  ", style), f"{reading} {score_text(r[f'score_{side}'], reading)}"))
        self.query_one("#chosen-text", TextArea).load_text(r["chosen"])
        self.query_one("#rejected-text", TextArea).load_text(r["rejected"])

    def note(self, text: str, style: str = "") -> None:
        self.query_one("#pair-note", Static).update(Text(text, style=style))

    def set_editing(self, editing: bool) -> None:
        self.editing = editing
        for area in self.query(TextArea):
            area.read_only = not editing
        keys = self.KEYS
        if editing:
            problem = self.rescore_problem()
            save = "ctrl+s save and re-score" if problem is None else f"ctrl+s save, not re-scored ({problem})"
            keys = f"{save} · escape cancel"
        self.query_one("#pair-keys", Static).update(keys)

    def rescore_problem(self) -> str | None:
        """Why the loaded model cannot re-score an edit of this pair, or None when it can: another
        judge's scores never join the pair's own."""
        if self.app.judge is None:
            return "no model loaded"
        if self.app.judge.id != self.row["judge"]:
            return "the loaded judge did not propose this pair"
        return None

    def action_close(self) -> None:
        if self.editing:
            self.set_editing(False)
            self.load()
            self.note("edit cancelled")
            return
        self.dismiss()

    def _curate(self, change, done: str, style: str = "") -> None:
        """Make one change to the store and show the pair as it now is."""
        try:
            result = change(self.app.store)
        except IpoError as exc:
            self.note(f"✗ {exc}", "red")
            return
        self.load()
        self.note(result or done, style)

    def action_set_status(self, status: str) -> None:
        self._curate(lambda store: store.set_pair_status(self.pair_id, status), status, STATUS_STYLE[status])

    def action_swap(self) -> None:
        self._curate(lambda store: store.swap_pair(self.pair_id), "swapped chosen and rejected", "cyan")

    def action_reset(self) -> None:
        self._curate(lambda store: store.reset_pairs([self.pair_id]), "back to proposed: the judge's own pair", "yellow")

    def action_undo(self) -> None:
        self._curate(lambda store: store.undo_curation(), "nothing to undo")

    def action_edit(self) -> None:
        if self.row is None:
            return
        self.set_editing(True)
        self.query_one("#chosen-text", TextArea).focus()
        self.note("editing both texts", "yellow")

    def action_save(self) -> None:
        if not self.editing or self.row is None:
            return
        chosen = self.query_one("#chosen-text", TextArea).text
        rejected = self.query_one("#rejected-text", TextArea).text
        if not chosen.strip() or not rejected.strip():
            self.note("both texts need some content", "red")
            return
        problem = self.rescore_problem()
        if problem is not None:
            if self._store_edit(chosen, rejected, None):
                self.note(f"saved, not re-scored ({problem}): an edited side's score and the margin read —", "yellow")
            return
        from ipo_tui.judge.routing import category_for

        category = category_for(self.row["category"], self.row["prompt"])
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
            self.note(f"saved and re-scored by the loaded model: margin {margin_text(self.row['margin'])}", "green")

    def _store_edit(self, chosen: str, rejected: str, judgements) -> bool:
        """Store the edit (new candidates, status 'edited'); with judgements, their scores and margin."""
        edits = {"chosen": chosen if chosen != self.row["chosen"] else None,
                 "rejected": rejected if rejected != self.row["rejected"] else None}
        if edits["chosen"] is None and edits["rejected"] is None:
            self.note("nothing changed", "yellow")
            return False
        try:
            scores = None
            if judgements is not None:
                scores = {side: j for side, j in zip(("chosen", "rejected"), judgements) if edits[side] is not None}
            self.app.store.edit_pair(self.pair_id, chosen=edits["chosen"], rejected=edits["rejected"], judgements=scores)
        except IpoError as exc:
            self.note(f"✗ {exc}", "red")
            return False
        self.set_editing(False)
        self.load()
        return True


class ExportScreen(ModalScreen):
    CSS_PATH = "pairs.tcss"

    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]
    STATUS_CHOICES = (  # the pairs that train first: the default
        (f"{TRAINED} (what trains)", TRAINED_STATUSES),
        ("accepted", ("accepted",)),
        (f"proposed + {TRAINED} (includes pairs nobody reviewed)", ("proposed", *TRAINED_STATUSES)),
    )

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
            yield Select(self.STATUS_CHOICES, value=TRAINED_STATUSES, allow_blank=False, id="export-statuses")

    def on_mount(self) -> None:
        self.query_one("#export-path", Input).focus()

    @on(Input.Submitted)
    def _submit(self) -> None:
        path = self.query_one("#export-path", Input).value.strip()
        if not path:
            return
        fmt = self.query_one("#export-format", Select).value
        self.dismiss((path, fmt, self.query_one("#export-statuses", Select).value))
