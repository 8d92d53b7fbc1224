"""Training dashboard: a form that launches a LoRA-DPO (or SFT) run in a child process, and the
run's progress, loss, reward margin and accuracy, and log tail, polled once a second.

The run list lives in the workspace, so closing the app and opening it again finds a running
run and follows it again; stopping asks the trainer to checkpoint, resuming starts from there.
"""

from __future__ import annotations

import contextlib

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical
from textual.message import Message
from textual.widgets import Button, Input, Label, ProgressBar, Select, Static
from textual_plotext import PlotextPlot

from ipo_tui.errors import IpoError
from ipo_tui.tui.screens.base import ModeScreen

FORM_KEYS = ("lora_r", "lora_alpha", "lora_dropout", "beta", "learning_rate", "epochs", "batch_size",
             "grad_accum", "max_length", "seed")
POLL_S = 1.0


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


def speed(metrics: list[dict]) -> float | None:
    """Seconds per step over the logged steps (None before two of them)."""
    if len(metrics) < 2:
        return None
    first, last = metrics[0], metrics[-1]
    steps = last["step"] - first["step"]
    return (last.get("elapsed_s", 0) - first.get("elapsed_s", 0)) / steps if steps > 0 else None


class RunStarted(Message):
    def __init__(self, run=None, error: str | None = None) -> None:
        super().__init__()
        self.run, self.error = run, error


class RunPolled(Message):
    def __init__(self, run_id: str, metrics: list[dict], log: list[str], progress: dict) -> None:
        super().__init__()
        self.run_id, self.metrics, self.log, self.progress = run_id, metrics, log, progress


class TrainScreen(ModeScreen):
    CSS_PATH = "train.tcss"

    MODE = "train"
    BINDINGS = [
        Binding("ctrl+r", "start_run", "Start run"),
        Binding("ctrl+t", "stop_run", "Stop"),
        Binding("ctrl+g", "resume_run", "Resume"),
    ]
    HELP = """\
| key | what |
| --- | --- |
| `ctrl+r` | start a run with the form's settings |
| `ctrl+t` | stop the run shown (it saves a checkpoint first) |
| `ctrl+g` | resume the run shown from its last checkpoint |
| F7 | all runs; `enter` there shows a run here |

*pairs* is a file of pairs or a selection of the workspace's: statuses, optionally `@SET`
(`accepted,edited`, `accepted@lab`). *model* empty means the embedded default. The run trains in
a child process: the app can close, and it finds the run again when it opens.
"""

    def __init__(self) -> None:
        super().__init__()
        self.run = None  # the RunInfo shown
        self.metrics: list[dict] = []
        self.starting = False
        self._polling = False
        self._final_poll_done = False
        self.points = 0  # steps drawn in the plots
        self._shown_status = ""

    def compose_body(self) -> ComposeResult:
        module = runner()
        with Horizontal(id="train-body"):
            with Vertical(id="train-form"):
                yield Label("New run", classes="field-label")
                with Grid(id="train-grid"):
                    yield Label("kind")
                    yield Select([("dpo", "dpo"), ("sft", "sft")], value="dpo", allow_blank=False, id="train-kind",
                                 compact=True)
                    yield Label("pairs")
                    yield Input("accepted,edited", id="train-pairs", compact=True)
                    yield Label("model")
                    yield Input(self.app.model_spec or "", placeholder="embedded default", id="train-model", compact=True)
                    for key, value in training_defaults().items():
                        if key in FORM_KEYS:
                            yield Label(key)
                            yield Input(str(value), id=f"set-{key}", compact=True,
                                        type="integer" if isinstance(value, int) else "number")
                yield Button("Start run (ctrl+r)", id="train-start", variant="primary", disabled=module is None)
            with Vertical(id="train-main"):
                yield Static("", id="run-title")
                yield ProgressBar(id="run-progress", show_eta=False)
                yield Static("", id="run-speed")
                with Horizontal(id="train-plots"):
                    yield PlotextPlot(id="loss-plot")
                    yield PlotextPlot(id="reward-plot")
                yield Static("", id="run-log")

    def on_mount(self) -> None:
        if runner() is None:
            self.set_status("the training runner (ipo_tui.training.runner) is not installed", "yellow")
        self._show_run()
        self.reattach()
        self.set_interval(POLL_S, self.poll)

    def on_screen_resume(self) -> None:
        if self.is_mounted and self.run is not None:
            self.poll()

    # --- which run -------------------------------------------------------------------------------

    def reattach(self) -> None:
        """Show the newest running run of the workspace, else the newest run."""
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
        running = [r for r in runs if r.status == "running"]
        self.show(running[-1] if running else runs[-1])

    def show(self, run) -> None:
        """Follow `run` (a RunInfo)."""
        self.run = run
        self.metrics = []
        self._final_poll_done = False
        self._shown_status = ""
        self._show_run()
        self.poll()

    def _refresh_info(self) -> None:
        module = runner()
        if module is None or self.run is None:
            return
        with contextlib.suppress(IpoError, AttributeError):
            self.run = module.info(self.app.store, self.run.id)

    # --- polling ---------------------------------------------------------------------------------

    def poll(self) -> None:
        """Once a second: the run's status from the store, its metrics and log from its folder."""
        if self.run is None or self._polling:
            return
        was_running = self.run.status == "running"
        self._refresh_info()
        if self.run.status != "running" and not was_running and self._final_poll_done:
            return  # a finished run changes no more
        self._final_poll_done = self.run.status != "running"
        self._polling = True
        self.poll_worker(self.run.id, self.run.folder)

    @work(thread=True, exclusive=True, group="poll", exit_on_error=False)
    def poll_worker(self, run_id: str, folder) -> None:
        module = runner()
        try:
            metrics = module.read_metrics(folder)
            log = module.log_tail(folder, lines=12)
            progress = module.progress(folder)
        except Exception as exc:  # a half-written file: try again next second
            metrics, log, progress = self.metrics, [f"(could not read the run: {exc})"], {}
        self.post_message(RunPolled(run_id, metrics, log, progress))

    def on_run_polled(self, message: RunPolled) -> None:
        self._polling = False
        if self.run is None or message.run_id != self.run.id:
            return
        changed = len(message.metrics) != len(self.metrics)
        self.metrics = message.metrics
        self._show_run(message.progress)
        if changed:
            self._draw()
        lines = [line.rsplit("\r", 1)[-1] for line in message.log[-12:]]  # progress bars rewrite their line
        self.query_one("#run-log", Static).update(
            Text("\n".join(lines) or "(no log yet)", style="dim", no_wrap=True, overflow="ellipsis"))

    def _show_run(self, progress: dict | None = None) -> None:
        title = self.query_one("#run-title", Static)
        bar = self.query_one("#run-progress", ProgressBar)
        if self.run is None:
            title.update(Text("no run shown", style="dim"))
            bar.update(total=1, progress=0)
            self.query_one("#run-speed", Static).update("")
            self._draw()
            return
        run = self.run
        last = self.metrics[-1] if self.metrics else {}
        step = (progress or {}).get("step", last.get("step", 0))
        total = (progress or {}).get("max_steps") or last.get("max_steps")
        style = {"running": "bold yellow", "completed": "bold green", "failed": "bold red",
                 "interrupted": "bold red", "stopped": "bold cyan"}.get(run.status, "bold")
        title.update(Text.assemble((f"{run.id}", "bold"), f" · {run.kind} · ", (run.status, style),
                                   (f" · {run.config.get('examples', '?')} examples · from {run.config.get('data_source', '')}", "dim")))
        bar.update(total=total or None, progress=step)
        per_step = speed(self.metrics)
        eta = last.get("eta_s") if run.status == "running" else None
        parts = [f"step {step}/{total or '?'}"]
        if per_step:
            parts.append(f"{per_step:.1f} s/step")
        if eta is not None:
            parts.append(f"ETA {format_seconds(eta)}")
        if "loss" in last:
            parts.append(f"loss {last['loss']:.4f}")
        self.query_one("#run-speed", Static).update(" · ".join(parts))
        if run.status != self._shown_status:
            self._shown_status = run.status
            error = run.folder / "error.txt"
            if run.status != "running" and error.exists():
                self.set_status(f"✗ {run.id} {run.status}: {error.read_text().strip()}", "bold red")
            elif run.status == "completed":
                self.set_status(f"{run.id} completed: its adapter is in the run folder; F7 then l loads it for scoring",
                                "green")
            elif run.status == "running":
                self.set_status(f"following {run.id}; ctrl+t stops it (a checkpoint is saved first)")
            else:
                self.set_status(f"{run.id} {run.status}; ctrl+g resumes it from its last checkpoint", "yellow")

    def _draw(self) -> None:
        steps = [m["step"] for m in self.metrics]
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
        kind = self.run.kind if self.run is not None else "dpo"
        if kind == "sft":
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
        self.points = len(steps)

    # --- actions ---------------------------------------------------------------------------------

    def overrides(self) -> dict:
        defaults = training_defaults()
        values = {}
        for key in FORM_KEYS:
            if key not in defaults:
                continue
            raw = self.query_one(f"#set-{key}", Input).value.strip()
            try:
                values[key] = int(raw) if isinstance(defaults[key], int) else float(raw)
            except ValueError:
                raise IpoError(f"{key}: {raw!r} is not a number") from None
        return values

    @on(Button.Pressed, "#train-start")
    def action_start_run(self) -> None:
        module = runner()
        if module is None:
            self.error("the training runner is not installed", "training")
            return
        if self.starting:
            return
        if self.run is not None and self.run.status == "running":
            self.error(f"{self.run.id} is running; stop it first (ctrl+t)", "training")
            return
        try:
            overrides = self.overrides()
        except IpoError as exc:
            self.error(str(exc), "training")
            return
        kind = str(self.query_one("#train-kind", Select).value)
        pairs = self.query_one("#train-pairs", Input).value.strip()
        model = self.query_one("#train-model", Input).value.strip() or None
        self.starting = True
        self.query_one("#train-start", Button).disabled = True
        self.set_status("preparing the run (the first time, the model is converted into a checkpoint)…", "yellow")
        self.start_worker(kind, pairs, model, overrides, self.app.store.path)

    @work(thread=True, exclusive=True, group="start", exit_on_error=False)
    def start_worker(self, kind: str, pairs: str, model: str | None, overrides: dict, store_path) -> None:
        from ipo_tui.workspace.store import Store

        module = runner()
        store = Store(store_path)  # this thread's own connection (sqlite3 connections stay in their thread)
        try:
            run = module.start(kind, pairs, model, overrides, store)
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
        self.set_status(f"started {message.run.id}: the trainer is loading (the plots fill as it logs)", "green")
        self.show(message.run)

    def action_stop_run(self) -> None:
        module = runner()
        if module is None or self.run is None:
            return
        try:
            module.stop(self.run.id, self.app.store)
        except (IpoError, OSError) as exc:
            self.error(str(exc), "stop")
            return
        self.set_status(f"asked {self.run.id} to save a checkpoint and stop", "yellow")

    def action_resume_run(self) -> None:
        module = runner()
        if module is None or self.run is None:
            return
        try:
            run = module.resume(self.run.id, self.app.store)
        except (IpoError, OSError) as exc:
            self.error(str(exc), "resume")
            return
        self.set_status(f"resumed {run.id} from its last checkpoint", "green")
        self.show(run)
