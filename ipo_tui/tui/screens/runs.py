"""Runs: every training run of the workspace with its status and last metrics; open one in the
training dashboard, stop or resume it, or load its adapter into the scoring backend. A loop's row
shows, below the list, its policies: pairs, self-agreement, drift and benchmark figures (with the
change against policy 0 and its McNemar p-value), as a table and a chart."""

from __future__ import annotations

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.widgets import DataTable
from textual_plotext import PlotextPlot

from ipo_tui.errors import IpoError
from ipo_tui.tui.screens.base import ModeScreen
from ipo_tui.tui.screens.train import runner

STATUS_STYLE = {"running": "yellow", "completed": "green", "failed": "red", "interrupted": "red",
                "stopped": "cyan", "waiting": "magenta", "created": "dim"}
REFRESH_S = 2.0


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


class RunsScreen(ModeScreen):
    CSS_PATH = "runs.tcss"

    MODE = "runs"
    BINDINGS = [
        Binding("enter", "open", "Show"),
        Binding("l", "load_adapter", "Load adapter"),
        Binding("t", "stop", "Stop"),
        Binding("g", "resume", "Resume"),
        Binding("f5,ctrl+r", "refresh", "Refresh", show=False),
    ]
    HELP = """\
| key | what |
| --- | --- |
| `enter` | show the run in the training dashboard (F6) |
| `l` | load the run's adapter on top of its model into the scoring backend |
| `t` / `g` | stop / resume the run |

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
        for key, label, width in (("id", "run", 10), ("kind", "kind", 4), ("status", "status", 11),
                                  ("created", "created", 16), ("step", "step", 9), ("loss", "loss", 7),
                                  ("margin", "margin", 7), ("acc", "accuracy", 8), ("examples", "pairs", 5),
                                  ("adapter", "adapter", 7), ("source", "data", 17)):
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
        table = self.query_one(DataTable)
        keep = self.current()
        table.clear()

        def number(value, fmt: str):
            return "—" if value is None else format(value, fmt)

        for run in self.runs:
            m = self.last.get(run.id, {})
            step = f"{m['step']}/{m.get('max_steps', '?')}" if m else "—"
            table.add_row(
                run.id, run.kind, Text(run.status, style=STATUS_STYLE.get(run.status, "")), str(run.created_at)[:16].replace("T", " "),
                step, number(m.get("loss"), ".4f"), number(m.get("rewards/margins"), ".3f"),
                number(m.get("rewards/accuracies"), ".2f"), str(run.config.get("examples", "")),
                "yes" if getattr(run, "adapter", None) or (run.folder / "adapter").is_dir() else "—",
                str(run.config.get("data_source", ""))[:17], key=run.id)
        if keep is not None and keep.id in {r.id for r in self.runs}:
            table.move_cursor(row=table.get_row_index(keep.id), animate=False)
        self.show_loop(self.current())
        running = sum(r.status == "running" for r in self.runs)
        self.set_status(f"{len(self.runs)} run{'s' if len(self.runs) != 1 else ''}, {running} running" if self.runs else
                        "no runs yet: start one on the training screen (F6)")

    def current(self):
        table = self.query_one(DataTable)
        if not self.runs or not 0 <= table.cursor_row < len(self.runs) or table.row_count != len(self.runs):
            return None
        return self.runs[table.cursor_row]

    @on(DataTable.RowHighlighted, "#runs-table")
    def _highlighted(self) -> None:
        self.show_loop(self.current())

    def show_loop(self, run) -> None:
        """The loop under the cursor, policy by policy; nothing for a training run."""
        from ipo_tui.loop.iterations import benchmarks

        detail = self.query_one("#loop-detail")
        detail.display = run is not None and run.kind == "loop"
        shown = (run.id, run.config) if detail.display else None
        if not detail.display or shown == self._loop_shown:  # the list is reread every 2 s; the loop rarely changes
            return
        self._loop_shown = shown
        record = run.config
        try:
            rows = {row["policy"]: row for row in benchmarks(self.app.store, record)}
        except IpoError as exc:
            self.error(str(exc), "loop")
            rows = {}
        names = list(next(iter(rows.values()))["figures"]) if rows else []
        table = self.query_one("#loop-table", DataTable)
        table.clear(columns=True)
        for label in ("policy", "pairs by", "pairs", "held-out agr.", "sample tok", *names):
            table.add_column(label)
        iterations = {it["iteration"]: it for it in record.get("done", [])}
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

    @on(DataTable.RowSelected)
    def action_open(self) -> None:
        run = self.current()
        if run is None:
            return

        async def go() -> None:
            await self.app.switch_mode("train")
            self.app.screen.show(run)

        self.app.call_later(go)

    def action_stop(self) -> None:
        run = self.current()
        if run is None:
            return
        try:
            runner().stop(run.id, self.app.store)
        except (IpoError, OSError) as exc:
            self.error(str(exc), "stop")
            return
        self.set_status(f"asked {run.id} to save a checkpoint and stop", "yellow")

    def action_resume(self) -> None:
        run = self.current()
        if run is None:
            return
        try:
            runner().resume(run.id, self.app.store)
        except (IpoError, OSError) as exc:
            self.error(str(exc), "resume")
            return
        self.action_refresh()
        self.set_status(f"resumed {run.id}", "green")

    def action_load_adapter(self) -> None:
        run = self.current()
        if run is None:
            return
        adapter = run.folder / "adapter"
        if not adapter.is_dir():
            self.error(f"{run.id} has no adapter yet (it is written when the run completes)", "load adapter")
            return
        app = self.app
        try:
            ref = run_model_ref(run, app.engine)
        except IpoError as exc:
            self.error(str(exc), "load adapter")
            return
        backend = app.engine.capabilities.backend if app.engine is not None else app.backend_name
        app.load_engine(backend, ref, {"adapter": str(adapter)})
        self.set_status(f"loading {ref.name} + {run.id}'s adapter on {backend}…", "yellow")
