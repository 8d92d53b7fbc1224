"""The Textual face of ipo: model picker, score lab, pairs, evaluation, training and runs.

Textual is imported here, in `screens/` and in `widgets/` only; everything they call is the
headless core. Long work (loading, scoring, generating, evaluating) runs in thread workers that
post messages back; the one backend is shared by every screen and guarded by `engine_lock`, so
a scoring worker and a generation worker never drive the engine at the same time.

An exception nothing caught ends the app (Textual's rule): its traceback goes to the crash log,
the terminal gets one line pointing there, and the process exits with status 1.

    python -m ipo_tui.tui.app [--model PATH] [--backend hf|llamacpp|auto] [--workspace FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
import traceback
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.signal import Signal
from textual.worker import WorkerFailed

from ipo_tui import backends, stopping
from ipo_tui.errors import IpoError
from ipo_tui.tui.screens.base import one_line
from ipo_tui.tui.screens.evaluation import EvalScreen
from ipo_tui.tui.screens.help import GLOBAL, HelpScreen
from ipo_tui.tui.screens.lab import LabScreen
from ipo_tui.tui.screens.model import ModelScreen
from ipo_tui.tui.screens.pairs import PairsScreen
from ipo_tui.tui.screens.runs import RunsScreen
from ipo_tui.tui.screens.train import TrainScreen

SCREEN_TITLES = {"model": "Model", "lab": "Score lab", "pairs": "Pairs", "eval": "Evaluation",
                 "train": "Training", "runs": "Runs"}


class EngineLoaded(Message):
    def __init__(self, engine, judge, ref) -> None:
        super().__init__()
        self.engine, self.judge, self.ref = engine, judge, ref


class EngineFailed(Message):
    def __init__(self, error: str) -> None:
        super().__init__()
        self.error = error


class EngineStatus(Message):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text


class IpoApp(App):
    """Implicit Preference Optimization in a terminal."""

    CSS_PATH = "app.tcss"
    TITLE = "ipo"
    MODES = {"model": ModelScreen, "lab": LabScreen, "pairs": PairsScreen, "eval": EvalScreen,
             "train": TrainScreen, "runs": RunsScreen}
    DEFAULT_MODE = "lab"
    # screens below 100 columns or 32 rows get the class -narrow or -short: the CSS fits them in
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("f1", "help", "Help", key_display="F1", priority=True),
        Binding("question_mark", "help", "Help", show=False),
        Binding("f2", "goto('model')", "Model", show=False, priority=True),
        Binding("f3", "goto('lab')", "Score lab", show=False, priority=True),
        Binding("f4", "goto('pairs')", "Pairs", show=False, priority=True),
        Binding("f5", "goto('eval')", "Evaluation", show=False, priority=True),
        Binding("f6", "goto('train')", "Training", show=False, priority=True),
        Binding("f7", "goto('runs')", "Runs", show=False, priority=True),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, workspace: Path | None = None, model: str | None = None, backend: str | None = None, *,
                 engine=None, autoload: bool = True, start: str = "lab", eval_file: str | None = None,
                 browse_root: Path | None = None) -> None:
        """`engine` is an already loaded backend to use (tests share one; the app never closes it);
        otherwise `model` (default: the embedded one) is loaded on `backend` at start when
        `autoload`. `start` names the first screen."""
        # the first screen is the app's first mode, read by App.__init__: a switch after mounting
        # sometimes left the terminal blank until the next screen change
        self.DEFAULT_MODE = start if start in self.MODES else "lab"
        super().__init__()
        from ipo_tui.config import load_config

        self.startup_errors: list[str] = []
        try:
            self.config = load_config()
        except IpoError as exc:
            self.config, _ = {}, self.startup_errors.append(str(exc))
        self.workspace = Path(workspace) if workspace else None
        self.model_spec = model
        self.backend_name = backend or "auto"
        backends.choose(self.backend_name, None)  # an unknown name is refused here, in one line
        self.eval_file = eval_file
        self.browse_root = browse_root
        self.autoload = autoload and engine is None
        self.engine = engine
        self.judge = None
        self.engine_ref = getattr(engine, "ref", None)
        self.engine_state = "ready" if engine is not None else "none"
        self.engine_message = ""
        self._owns_engine = False
        self.engine_lock = threading.RLock()
        self._store = None
        self.crash: str | None = None  # the line that says why the app ended, when an exception did it
        self._crash_logged = False
        self.engine_changed_signal: Signal = Signal(self, "engine-changed")
        self.engine_status_signal: Signal = Signal(self, "engine-status")
        if engine is not None:
            self.judge = self._make_judge(engine)

    # --- shared state -------------------------------------------------------------------------

    @property
    def store(self):
        """The workspace store, opened on first use (from the UI thread: sqlite3 connections stay
        in the thread that made them, so workers never touch it)."""
        if self._store is None:
            from ipo_tui.workspace.store import Store

            self._store = Store(self.workspace)
        return self._store

    def _make_judge(self, engine):
        from ipo_tui.judge.scoring import configured_judge

        return configured_judge(engine, config=self.config)

    def engine_label(self) -> str:
        if self.engine_state == "loading":
            return f"loading… {self.engine_message}"[:56]
        if self.engine is None:
            return "no model loaded (F2)" if self.engine_state != "failed" else "model failed to load (F2)"
        caps = self.engine.capabilities
        name = self.engine.ref.name.replace(" (embedded)", "")
        adapter = " + adapter" if getattr(self.engine, "adapter", "") else ""
        return f"{name}{adapter} · {caps.backend} {caps.device} {caps.dtype}"

    def template_for(self, category: str):
        """The template that judges `category`: the loaded judge's, or the config's before a load."""
        if self.judge is not None:
            return self.judge.template_for(category)
        from ipo_tui.judge.settings import load_settings
        from ipo_tui.judge.templates import templates

        known = templates(self.config)
        name = load_settings(self.config).for_category(category).templates[0]
        if name not in known:
            raise IpoError(f"unknown category or template {name!r}")
        return known[name]

    def setting_for(self, category: str) -> str:
        """How `category` is judged (templates, baseline, length), in short."""
        if self.judge is not None:
            return self.judge.setting_for(category).describe()
        from ipo_tui.judge.settings import load_settings

        return load_settings(self.config).for_category(category).describe()

    # --- lifecycle ----------------------------------------------------------------------------

    def on_mount(self) -> None:
        self._close_on_stop_signals()
        for error in self.startup_errors:
            self.notify(error, title="config", severity="error", timeout=10)
        if self.autoload:
            try:
                from ipo_tui.backends import weights

                ref = weights.resolve(self.model_spec)
            except IpoError as exc:
                self._set_engine_state("failed", str(exc))
                self.notify(str(exc), title="model", severity="error", timeout=10)
                return
            self.load_engine(self.backend_name, ref, {})

    def on_unmount(self) -> None:
        if self._owns_engine and self.engine is not None:
            self.engine.close()
        if self._store is not None:
            self._store.close()

    def _handle_exception(self, error: Exception) -> None:
        """Textual's one door for an exception nothing caught (a handler, a timer, a worker): the app
        ends with status 1, and a Pilot test re-raises it. The traceback goes to the crash log and
        `run` prints one line; Textual's own traceback (with its locals) is printed only where the
        log could not be written."""
        if self.crash is None:  # the first one is the cause; later ones follow from it
            self.crash, self._crash_logged = report_crash(error.error if isinstance(error, WorkerFailed) else error)
        super()._handle_exception(error)
        if self._crash_logged:  # what Textual would print on exit: the log has it
            self._exit_renderables.clear()

    def _set_engine_state(self, state: str, message: str = "") -> None:
        self.engine_state, self.engine_message = state, message
        self.engine_status_signal.publish(state)

    # --- loading a model ------------------------------------------------------------------------

    def load_engine(self, backend: str, ref, options: dict) -> None:
        """Load `ref` on `backend` in a worker; the old engine stays in use until the new one is ready.
        For the server backend `ref` names the served model (None: the one it lists)."""
        backend = backends.choose(backend, ref)  # the rule every command follows
        self._set_engine_state("loading", f"{ref.name if ref else 'the served model'} ({backend})")
        self._load_worker(backend, ref, dict(options))

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load_worker(self, backend: str, ref, options: dict) -> None:
        from ipo_tui.backends import weights

        def status(text: str) -> None:
            self.post_message(EngineStatus(str(text)))

        options = {k: v for k, v in options.items() if v not in (None, "", "auto") or k == "score_precision"}
        if backend != "llamacpp":
            options.pop("score_precision", None)
        try:
            engine = backends.load(backend, ref, on_status=status, **options)
            judge = self._make_judge(engine)
        except IpoError as exc:
            self.post_message(EngineFailed(str(exc)))
            return
        except TypeError as exc:  # an option this backend does not take (e.g. adapter)
            self.post_message(EngineFailed(f"the {backend} backend cannot do that: {exc}"))
            return
        except Exception as exc:  # never let a loader's surprise crash the app
            self.post_message(EngineFailed(f"{type(exc).__name__}: {exc}"))
            return
        if backend == "server":
            ref = engine.ref  # the model the server said it serves
        with self.engine_lock:  # wait for any scoring in flight on the old engine
            old, owned = self.engine, self._owns_engine
            self.engine, self.judge, self.engine_ref, self._owns_engine = engine, judge, ref, True
        if old is not None and owned:
            with contextlib.suppress(Exception):
                old.close()
        try:
            if backend != "server":  # the recent list holds local models
                weights.remember(ref)
        except (OSError, IpoError):
            pass
        self.post_message(EngineLoaded(engine, judge, ref))

    def on_engine_status(self, message: EngineStatus) -> None:
        if self.engine_state == "loading":
            self._set_engine_state("loading", message.text)

    def on_engine_loaded(self, message: EngineLoaded) -> None:
        self._set_engine_state("ready")
        self.engine_changed_signal.publish(message.engine)
        caps = message.engine.capabilities
        self.notify(f"{message.ref.name} on {caps.backend} ({caps.device}, {caps.dtype})", title="model loaded")

    def on_engine_failed(self, message: EngineFailed) -> None:
        self._set_engine_state("failed" if self.engine is None else "ready", message.error)
        self.engine_changed_signal.publish(self.engine)
        self.notify(message.error, title="model not loaded", severity="error", timeout=12)

    # --- actions ----------------------------------------------------------------------------------

    def action_goto(self, mode: str) -> None:
        if mode in self.MODES and isinstance(self.screen, tuple(self.MODES.values())):
            self.switch_mode(mode)
        elif mode in self.MODES:  # a dialog is open: close it first
            self.pop_screen()
            self.switch_mode(mode)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            self.pop_screen()
            return
        self.push_screen(HelpScreen(getattr(self.screen, "HELP", ""), SCREEN_TITLES.get(self.current_mode, "")))

    def run_on(self, mode: str, action: str) -> None:
        """Switch to a screen, then run one of its actions (for the command palette)."""
        async def go() -> None:
            await self.switch_mode(mode)
            await self.screen.run_action(action)

        self.call_later(go)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for mode, title in SCREEN_TITLES.items():
            yield SystemCommand(f"Go to {title}", f"Show the {title} screen", lambda m=mode: self.action_goto(m))
        commands = [
            ("Load model", "Load the model chosen on the Model screen", "model", "load"),
            ("Generate candidates", "Samples from the model into the empty boxes (typed text stays)", "lab", "generate"),
            ("Save pair", "Store the best and worst candidates as an accepted pair (again: update it)", "lab", "save_pair"),
            ("Reset templates", "Back to the loaded judge's templates in the score lab", "lab", "reset_templates"),
            ("Add candidate", "Add a candidate editor to the score lab", "lab", "add_candidate"),
            ("Export pairs", "Write the pairs as TRL JSONL", "pairs", "export"),
            ("Bulk-accept pairs", "Accept the shown proposed pairs whose margin (log-odds) reaches the bulk margin", "pairs", "bulk_accept"),
            ("Run evaluation", "Evaluate the judge on a RewardBench-format file", "eval", "run_eval"),
            ("Start training run", "Launch a training run with the form's settings", "train", "start_run"),
            ("Refresh runs", "Reread the runs from the workspace", "runs", "refresh"),
        ]
        for title, help_text, mode, action in commands:
            yield SystemCommand(title, help_text, lambda m=mode, a=action: self.run_on(m, a))
        yield SystemCommand("Help", "Keys of every screen", self.action_help)


    def _close_on_stop_signals(self) -> None:
        """A kill (TERM) or a closed terminal (HUP) closes the app as a stop signal ends every command:
        otherwise the app ran on, its terminal gone, spinning on a dead input. The signal is kept for
        the exit status (128 + its number)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, self._stopped_by, signum)

    def _stopped_by(self, signum: int) -> None:
        stopping.REQUEST.record(signum)
        self.exit()


def keys_markdown() -> str:
    """Every screen's keys as F1 shows them, for docs/app.md (a test keeps the two the same)."""
    screens = "".join(f"\n## {title} (F{number})\n\n{IpoApp.MODES[mode].HELP}"
                      for number, (mode, title) in enumerate(SCREEN_TITLES.items(), start=2))
    return GLOBAL + screens


def report_crash(error: BaseException) -> tuple[str, bool]:
    """Append `error`'s traceback to the crash log; the line to print, and whether it was written."""
    from ipo_tui.supervisor import crash_log

    what = one_line(f"{type(error).__name__}: {error}", 160)
    path = crash_log()
    try:
        with path.open("a", encoding="utf-8") as log:
            log.write(f"--- {datetime.now():%Y-%m-%d %H:%M:%S} the ipo app stopped on an exception\n")
            log.write("".join(traceback.format_exception(error)))
    except OSError as exc:
        return f"ipo: the app stopped on {what} (the crash log could not be written: {exc})", False
    return f"ipo: the app stopped on {what}; traceback in {path}", True


def run(**kwargs) -> None:
    """Start the app: IpoApp(workspace=None, model=None, backend=None). When an exception ended it,
    say so in one line (the traceback is in the crash log) and exit with status 1."""
    app = IpoApp(**kwargs)
    app.run()
    if app.crash is not None:
        print(app.crash, file=sys.stderr)
        raise SystemExit(1)
    stopping.REQUEST.check()  # closed by a stop signal: `ipo tui stopped (SIGTERM)`, status 128 + n


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m ipo_tui.tui.app", description=IpoApp.__doc__)
    parser.add_argument("--model", "-m", help="GGUF file, HF folder or registered name (default: embedded)")
    parser.add_argument("--backend", "-b", choices=("hf", "llamacpp", "auto"),
                        help="default: auto (llamacpp for a GGUF file, else hf)")
    parser.add_argument("--workspace", "-w", type=Path, help="workspace SQLite file")
    parser.add_argument("--start", default="lab", choices=tuple(IpoApp.MODES), help="first screen")
    parser.add_argument("--no-load", action="store_true", help="do not load the model at start")
    args = parser.parse_args(argv)
    run(workspace=args.workspace, model=args.model, backend=args.backend, start=args.start, autoload=not args.no_load)


if __name__ == "__main__":
    main()
