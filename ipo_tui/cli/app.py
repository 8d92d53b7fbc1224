"""The `ipo` command line, assembled in one place: every command group mounted here. The Python API
(the core packages) comes first; each command parses, calls it, and renders with rich."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer
from typer.core import TyperGroup

from ipo_tui import __version__, stopping
from ipo_tui.cli import bench, data, evaluation, export, scoring, training
from ipo_tui.cli.common import ModelOpt, WorkspaceOpt, err, out, readable_metavars
from ipo_tui.errors import IpoError, Stopped

APP_BACKENDS = ("hf", "llamacpp", "auto")  # a server is chosen in the app, on the Model screen, with its URL


class Commands(TyperGroup):
    """`ipo` and every command under it, with option help a person reads (`readable_metavars`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        readable_metavars(self)


app = typer.Typer(
    help="Implicit Preference Optimization: a model judges its own answers by p(Yes) and learns from them. "
         "With no command, opens the app.",
    cls=Commands, pretty_exceptions_enable=False, add_completion=False,
)


def _print_version(asked: bool) -> None:
    if asked:
        out.print(f"ipo {__version__}", highlight=False)
        raise typer.Exit()


@app.callback(invoke_without_command=True)
def _default(ctx: typer.Context, verbose: bool = typer.Option(
        False, "--verbose", help="Let llama.cpp's and transformers' own logs through (they are kept quiet otherwise)."),
        version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                     help="Print ipo's version and exit.")) -> None:
    from ipo_tui import verbosity

    if verbose:
        verbosity.set_verbose(True)
    if ctx.invoked_subcommand is None:
        tui(model=None, backend="auto", workspace=None, start="lab")


@app.command()
def tui(
    model: str | None = ModelOpt,
    backend: str = typer.Option("auto", "--backend", "-b", help="hf, llamacpp, or auto (llamacpp for GGUF files, else hf)."),
    workspace: Path | None = WorkspaceOpt,
    start: str = typer.Option("lab", "--start", help="First screen: model, lab, pairs, eval, train or runs."),
) -> None:
    """Open the app: live scoring, pair curation, training dashboard, evaluation, runs."""
    from ipo_tui import backends
    from ipo_tui.backends import weights
    from ipo_tui.tui.app import IpoApp, run

    if start not in IpoApp.MODES:
        raise IpoError(f"--start {start}: choose one of {', '.join(IpoApp.MODES)}")
    if backend not in APP_BACKENDS:
        raise IpoError(f"--backend {backend}: choose one of {', '.join(APP_BACKENDS)} "
                       "(the app connects to a server from its Model screen, F2)")
    # checked by the rule every command follows before the app opens (a model that cannot load is
    # refused here in one line); the app keeps the choice itself, so that "auto" still holds for
    # a model picked later on its Model screen
    backends.choose(backend, weights.resolve(model))
    run(workspace=workspace, model=model, backend=backend, start=start)


app.command()(scoring.score)
app.add_typer(scoring.models_app, name="models")
app.add_typer(data.prompts_app, name="prompts")
app.command()(data.generate)
app.command()(data.judge)
app.add_typer(data.pairs_app, name="pairs")
app.command("eval")(evaluation.eval_pairs)
app.command()(evaluation.bestofn)
app.add_typer(bench.app, name="bench")
app.add_typer(training.train_app, name="train")
app.command("runs")(training.runs)
app.command("loop")(training.loop)
app.add_typer(export.app, name="export")


def _say_stopped(line: str) -> None:
    """The stop's one line, where a terminal is left to read it: after a hangup it is gone, and the
    exit status (128 + the signal) says it all."""
    with contextlib.suppress(OSError):
        err.print(line, highlight=False)


def main() -> None:
    stop = stopping.REQUEST.install()
    try:
        stopping.stop_with_parent()
        app(prog_name="ipo")  # the name the user typed, not `python -m ipo_tui` that the supervisor runs
    except IpoError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    except Stopped as exc:
        stop.quiet()  # from here a later signal must not raise where nothing can catch it
        _say_stopped(str(exc))
    except (KeyboardInterrupt, SystemExit) as exc:  # typer turns a KeyboardInterrupt into exit 130
        stop.quiet()
        if stop.signum is None and not isinstance(exc, KeyboardInterrupt):
            raise
        command = next((a for a in sys.argv[1:] if not a.startswith("-")), "")
        _say_stopped(f"ipo {command}".strip() + f" stopped ({stop.name})")
    finally:
        stop.quiet()
    sys.exit(stop.exit_status)
