"""Evaluation: pairwise accuracy of the loaded model as a judge on a RewardBench-format file,
IPO (the judge's score) and the self-rewarding baseline side by side, per category, with a bar chart; and the
loaded policy's objective benchmark (IFEval, GSM8K: `ipo bench`), stored in the workspace."""

from __future__ import annotations

import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.widgets import DataTable, Input, Label, ProgressBar, Select
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from ipo_tui.errors import IpoError
from ipo_tui.tui.screens.base import ModeScreen

JUDGE_CHOICES = {"ipo": ("ipo",), "self-reward": ("self-reward",), "both": ("ipo", "self-reward")}
BENCH_CHOICES = {"ifeval": ["ifeval"], "gsm8k": ["gsm8k"], "ifeval+gsm8k": ["ifeval", "gsm8k"]}
LABELS = {"ipo": "IPO", "self-reward": "self-reward"}


class EvalProgress(Message):
    def __init__(self, judge: str, done: int, total: int) -> None:
        super().__init__()
        self.judge, self.done, self.total = judge, done, total


class EvalResultMessage(Message):
    def __init__(self, result) -> None:
        super().__init__()
        self.result = result


class BenchProgress(Message):
    def __init__(self, task: str, done: int, total: int) -> None:
        super().__init__()
        self.task, self.done, self.total = task, done, total


class BenchResult(Message):
    def __init__(self, bench_id: str, figures: dict, stopped: bool = False) -> None:
        super().__init__()
        self.bench_id, self.figures, self.stopped = bench_id, figures, stopped


class EvalDone(Message):
    def __init__(self, error: str | None = None, cancelled: bool = False, summary: str | None = None) -> None:
        super().__init__()
        self.error, self.cancelled, self.summary = error, cancelled, summary


class _Cancelled(Exception):
    pass


class Locked:
    """A judge or backend whose one busy method holds the engine lock for each call."""

    def __init__(self, inner, lock, method: str) -> None:
        self._inner, self._lock, self._method = inner, lock, method

    def __getattr__(self, name: str):
        value = getattr(self._inner, name)
        if name != self._method:
            return value

        def locked(*args, **kwargs):
            with self._lock:
                return value(*args, **kwargs)

        return locked


def format_seconds(seconds) -> str:
    if seconds is None:
        return "—"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def parse_limit(text: str) -> int | None:
    """A limit as typed: a number of items (1 or more), or `all` for every item; an empty field is
    refused like 0, never read as every item (541 IFEval prompts, half an hour)."""
    text = text.strip().lower()
    if text == "all":
        return None
    if not text.isdigit() or int(text) < 1:
        raise IpoError(f"limit {text!r}: give a number of items (1 or more), or all")
    return int(text)


def default_eval_file() -> str:
    """The file of the last evaluation run (the config's `eval: file`), else none."""
    from ipo_tui.config import load_config

    try:
        return str((load_config().get("eval") or {}).get("file") or "")
    except IpoError:
        return ""


def remember_eval_file(path: str) -> None:
    from ipo_tui.config import load_config, save_config

    try:
        config = load_config()
    except IpoError:
        return  # a broken config is the user's to fix; it is not overwritten
    if (config.get("eval") or {}).get("file") != path:
        config.setdefault("eval", {})["file"] = path
        save_config(config)


class EvalScreen(ModeScreen):
    CSS_PATH = "evaluation.tcss"

    MODE = "eval"
    BINDINGS = [
        Binding("ctrl+r", "run_eval", "Run"),
        Binding("ctrl+b", "run_bench", "Benchmark"),
        Binding("ctrl+t", "cancel", "Stop"),
    ]
    HELP = """\
| key | what |
| --- | --- |
| `ctrl+r` (or enter in a field) | evaluate the loaded model on the file |
| `ctrl+b` | benchmark the loaded policy on the chosen tasks (IFEval, GSM8K), as `ipo bench` does |
| `ctrl+t` | stop after the pair (or the batch of benchmark answers) in flight |

The file holds RewardBench-format pairs (`prompt`, `chosen`, `rejected`, `subset`, optional
`category`), JSONL, JSON, CSV or Parquet. *limit* takes a fixed sample spread over the file
(`all`: every pair). A pair counts as right when the chosen answer scores strictly higher: ties are
wrong. The self-reward judge makes the model write a 0–5 rating (slow: it generates), and
a rating it cannot parse counts as wrong. Choosing *both* shows them side by side.

The benchmark answers each task's prompts greedily (at most 512 tokens) and checks them by
program: IFEval's instruction checkers, GSM8K's final number. Its *limit* takes a fixed sample
(`all`: all 541 IFEval prompts, about half an hour for the embedded model on two cores); the
status line says how many items before it starts, the progress line the time left as answers
come. Answers are stored in the workspace as they come, so a stopped benchmark resumes (its
table says how many of the items asked it has: `3/541`), and `ipo bench compare` pairs two
policies' answers.
"""

    def __init__(self) -> None:
        super().__init__()
        self.results: dict = {}  # judge name -> EvalResult of the last run
        self.running = False
        self.bench_clock: tuple[str, float, int] | None = None  # (task, when, done) at a task's first progress
        self.stopped_note = ""  # what a stopped benchmark kept

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="eval-form", classes="row"):
            yield Label("file", classes="inline-label")
            yield Input(self._initial_file(), placeholder="a RewardBench-format JSONL of pairs (prompt, chosen, rejected, subset), e.g. rewardbench-dev.jsonl",
                        id="eval-file", compact=True)
            yield Label("limit", classes="inline-label")
            yield Input("50", id="eval-limit", max_length=6, compact=True)
            yield Label("judge", classes="inline-label")
            yield Select([(k, k) for k in JUDGE_CHOICES], value="ipo", allow_blank=False, id="eval-judge", compact=True)
        with Horizontal(id="bench-form", classes="row"):
            yield Label("benchmark", classes="inline-label")
            yield Select([(k, k) for k in BENCH_CHOICES], value="ifeval", allow_blank=False, id="bench-tasks",
                         compact=True)
            yield Label("limit", classes="inline-label")
            yield Input("50", id="bench-limit", max_length=6, compact=True)
            yield Label("ctrl+b runs it", classes="inline-label")
        yield Label("", id="eval-judge-line")
        with Horizontal(id="eval-progress-row", classes="row"):
            yield Label("", id="eval-progress-label")
            yield ProgressBar(id="eval-progress", show_eta=False)
        with Horizontal(id="eval-body"):
            with Vertical(id="eval-left"):
                yield DataTable(id="eval-table", cursor_type="row", zebra_stripes=True)
                yield DataTable(id="bench-table", cursor_type="row", zebra_stripes=True)
            yield PlotextPlot(id="eval-plot")

    def _initial_file(self) -> str:
        given = self.app.eval_file
        return default_eval_file() if given is None else given

    def on_mount(self) -> None:
        table = self.query_one("#eval-table", DataTable)
        table.add_column("category", key="category", width=12)
        table.add_column("pairs", key="pairs", width=5)
        table.add_column("IPO", key="ipo", width=7)
        table.add_column("self-reward", key="self-reward", width=11)
        bench = self.query_one("#bench-table", DataTable)
        for key, label, width in (("task", "task", 7), ("figure", "figure", 13), ("value", "value", 6),
                                  ("interval", "95% interval", 12), ("n", "n", 5)):
            bench.add_column(label, key=key, width=width)
        self.query_one("#eval-progress-label", Label).update("not run yet")
        self.show_judge()
        self.query_one("#eval-progress", ProgressBar).update(total=1, progress=0)
        self._draw()
        self.set_status("ctrl+r evaluates the loaded model on the file")

    def show_judge(self) -> None:
        """Which judge settings an evaluation uses (those of the loaded model)."""
        judge = self.app.judge
        self.query_one("#eval-judge-line", Label).update(judge.summary() if judge is not None else "")

    def on_screen_resume(self) -> None:
        self.show_judge()

    @on(Input.Submitted)
    def action_run_eval(self) -> None:
        if self.running:
            self.set_status("an evaluation is running; ctrl+t stops it", "yellow")
            return
        if self.app.engine is None:
            self.error("load a model first (F2)", "evaluation")
            return
        source = self.query_one("#eval-file", Input).value.strip()
        if not source:
            self.error("give a RewardBench-format file of pairs", "evaluation")
            return
        try:
            limit = parse_limit(self.query_one("#eval-limit", Input).value)
        except IpoError as exc:
            self.error(str(exc), "evaluation")
            return
        judges = JUDGE_CHOICES[self.query_one("#eval-judge", Select).value]
        if self.app.eval_file is None:  # the app was not given a file: the next start offers this one
            remember_eval_file(source)
        self.results, self.stopped_note = {}, ""
        self._fill_table()
        self._draw()
        self.running = True
        self.query_one("#eval-progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#eval-progress-label", Label).update("reading the file…")
        self.set_status("evaluating…")
        self.eval_worker(source, limit, judges)

    def action_cancel(self) -> None:
        if self.running:
            self.workers.cancel_group(self, "eval")
            self.set_status("stopping after the work in flight…", "yellow")

    def action_run_bench(self) -> None:
        if self.running:
            self.set_status("an evaluation is running; ctrl+t stops it", "yellow")
            return
        if self.app.engine is None:
            self.error("load a model first (F2)", "benchmark")
            return
        from ipo_tui.evaluation.bench import plan

        tasks = BENCH_CHOICES[self.query_one("#bench-tasks", Select).value]
        try:
            limit = parse_limit(self.query_one("#bench-limit", Input).value)
        except IpoError as exc:
            self.error(str(exc), "benchmark")
            return
        self.running, self.bench_clock, self.stopped_note = True, None, ""
        self.query_one("#bench-table", DataTable).clear()
        self.query_one("#eval-progress", ProgressBar).update(total=None, progress=0)
        self.query_one("#eval-progress-label", Label).update("starting the benchmark…")
        self.set_status(f"benchmarking: {plan(tasks, limit)}; ctrl+t stops, answers are kept")
        self.bench_worker(tasks, limit, self.app.store.path)

    @work(thread=True, exclusive=True, group="eval", exit_on_error=False)
    def bench_worker(self, tasks: list[str], limit: int | None, workspace) -> None:
        from ipo_tui.evaluation import bench
        from ipo_tui.workspace.store import Store

        worker = get_current_worker()

        def progress(task: str, done: int, total: int) -> None:
            self.post_message(BenchProgress(task, done, total))  # the answers stored so far, also when stopping
            if worker.is_cancelled:
                raise _Cancelled

        def job() -> str:
            store = Store(workspace)  # this thread's own connection
            engine = Locked(self.app.engine, self.app.engine_lock, "generate_many")  # the lab scores between batches
            bench_id = bench.bench_of(store, engine)
            try:
                _, figures = bench.run(store, engine, tasks, limit, progress=progress)
            except _Cancelled:  # what it answered is stored: shown, marked as the part it is
                self.post_message(BenchResult(bench_id, bench.stored_figures(store, bench_id), stopped=True))
                raise
            finally:
                store.close()
            self.post_message(BenchResult(bench_id, figures))
            return f"benchmark {bench_id} stored; `ipo bench list` shows it"

        self._report_end(job)

    def on_bench_progress(self, message: BenchProgress) -> None:
        self.query_one("#eval-progress", ProgressBar).update(total=message.total, progress=message.done)
        if self.bench_clock is None or self.bench_clock[0] != message.task:
            self.bench_clock = (message.task, time.monotonic(), message.done)
        task, began, first = self.bench_clock
        left = ""
        if message.done > first:  # the time left at the pace of this run's answers so far
            per_item = (time.monotonic() - began) / (message.done - first)
            left = f" · {format_seconds(per_item * (message.total - message.done))} left"
        self.query_one("#eval-progress-label", Label).update(f"{task}: {message.done}/{message.total}{left}")

    def on_bench_result(self, message: BenchResult) -> None:
        from ipo_tui.evaluation.bench import figure_rows, shortfall

        table = self.query_one("#bench-table", DataTable)
        table.clear()
        for task, name, value, low, high, n in figure_rows(message.figures):
            gap = shortfall(message.figures[task])
            asked = gap.replace(" of ", "/") if gap and not name.startswith("inst") else str(n)
            table.add_row(task, name, f"{value:.3f}", f"{low:.2f}–{high:.2f}", Text(asked, style="yellow" if gap else ""))
        if message.stopped:
            gaps = [f"{task} {gap} items" for task, values in message.figures.items() if (gap := shortfall(values))]
            self.stopped_note = f"{message.bench_id} stopped: {', '.join(gaps) or 'no item'} answered, kept (ctrl+b goes on)"

    @work(thread=True, exclusive=True, group="eval", exit_on_error=False)
    def eval_worker(self, source: str, limit: int | None, judges: tuple[str, ...]) -> None:
        from ipo_tui.evaluation.pairwise import evaluate, load_pairs

        worker = get_current_worker()

        def job() -> None:
            pairs = load_pairs(source, limit)
            for name in judges:
                def progress(done: int, total: int, name=name) -> None:
                    if worker.is_cancelled:
                        raise _Cancelled
                    self.post_message(EvalProgress(name, done, total))

                self.post_message(EvalProgress(name, 0, len(pairs)))
                lock = self.app.engine_lock  # taken per pair, so the score lab can work in between
                if name == "ipo":
                    pairwise = None
                    if self.app.judge.settings.mode == "pairwise":
                        from ipo_tui.judge.pairwise import PairwiseJudge

                        pairwise = PairwiseJudge(Locked(self.app.engine, lock, "last_logprobs"))
                    result = evaluate(pairs, "ipo", judge=Locked(self.app.judge, lock, "score"), progress=progress,
                                      pairwise=pairwise)
                else:
                    result = evaluate(pairs, "self-reward", backend=Locked(self.app.engine, lock, "generate"),
                                      progress=progress)
                self.post_message(EvalResultMessage(result))

        self._report_end(job)

    def _report_end(self, job) -> None:
        """Run a worker's job, then post how it ended: done (with the summary it returns), stopped or failed."""
        try:
            summary = job()
        except _Cancelled:
            self.post_message(EvalDone(cancelled=True))
            return
        except IpoError as exc:
            self.post_message(EvalDone(error=str(exc)))
            return
        except Exception as exc:
            self.post_message(EvalDone(error=f"{type(exc).__name__}: {exc}"))
            return
        self.post_message(EvalDone(summary=summary))

    def on_eval_progress(self, message: EvalProgress) -> None:
        self.query_one("#eval-progress", ProgressBar).update(total=message.total, progress=message.done)
        self.query_one("#eval-progress-label", Label).update(f"{LABELS[message.judge]}: {message.done}/{message.total}")

    def on_eval_result_message(self, message: EvalResultMessage) -> None:
        self.results[message.result.judge] = message.result
        self._fill_table()
        self._draw()

    def on_eval_done(self, message: EvalDone) -> None:
        self.running = False
        bar = self.query_one("#eval-progress", ProgressBar)
        if bar.total is None:  # an indeterminate bar animates: one that ended before any count stays still
            bar.update(total=1, progress=0)
        if message.error:
            self.error(message.error, "evaluation")
            self.query_one("#eval-progress-label", Label).update("failed")
            return
        if message.cancelled:
            self.set_status(self.stopped_note or "evaluation stopped", "yellow")
            self.query_one("#eval-progress-label", Label).update("stopped")
            return
        self.set_status(message.summary or self.summary(), "green")

    def summary(self) -> str:
        parts = []
        for name, result in self.results.items():
            summary = result.as_dict()
            extra = ""
            if name == "ipo" and summary["mean_mass"] is not None:
                extra = f", mean Yes+No mass {summary['mean_mass']:.3f}"
            elif name == "self-reward":
                extra = f", {result.parse_failures} of {2 * result.pairs} ratings unparsed"
            if result.warning:
                extra += f" ({result.warning})"
            parts.append(f"{LABELS[name]} accuracy {result.accuracy:.3f} on {result.pairs} pairs{extra}")
        return "; ".join(parts) or "no results"

    # --- results ----------------------------------------------------------------------------------

    def categories(self) -> list[str]:
        names: set[str] = set()
        for result in self.results.values():
            names.update(result.by_category)
        return sorted(names)

    def _fill_table(self) -> None:
        table = self.query_one("#eval-table", DataTable)
        table.clear()
        if not self.results:
            return

        def cell(name: str, category: str | None):
            result = self.results.get(name)
            if result is None:
                return Text("—", style="dim")
            if category is None:
                return Text(f"{result.accuracy:.3f}", style="bold")
            correct, total = result.by_category.get(category, (0, 0))
            return f"{correct / total:.3f}" if total else "—"

        for category in self.categories():
            total = max(r.by_category.get(category, (0, 0))[1] for r in self.results.values())
            table.add_row(category, str(total), cell("ipo", category), cell("self-reward", category))
        pairs = max(r.pairs for r in self.results.values())
        table.add_row(Text("all", style="bold"), str(pairs), cell("ipo", None), cell("self-reward", None))

    def _draw(self) -> None:
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("pairwise accuracy by category")
        categories = self.categories()
        if categories:
            names = [n for n in ("ipo", "self-reward") if n in self.results]
            series = []
            for name in names:
                result = self.results[name]
                series.append([result.by_category[c][0] / result.by_category[c][1] if result.by_category.get(c, (0, 0))[1] else 0.0
                               for c in categories])
            if len(series) == 1:
                plt.bar(categories, series[0], label=LABELS[names[0]], width=0.4)
            else:
                plt.multiple_bar(categories, series, labels=[LABELS[n] for n in names], width=0.3)
            plt.hline(0.5)
        plt.ylim(0, 1)
        plt.yticks([0, 0.25, 0.5, 0.75, 1.0])
        plot.refresh()
