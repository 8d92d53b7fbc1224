"""Runs: every training run and loop of the workspace with its status and last metrics; `enter`
opens a run's detail (its settings, status, metrics, folder, log tail, and a loop's iterations and
benchmarks); stop or resume it, or load its adapter into the scoring backend. A loop's row also
shows, below the list, its policies: pairs, self-agreement, drift and benchmark figures (with the
change against policy 0 and its McNemar p-value), as a table and a chart."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Label, Static
from textual_plotext import PlotextPlot

from ipo_tui.errors import IpoError
from ipo_tui.tui.screens.base import ModeScreen
from ipo_tui.tui.screens.train import format_seconds, resume, runner, summary

STATUS_STYLE = {"running": "yellow", "completed": "green", "failed": "red", "interrupted": "red",
                "stopped": "cyan", "waiting": "magenta", "created": "dim"}
REFRESH_S = 2.0
# what a run's detail shows of its settings (a loop's own first)
LOOP_KEYS = ("prompts", "limit", "iterations", "n", "pairs_by", "backend", "model", "min_margin", "holdout", "bench")
SETTING_KEYS = ("lora_r", "lora_alpha", "beta", "learning_rate", "epochs", "batch_size", "grad_accum", "max_length",
                "seed", "dtype")


class RunsRead(Message):
    def __init__(self, last: dict[str, dict]) -> None:
        super().__init__()
        self.last = last


def run_model_ref(run, engine):
    """The model a run trained: the loaded engine's when it is the same weights, else the run's."""
    from ipo_tui.backends import weights

    identity = run.config.get("model_identity")
    if engine is not None and engine.ref.identity == identity:
        return engine.ref
    if identity == weights.EMBEDDED_FILE:
        return weights.resolve(None)
    try:
        return weights.resolve(identity)
    except IpoError:
        return weights.resolve(run.config.get("model"))


def fill_loop_table(table: DataTable, rows: dict, record: dict) -> list[str]:
    """A loop's policies, a row each: its pairs, held-out agreement, sample length and benchmark
    figures (with the change against policy 0); `rows` are iterations.benchmarks' by policy.
    Returns the benchmark figures' names."""
    names = list(next(iter(rows.values()))["figures"]) if rows else []
    table.clear(columns=True)
    for label in ("policy", "pairs by", "pairs", "held-out agr.", "sample tok", *names):
        table.add_column(label)
    iterations = {it["iteration"]: it for it in record.get("done") or []}
    for k in sorted({0, *iterations, *rows}):
        it, bench = iterations.get(k, {}), rows.get(k, {})
        drift, cells = it.get("drift") or {}, []
        for name in names:
            value, change = bench.get("figures", {}).get(name), bench.get("change", {}).get(name)
            text = "—" if value is None else f"{value:.3f}"
            if change:
                text += f" {change['difference']:+.3f} p={change['p_value']:.2g}"
            cells.append(text)
        agreement = (it.get("eval") or {}).get("held_out_agreement")
        table.add_row(str(k), it.get("pairs_by", record.get("pairs_by", "ipo")) if k else "—",
                      str(it.get("pairs", "—")), "—" if agreement is None else f"{agreement:.2f}",
                      "—" if drift.get("sample_tokens") is None else f"{drift['sample_tokens']:.0f}", *cells)
    return names


def loop_benchmarks(store, record: dict) -> dict:
    """iterations.benchmarks of a loop record, by policy."""
    from ipo_tui.loop.iterations import benchmarks

    return {row["policy"]: row for row in benchmarks(store, record)}


class RunsScreen(ModeScreen):
    CSS_PATH = "runs.tcss"

    MODE = "runs"
    BINDINGS = [
        Binding("enter", "open", "Detail", priority=True),
        Binding("l", "load_adapter", "Load adapter"),
        Binding("t", "stop", "Stop"),
        Binding("g", "resume", "Resume"),
        Binding("f", "follow", "Follow", show=False),
        Binding("f5,ctrl+r", "refresh", "Refresh", show=False),
    ]
    HELP = """\
| key | what |
| --- | --- |
| `enter` | the run's detail: settings, status, metrics, folder, log tail; a loop's iterations and benchmarks |
| `f` | follow the run on the training screen (F6) |
| `l` | load the run's adapter on top of its model into the scoring backend |
| `t` / `g` | stop / resume the run (a loop where it stopped) |

The list is reread every two seconds; the status comes from the workspace, the metrics from
each run's folder.
"""

    def __init__(self) -> None:
        super().__init__()
        self.runs: list = []
        self.last: dict[str, dict] = {}
        self._loop_shown: tuple | None = None  # (run id, record) the loop detail was drawn from

    def compose_body(self) -> ComposeResult:
        yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
        with Horizontal(id="loop-detail"):
            yield DataTable(id="loop-table", zebra_stripes=True)
            yield PlotextPlot(id="loop-plot")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        # what tells runs apart first, so that 80 columns show it; the rest is in the detail too
        for key, label, width in (("id", "run", 14), ("kind", "kind", 4), ("status", "status", 11),
                                  ("step", "step", 7), ("loss", "loss", 6), ("margin", "margin", 6),
                                  ("acc", "acc.", 4), ("examples", "pairs", 5), ("adapter", "adapter", 7),
                                  ("created", "created", 16), ("source", "data", 17)):
            table.add_column(label, key=key, width=width)
        if runner() is None:
            self.set_status("the training runner (ipo_tui.training.runner) is not installed", "yellow")
            return
        self.action_refresh()
        self.set_interval(REFRESH_S, self.action_refresh)
        table.focus()

    def on_screen_resume(self) -> None:
        if self.is_mounted and runner() is not None:
            self.action_refresh()

    def action_refresh(self) -> None:
        module = runner()
        if module is None:
            return
        try:
            self.runs = module.list_runs(self.app.store)
        except IpoError as exc:
            self.error(str(exc), "runs")
            return
        self._fill()
        self.read_worker([(r.id, r.folder) for r in self.runs])

    @work(thread=True, exclusive=True, group="runs-read", exit_on_error=False)
    def read_worker(self, runs: list) -> None:
        module = runner()
        last = {}
        for run_id, folder in runs:
            try:
                metrics = module.read_metrics(folder)
            except Exception:
                metrics = []
            if metrics:
                last[run_id] = metrics[-1]
        self.post_message(RunsRead(last))

    def on_runs_read(self, message: RunsRead) -> None:
        if message.last != self.last:
            self.last = message.last
            self._fill()

    def _fill(self) -> None:
        table = self.query_one("#runs-table", DataTable)
        keep = self.current()
        table.clear()

        def number(value, fmt: str):
            return "—" if value is None else format(value, fmt)

        for run in self.runs:
            m = self.last.get(run.id, {})
            step = f"{m['step']}/{m.get('max_steps', '?')}" if m else "—"
            if run.kind == "loop":  # a loop's steps are its iterations
                step = f"{len(run.config.get('done') or [])}/{run.config.get('iterations', '?')} it"
            table.add_row(
                run.id, run.kind, Text(run.status, style=STATUS_STYLE.get(run.status, "")), step,
                number(m.get("loss"), ".3f"), number(m.get("rewards/margins"), ".2f"),
                number(m.get("rewards/accuracies"), ".2f"), str(run.config.get("examples", "")),
                "yes" if run.adapter else "—", str(run.created_at)[:16].replace("T", " "),
                str(run.config.get("data_source", run.config.get("prompts", "")))[:17], key=run.id)
        if keep is not None and keep.id in {r.id for r in self.runs}:
            table.move_cursor(row=table.get_row_index(keep.id), animate=False)
        self.show_loop(self.current())
        running = sum(r.status == "running" for r in self.runs)
        self.set_status(f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}, {running} running; "
                        "enter shows one" if self.runs else "no runs yet: start one on the training screen (F6)")

    def current(self):
        table = self.query_one("#runs-table", DataTable)
        if not self.runs or not 0 <= table.cursor_row < len(self.runs) or table.row_count != len(self.runs):
            return None
        return self.runs[table.cursor_row]

    @on(DataTable.RowHighlighted, "#runs-table")
    def _highlighted(self) -> None:
        self.show_loop(self.current())

    def show_loop(self, run) -> None:
        """The loop under the cursor, policy by policy; nothing for a training run."""
        detail = self.query_one("#loop-detail")
        detail.set_class(run is not None and run.kind == "loop", "-loop")
        shown = (run.id, run.config) if detail.has_class("-loop") else None
        if shown is None or shown == self._loop_shown:  # the list is reread every 2 s; the loop rarely changes
            return
        self._loop_shown = shown
        try:
            rows = loop_benchmarks(self.app.store, run.config)
        except IpoError as exc:
            self.error(str(exc), "loop")
            rows = {}
        names = fill_loop_table(self.query_one("#loop-table", DataTable), rows, run.config)
        plt = self.query_one("#loop-plot", PlotextPlot).plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("benchmark by policy")
        policies = sorted(rows)
        for name in names[:4]:
            plt.plot(policies, [rows[k]["figures"].get(name) or 0.0 for k in policies], label=name, marker="dot")
        if policies:
            plt.xticks(policies)
        plt.ylim(0, 1)
        self.query_one("#loop-plot", PlotextPlot).refresh()

    @on(DataTable.RowSelected, "#runs-table")
    def action_open(self) -> None:
        run = self.current()
        if run is not None:
            self.app.push_screen(RunDetailScreen(run))

    def action_follow(self) -> None:
        run = self.current()
        if run is not None:
            follow(self.app, run)

    def action_stop(self) -> None:
        run = self.current()
        if run is None:
            return
        try:
            ended = runner().stop(run.id, self.app.store)
        except (IpoError, OSError) as exc:
            self.error(str(exc), "stop")
            return
        self.set_status(f"stopped {run.id} at once: it had done no step since its last checkpoint" if ended else
                        f"asked {run.id} to stop (a trainer saves a checkpoint first); F6 shows the stop", "yellow")

    def action_resume(self) -> None:
        run = self.current()
        if run is None:
            return
        try:
            resume(self.app.store, run)
        except (IpoError, OSError) as exc:
            self.error(str(exc), "resume")
            return
        self.action_refresh()
        self.set_status(f"resumed {run.id}", "green")

    def action_load_adapter(self) -> None:
        run = self.current()
        if run is None:
            return
        if run.adapter is None:
            self.error(f"{run.id} has no adapter yet (it is written when the run completes)", "load adapter")
            return
        app = self.app
        try:
            ref = run_model_ref(run, app.engine)
        except IpoError as exc:
            self.error(str(exc), "load adapter")
            return
        backend = app.engine.capabilities.backend if app.engine is not None else app.backend_name
        app.load_engine(backend, ref, {"adapter": str(run.adapter)})
        self.set_status(f"loading {ref.name} + {run.id}'s adapter on {backend}…", "yellow")


def follow(app, run) -> None:
    """Show `run` on the training screen."""
    async def go() -> None:
        await app.switch_mode("train")
        app.screen.show(run)

    app.call_later(go)


class RunDetailScreen(ModalScreen):
    """One run: what it was asked (its settings), how it stands, its figures, where it lives, how
    its log ends; a loop's iterations and benchmarks."""

    CSS_PATH = "runs.tcss"
    BINDINGS = [Binding("escape,q", "dismiss", "Close"), Binding("f", "follow", "Follow on F6")]

    def __init__(self, run) -> None:
        super().__init__()
        self.run = run

    def compose(self) -> ComposeResult:
        with Vertical(id="run-detail", classes="dialog"):
            with VerticalScroll(id="detail-body"):
                yield Static(id="detail-head")
                yield Static(id="detail-settings")
                yield Static(id="detail-figures")
                yield DataTable(id="detail-loop", zebra_stripes=True, cursor_type="none")
                yield Label("log", classes="field-label")
                yield Static(id="detail-log")
            yield Label("escape closes · f follows it on the training screen (F6)", id="detail-keys")

    def on_mount(self) -> None:
        run, module = self.run, runner()
        style = STATUS_STYLE.get(run.status, "")
        self.query_one("#detail-head", Static).update(Text.assemble(
            (run.id, "bold"), f" · {run.kind} · ", (run.status, style),
            f" · created {str(run.created_at)[:16].replace('T', ' ')}",
            f"\nfolder {run.folder}", ("" if run.adapter is None else f"\nadapter {run.adapter}")))
        self.query_one("#detail-settings", Static).update(self.settings_text())
        self.query_one("#detail-figures", Static).update(self.figures_text(module))
        table = self.query_one("#detail-loop", DataTable)
        table.display = run.kind == "loop"
        if run.kind == "loop":
            fill_loop_table(table, loop_benchmarks(self.app.store, run.config), run.config)
        log = module.log_tail(run.folder, lines=12, name="loop.log" if run.kind == "loop" else "train.log")
        error = run.folder / "error.txt"
        lines = [line.rsplit("\r", 1)[-1] for line in log] + ([f"✗ {error.read_text().strip()}"] if error.exists() else [])
        self.query_one("#detail-log", Static).update(Text("\n".join(lines) or "(no log)", style="dim", no_wrap=True,
                                                          overflow="ellipsis"))
        self.query_one("#detail-body").focus()

    def settings_text(self) -> Text:
        config = self.run.config
        if self.run.kind == "loop":
            pairs = [(key, config.get(key)) for key in LOOP_KEYS if config.get(key) not in (None, "")]
        else:
            pairs = [("data", config.get("data_source")), ("examples", config.get("examples")),
                     ("model", config.get("model_identity") or config.get("model"))]
        pairs += [(key, config.get("settings", {}).get(key)) for key in SETTING_KEYS if key in config.get("settings", {})]
        return Text.assemble(("settings  ", "bold"), "  ".join(f"{key} {value}" for key, value in pairs))

    def figures_text(self, module) -> Text:
        """A training run's steps, pace and figures (first → last); a loop's iterations done."""
        if self.run.kind == "loop":
            done = len(self.run.config.get("done") or [])
            return Text(f"iterations {done} of {self.run.config.get('iterations', '?')} done", style="bold")
        metrics = module.read_metrics(self.run.folder)
        if not metrics:
            return Text("no steps logged", style="dim")
        last, per_step = metrics[-1], module.seconds_per_step(metrics)
        head = f"step {last['step']}/{last.get('max_steps', '?')} · {format_seconds(last.get('elapsed_s'))}" + \
            (f" · {per_step:.1f} s/step" if per_step else "") + "\n"
        return Text(head, style="bold") + summary(metrics, self.run.kind)

    def action_follow(self) -> None:
        self.dismiss()
        follow(self.app, self.run)
