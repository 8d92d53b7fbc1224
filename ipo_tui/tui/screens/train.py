"""Training dashboard: a form that launches a LoRA-DPO or SFT run, or a loop (sample, judge, pair,
train, k times), each in a process of its own; and what is shown: the run's progress, loss, reward
margin and accuracy (a loop's: its iteration, stage and current training), and log tail, polled
once a second.

The run list lives in the workspace, so closing the app and opening it again finds a running run
(or loop) and follows it again; stopping asks the trainer to checkpoint, resuming starts from there.
Below 100 columns or 32 rows the two charts give way to a text summary of the same figures.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static
from textual_plotext import PlotextPlot

from ipo_tui.errors import IpoError
from ipo_tui.tui.screens.base import ModeScreen
from ipo_tui.tui.screens.evaluation import BENCH_CHOICES, format_seconds, parse_limit

KINDS = ("dpo", "sft", "loop")
SETTING_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "beta", "learning_rate", "epochs", "batch_size",
                "grad_accum", "max_length", "seed")
DPO_ONLY = ("beta",)  # a loop trains with DPO: it takes them too
PAIRS_BY = ("ipo", "random", "longer", "self-reward")  # the loop's pairer: the method and its controls
POLL_S = 1.0
SPARKS = "▁▂▃▄▅▆▇█"


def runner():
    """The training runner, or None where it is not installed."""
    try:
        from ipo_tui.training import runner as module
    except ImportError:
        return None
    return module


def training_defaults() -> dict:
    try:
        from ipo_tui.training import settings
    except ImportError:
        return {}
    return settings.defaults()


def trained_statuses() -> str:
    from ipo_tui.workspace.store import TRAINED_STATUSES

    return ",".join(TRAINED_STATUSES)


def sparkline(values: list[float], width: int) -> str:
    """`values` as at most `width` block characters, each the mean of consecutive values."""
    size = -(-len(values) // width)  # values per character, rounded up
    means = [sum(values[i:i + size]) / len(values[i:i + size]) for i in range(0, len(values), size)]
    low, high = min(means), max(means)
    return "".join(SPARKS[round((m - low) / (high - low) * 7) if high > low else 0] for m in means)


def summary(metrics: list[dict], kind: str) -> Text:
    """The charts' figures as text, a line each: first → last value and a sparkline of the steps."""
    keys = (("loss", "loss"), ("mean_token_accuracy", "accuracy")) if kind == "sft" else \
        (("loss", "loss"), ("rewards/margins", "margin"), ("rewards/accuracies", "accuracy"))
    lines = []
    for key, label in keys:
        values = [m[key] for m in metrics if key in m]
        if values:
            lines.append(Text.assemble((f"{label:<9}{values[0]:>7.3f} → {values[-1]:<7.3f} ", "bold" if key == "loss" else ""),
                                       (sparkline(values, 16), "cyan")))
    return Text("\n").join(lines) if lines else Text("no steps logged yet", style="dim")


def resume(store, run):
    """Start a stopped run again: a trainer from its last checkpoint, a loop where it stopped."""
    if run.kind == "loop":
        from ipo_tui.loop import iterations

        return iterations.launch(store, run.id)
    return runner().resume(run.id, store)


class RunStarted(Message):
    def __init__(self, run=None, error: str | None = None) -> None:
        super().__init__()
        self.run, self.error = run, error


class RunPolled(Message):
    def __init__(self, run_id: str, metrics: list[dict], log: list[str], progress: dict,
                 step_left: float | None) -> None:
        super().__init__()
        self.run_id, self.metrics, self.log, self.progress, self.step_left = run_id, metrics, log, progress, step_left


class TrainScreen(ModeScreen):
    CSS_PATH = "train.tcss"

    MODE = "train"
    BINDINGS = [
        Binding("ctrl+r", "start_run", "Start"),
        Binding("ctrl+t", "stop_run", "Stop"),
        Binding("ctrl+g", "resume_run", "Resume"),
    ]
    HELP = """\
| key | what |
| --- | --- |
| `ctrl+r` | start a run (or a loop) with the form's settings |
| `ctrl+t` | stop the run shown (a trainer saves a checkpoint first; one that has done no step since its last checkpoint ends at once) |
| `ctrl+g` | resume the run shown: a trainer from its last checkpoint, a loop where it stopped |
| F7 | all runs; `enter` there shows a run's detail |

*kind*: `dpo` trains on pairs, `sft` on prompt/response records, `loop` samples candidates from
the first *prompt limit* prompts of a prompt set, judges them, pairs them and trains with DPO,
*iterations* times (`ipo loop`); the form shows the fields of the kind chosen. *pairs* is a file
of pairs or a selection of the workspace's: statuses, optionally `@SET` (`accepted,edited`,
`accepted@lab`). *pairs by* is how the loop picks chosen and rejected: `ipo` (the policy's own
score) or a control (`random`, `longer`, `self-reward`). *benchmark* measures policy 0 and each
new policy (IFEval, GSM8K) on *bench limit* items (`all`: every one). *model* empty means the
embedded default. Runs and loops go on in a process of their own: the app can close, and it finds
them again when it opens. Below 100 columns or 32 rows a text summary of loss, margin and
accuracy takes the charts' place.
"""

    def __init__(self) -> None:
        super().__init__()
        self.run = None  # the RunInfo shown
        self.metrics: list[dict] = []
        self.progress: dict = {}
        self.starting = False
        self.stop_asked: float | None = None  # when the run shown was asked to stop (monotonic)
        self.prompt_sets: list[str] = []  # the loop's choices, from the workspace
        self._polling = False
        self._final_poll_done = False
        self.points = 0  # steps drawn in the plots
        self._shown_status = ""

    # --- the form ----------------------------------------------------------------------------------

    def compose_body(self) -> ComposeResult:
        module = runner()
        with Horizontal(id="train-body"):
            with Vertical(id="train-form"):
                yield Label("New run", classes="field-label")
                with VerticalScroll(id="train-fields"):
                    yield from self.compose_fields()
                yield Button("Start (ctrl+r)", id="train-start", variant="primary", compact=True,
                             disabled=module is None)
            with Vertical(id="train-main"):
                yield Static("", id="run-title")
                yield ProgressBar(id="run-progress", show_eta=False)
                yield Static("", id="run-speed")
                with Horizontal(id="train-plots"):
                    yield PlotextPlot(id="loss-plot")
                    yield PlotextPlot(id="reward-plot")
                yield Static("", id="run-summary")
                yield Static("", id="run-log")

    def compose_fields(self) -> ComposeResult:
        """A row per field, marked with the kinds it belongs to (`for-dpo`...): the others hide it."""
        def row(label: str, widget, kinds=KINDS):
            return Horizontal(Label(label), widget, classes="form-row " + " ".join(f"for-{k}" for k in kinds))

        yield row("kind", Select([(k, k) for k in KINDS], value="dpo", allow_blank=False, id="train-kind", compact=True))
        yield row("pairs", Input(trained_statuses(), id="train-pairs", compact=True), ("dpo",))
        yield row("data", Input(placeholder="prompt/response JSONL", id="train-data", compact=True), ("sft",))
        yield row("prompt set", Select([], prompt="import one first", id="loop-prompts", compact=True), ("loop",))
        yield row("prompt limit", Input("all", id="loop-limit", compact=True), ("loop",))
        yield row("iterations", Input("1", id="loop-iterations", type="integer", compact=True), ("loop",))
        yield row("candidates", Input("4", id="loop-n", type="integer", compact=True), ("loop",))
        yield row("pairs by", Select([(p, p) for p in PAIRS_BY], value="ipo", allow_blank=False, id="loop-pairs-by",
                                     compact=True), ("loop",))
        yield row("benchmark", Select([("none", "none"), *((k, k) for k in BENCH_CHOICES)], value="none",
                                      allow_blank=False, id="loop-bench", compact=True), ("loop",))
        yield row("bench limit", Input("50", id="loop-bench-limit", compact=True), ("loop",))
        yield row("model", Input(self.app.model_spec or "", placeholder="embedded default", id="train-model", compact=True))
        for key, value in training_defaults().items():
            if key in SETTING_KEYS:
                yield row(key, Input(str(value), id=f"set-{key}", compact=True,
                                     type="integer" if isinstance(value, int) else "number"),
                          ("dpo", "loop") if key in DPO_ONLY else KINDS)

    @property
    def kind(self) -> str:
        return str(self.query_one("#train-kind", Select).value)

    @on(Select.Changed, "#train-kind")
    def show_kind_fields(self) -> None:
        for row in self.query(".form-row"):
            row.display = row.has_class(f"for-{self.kind}")
        self.query_one("#train-start", Button).label = f"Start {'loop' if self.kind == 'loop' else 'run'} (ctrl+r)"

    def fill_prompt_sets(self) -> None:
        """The workspace's prompt sets, as the loop's choices (one may have been imported meanwhile)."""
        with contextlib.suppress(IpoError):
            names = [row["name"] for row in self.app.store.prompt_sets()]
            if names != self.prompt_sets:
                self.prompt_sets = names
                select = self.query_one("#loop-prompts", Select)
                chosen = select.value
                select.set_options([(name, name) for name in names])
                if names:
                    select.value = chosen if chosen in names else names[-1]  # else the newest

    def on_mount(self) -> None:
        if runner() is None:
            self.set_status("the training runner (ipo_tui.training.runner) is not installed", "yellow")
        self.show_kind_fields()
        self.fill_prompt_sets()
        self._show_run()
        self.reattach()
        self.set_interval(POLL_S, self.poll)

    def on_screen_resume(self) -> None:
        if self.is_mounted:
            self.fill_prompt_sets()
            if self.run is not None:
                self.poll()

    # --- which run -------------------------------------------------------------------------------

    def reattach(self) -> None:
        """Show the newest running run of the workspace (a loop before its own training), else the newest."""
        module = runner()
        if module is None:
            return
        try:
            runs = module.list_runs(self.app.store)
        except IpoError as exc:
            self.error(str(exc), "runs")
            return
        if not runs:
            self.set_status("no runs yet: fill the form and ctrl+r")
            return
        running = sorted((r for r in runs if r.status == "running"), key=lambda r: r.kind == "loop")
        self.show(running[-1] if running else runs[-1])

    def show(self, run) -> None:
        """Follow `run` (a RunInfo)."""
        self.run = run
        self.metrics, self.progress = [], {}
        self.stop_asked = None
        self._final_poll_done = False
        self._shown_status = ""
        self._show_run()
        self._draw()
        self.poll()

    def _refresh_info(self) -> None:
        module = runner()
        if module is None or self.run is None:
            return
        with contextlib.suppress(IpoError, AttributeError):
            self.run = module.info(self.app.store, self.run.id)

    # --- polling ---------------------------------------------------------------------------------

    def poll(self) -> None:
        """Once a second: the run's status from the store, its progress, metrics and log from its folder."""
        if self.run is None or self._polling:
            return
        was_running = self.run.status == "running"
        self._refresh_info()
        if self.run.status != "running" and not was_running and self._final_poll_done:
            return  # a finished run changes no more
        self._final_poll_done = self.run.status != "running"
        self._polling = True
        self.poll_worker(self.run.id, self.run.kind, self.run.folder, self.stop_asked is not None)

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def poll_worker(self, run_id: str, kind: str, folder: Path, stopping: bool) -> None:
        module = runner()
        try:
            progress = module.progress(folder)
            # a loop's charts are those of the training it runs (or ran last)
            trainer = Path(progress["train_folder"]) if kind == "loop" and "train_folder" in progress else folder
            metrics = module.read_metrics(trainer)
            log = module.log_tail(folder, lines=12, name="loop.log" if kind == "loop" else "train.log")
            step_left = module.step_remaining(trainer) if stopping else None
        except Exception as exc:  # a half-written file: try again next second
            metrics, log, progress, step_left = self.metrics, [f"(could not read the run: {exc})"], self.progress, None
        self.post_message(RunPolled(run_id, metrics, log, progress, step_left))

    def on_run_polled(self, message: RunPolled) -> None:
        self._polling = False
        if self.run is None or message.run_id != self.run.id:
            return
        changed = message.metrics != self.metrics
        self.metrics, self.progress = message.metrics, message.progress
        self._show_run()
        if changed:
            self._draw()
        if self.stop_asked is not None and self.run.status == "running":
            self.set_status(self.stopping_line(message.step_left), "yellow")
        lines = [line.rsplit("\r", 1)[-1] for line in message.log[-12:]]  # progress bars rewrite their line
        self.query_one("#run-log", Static).update(
            Text("\n".join(lines) or "(no log yet)", style="dim", no_wrap=True, overflow="ellipsis"))

    def stopping_line(self, step_left: float | None) -> str:
        """What a stop under way waits for: the trainer's step in flight and its checkpoint."""
        waited = format_seconds(time.monotonic() - self.stop_asked)
        training = self.run.kind != "loop" or self.progress.get("stage") == "train"
        if not training:
            return f"stopping {self.run.id}… after the {self.progress.get('stage', 'work')} in flight · {waited}"
        step, total = self.counts()
        left = f", about {format_seconds(step_left)} left" if step_left is not None else ""
        return (f"stopping {self.run.id}… finishing step {step + 1}/{total or '?'}{left}, "
                f"then saving a checkpoint · {waited}")

    def _show_run(self) -> None:
        title = self.query_one("#run-title", Static)
        bar = self.query_one("#run-progress", ProgressBar)
        if self.run is None:
            title.update(Text("no run shown", style="dim"))
            bar.update(total=1, progress=0)
            self.query_one("#run-speed", Static).update("")
            return
        run = self.run
        style = {"running": "bold yellow", "completed": "bold green", "failed": "bold red",
                 "interrupted": "bold red", "stopped": "bold cyan", "waiting": "bold magenta"}.get(run.status, "bold")
        title.update(Text.assemble((run.id, "bold"), f" · {run.kind} · ", (run.status, style), (self.about(), "dim")))
        done, total = self.counts()
        if run.status == "completed":  # a loop's last stage has no count: full, not an endless pulse
            done, total = 1, 1
        bar.update(total=total or None, progress=done)
        self.query_one("#run-speed", Static).update(self.speed_line())
        self.query_one("#run-summary", Static).update(summary(self.metrics, self.trained_kind()))
        if run.status != self._shown_status:
            self._shown_status = run.status
            self.show_status()

    def about(self) -> str:
        if self.run.kind == "loop":
            where = f" · iteration {self.progress['iteration']}/{self.progress['iterations']}: {self.progress['stage']}" \
                if "stage" in self.progress else ""
            return f"{where} · {self.run.config.get('prompts', '')}, pairs by {self.run.config.get('pairs_by', 'ipo')}"
        return f" · {self.run.config.get('examples', '?')} examples · from {self.run.config.get('data_source', '')}"

    def counts(self) -> tuple[int, int | None]:
        """(done, total) of what the bar shows: a trainer's steps, a loop's current stage."""
        if self.run.kind == "loop":
            return self.progress.get("done", 0), self.progress.get("total")
        last = self.metrics[-1] if self.metrics else {}
        return self.progress.get("step", last.get("step", 0)), self.progress.get("max_steps") or last.get("max_steps")

    def trained_kind(self) -> str:
        return "dpo" if self.run is None or self.run.kind == "loop" else self.run.kind

    def speed_line(self) -> str:
        done, total = self.counts()
        last = self.metrics[-1] if self.metrics else {}
        stage = self.progress.get("stage", "train") if self.run.kind == "loop" else "train"
        if stage == "done":
            return f"iteration {self.progress['iteration']} of {self.progress['iterations']} done"
        if stage != "train":
            return f"{stage}: {done}/{total or '?'}"
        parts = [f"step {done}/{total or '?'}"]
        per_step = runner().seconds_per_step(self.metrics)
        if per_step:
            parts.append(f"{per_step:.1f} s/step")
        if self.run.status == "running" and last.get("eta_s") is not None:
            parts.append(f"ETA {format_seconds(last['eta_s'])}")
        if "loss" in last:
            parts.append(f"loss {last['loss']:.4f}")
        return " · ".join(parts)

    def show_status(self) -> None:
        run = self.run
        self.stop_asked = None if run.status != "running" else self.stop_asked
        error = run.folder / "error.txt"
        if run.status != "running" and error.exists():
            self.set_status(f"✗ {run.id} {run.status}: {error.read_text().strip()}", "bold red")
        elif run.status == "completed":
            self.set_status(f"{run.id} completed" + ("" if run.kind == "loop" else
                            ": its adapter is in the run folder; F7 then l loads it for scoring"), "green")
        elif run.status == "running":
            self.set_status(f"following {run.id}; ctrl+t stops it (a trainer saves a checkpoint first)")
        else:
            self.set_status(f"{run.id} {run.status}; ctrl+g resumes it where it stopped", "yellow")

    def _draw(self) -> None:
        loss_plot = self.query_one("#loss-plot", PlotextPlot)
        plt = loss_plot.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("loss")
        losses = [(m["step"], m["loss"]) for m in self.metrics if "loss" in m]
        if losses:
            plt.plot([s for s, _ in losses], [v for _, v in losses], marker="braille")
        plt.xlabel("step")
        loss_plot.refresh()
        reward_plot = self.query_one("#reward-plot", PlotextPlot)
        plt = reward_plot.plt
        plt.clear_data()
        plt.clear_figure()
        if self.trained_kind() == "sft":
            plt.title("token accuracy")
            acc = [(m["step"], m["mean_token_accuracy"]) for m in self.metrics if "mean_token_accuracy" in m]
            if acc:
                plt.plot([s for s, _ in acc], [v for _, v in acc], marker="braille", label="accuracy")
        else:
            plt.title("reward margin and accuracy")
            margins = [(m["step"], m["rewards/margins"]) for m in self.metrics if "rewards/margins" in m]
            accuracies = [(m["step"], m["rewards/accuracies"]) for m in self.metrics if "rewards/accuracies" in m]
            if margins:
                plt.plot([s for s, _ in margins], [v for _, v in margins], marker="braille", label="margin")
            if accuracies:
                plt.plot([s for s, _ in accuracies], [v for _, v in accuracies], marker="braille", label="accuracy")
        plt.xlabel("step")
        reward_plot.refresh()
        self.points = len(self.metrics)

    # --- actions ---------------------------------------------------------------------------------

    def overrides(self) -> dict:
        """The training settings of the form's kind, as numbers."""
        defaults = training_defaults()
        values = {}
        for key in SETTING_KEYS:
            if key not in defaults or (key in DPO_ONLY and self.kind == "sft"):
                continue
            raw = self.query_one(f"#set-{key}", Input).value.strip()
            try:
                values[key] = int(raw) if isinstance(defaults[key], int) else float(raw)
            except ValueError:
                raise IpoError(f"{key}: {raw!r} is not a number") from None
        return values

    def loop_options(self) -> dict:
        """The loop's own fields: what `ipo loop` takes besides the training settings."""
        prompts = self.query_one("#loop-prompts", Select).value
        if prompts == Select.NULL:
            raise IpoError("choose a prompt set (import one with `ipo prompts import FILE --name NAME`)")
        numbers = {}
        for key in ("iterations", "n"):
            raw = self.query_one(f"#loop-{key}", Input).value.strip()
            if not raw.isdigit():
                raise IpoError(f"{'candidates' if key == 'n' else key}: {raw!r} is not a whole number")
            numbers[key] = int(raw)
        bench = str(self.query_one("#loop-bench", Select).value)
        return {"prompts": str(prompts), "limit": parse_limit(self.query_one("#loop-limit", Input).value), **numbers,
                "pairs_by": str(self.query_one("#loop-pairs-by", Select).value),
                "bench": {"tasks": BENCH_CHOICES.get(bench, []),
                          "limit": parse_limit(self.query_one("#loop-bench-limit", Input).value)}}

    @on(Button.Pressed, "#train-start")
    def action_start_run(self) -> None:
        if runner() is None:
            self.error("the training runner is not installed", "training")
            return
        if self.starting:
            return
        if self.run is not None and self.run.status == "running":
            self.error(f"{self.run.id} is running; stop it first (ctrl+t)", "training")
            return
        kind = self.kind
        try:
            overrides = self.overrides()
            options = self.loop_options() if kind == "loop" else \
                {"data": self.query_one("#train-pairs" if kind == "dpo" else "#train-data", Input).value.strip()}
        except IpoError as exc:
            self.error(str(exc), "training")
            return
        model = self.query_one("#train-model", Input).value.strip() or None
        self.starting = True
        self.query_one("#train-start", Button).disabled = True
        self.set_status("preparing the run (the first time, the model is converted into a checkpoint)…" if kind != "loop"
                        else "checking the loop's settings and starting it…", "yellow")
        self.start_worker(kind, options, model, overrides, self.app.store.path)

    @work(thread=True, exclusive=True, group="start", exit_on_error=False)
    def start_worker(self, kind: str, options: dict, model: str | None, overrides: dict, store_path) -> None:
        from ipo_tui.workspace.store import Store

        store = Store(store_path)  # this thread's own connection (sqlite3 connections stay in their thread)
        try:
            run = start_loop(store, options, model, overrides) if kind == "loop" else \
                runner().start(kind, options["data"], model, overrides, store)
        except IpoError as exc:
            self.post_message(RunStarted(error=str(exc)))
            return
        except Exception as exc:
            self.post_message(RunStarted(error=f"{type(exc).__name__}: {exc}"))
            return
        finally:
            store.close()
        self.post_message(RunStarted(run))

    def on_run_started(self, message: RunStarted) -> None:
        self.starting = False
        self.query_one("#train-start", Button).disabled = False
        if message.error:
            self.error(message.error, "training")
            return
        self.show(message.run)
        self.set_status(f"started {message.run.id}: " + ("the loop loads its model" if message.run.kind == "loop"
                        else "the trainer is loading (the plots fill as it logs)"), "green")

    def action_stop_run(self) -> None:
        if runner() is None or self.run is None:
            return
        try:
            ended = runner().stop(self.run.id, self.app.store)
        except (IpoError, OSError) as exc:
            self.error(str(exc), "stop")
            return
        if ended:
            self._refresh_info()
            self._shown_status = self.run.status  # this line says why, in place of the usual one
            self._show_run()
            self.set_status(f"stopped {self.run.id} at once: it had done no step since its last checkpoint; "
                            "ctrl+g resumes it", "yellow")
            return
        self.stop_asked = time.monotonic()
        self.set_status(self.stopping_line(None), "yellow")

    def action_resume_run(self) -> None:
        if runner() is None or self.run is None:
            return
        try:
            run = resume(self.app.store, self.run)
        except (IpoError, OSError) as exc:
            self.error(str(exc), "resume")
            return
        self.show(run)
        self.set_status(f"resumed {run.id} where it stopped", "green")


def start_loop(store, options: dict, model: str | None, overrides: dict):
    """Record a loop as `ipo loop` does (the same checks and defaults) and launch it."""
    from ipo_tui.backends.base import Sampling
    from ipo_tui.loop import iterations

    loop_id = iterations.start(store, options["prompts"], options["iterations"], options["n"], "auto", model,
                               Sampling(options["n"]), overrides=overrides, limit=options["limit"],
                               pairs_by=options["pairs_by"], bench=options["bench"])
    return iterations.launch(store, loop_id)
