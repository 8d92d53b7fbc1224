"""What every command group shares: the consoles, the common options with their ranges, progress on
stderr, the "–" of a missing value, and opening a backend, a judge or the workspace. Command modules
import this one; nothing here imports them."""

from __future__ import annotations

import os
import re
import threading
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import typer
from rich.console import Console, ConsoleDimensions
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ipo_tui import stopping
from ipo_tui.errors import IpoError, Stopped

NATURAL_WIDTH = 10_000  # wider than any table: where nothing wraps, each takes its own width


class Stream(Console):
    """A console that prints tables at their natural width where its stream is not a terminal (a
    pipe, a file): Rich would cut them to the terminal's width, or to 80 columns, though nothing
    wraps there and a script reads the cells. An explicit COLUMNS still sets the width. Messages
    stay one line either way (`soft_wrap`). Nothing printed here may fill the width (a rule)."""

    @property
    def size(self) -> ConsoleDimensions:
        size = super().size
        if self.is_terminal or os.environ.get("COLUMNS", "").isdigit():
            return size
        return ConsoleDimensions(NATURAL_WIDTH, size.height)


out = Stream(soft_wrap=True)  # results
err = Stream(stderr=True, soft_wrap=True)  # progress, notes, warnings, errors

BackendOpt = typer.Option("auto", "--backend", "-b", help="hf, llamacpp, server, or auto (server with --base-url, llamacpp for GGUF files, else hf).")
ModelOpt = typer.Option(None, "--model", "-m", help="GGUF file, HF folder, HF id or registered name; default: the embedded SmolLM2-135M-Instruct.")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:N or auto (default: auto, where hf takes cuda when torch sees a GPU and llamacpp the CPU).")
DtypeOpt = typer.Option(None, "--dtype", help="hf: fp32, bf16 or fp16 (default: bf16 on a GPU that computes it, fp32 on CPU).")
# What the judge needs at least: a template (up to ~80 tokens in a chat format), 16 tokens of the
# instruction and the reply's last 32 (judge/scoring.py cuts to those, never below).
MIN_CTX = 128
SEED_MAX = 2**31 - 1  # backends.base.SEED_LIMIT - 1 (numpy stays out of `ipo --help`); a test keeps them equal
TEMPERATURE_MAX = 2.0  # the OpenAI API's bound, which servers enforce; beyond it a model samples noise
CtxOpt = typer.Option(None, "--ctx", min=MIN_CTX, help="Context length in tokens (default: the model's, at most 4096).")
ThreadsOpt = typer.Option(None, "--threads", min=1, help="CPU threads (default: all cores).")
WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace SQLite file (default: workspace.sqlite in the user data dir).")
PromptSetOpt = typer.Option(..., "--prompts", help="Name of an imported prompt set.")
LimitOpt = typer.Option(None, "--limit", min=1, help="Only the first N prompts of the set.")
BaseUrlOpt = typer.Option(None, "--base-url", help="An OpenAI-compatible server that returns logprobs (vLLM, llama.cpp's server), e.g. http://127.0.0.1:8000/v1; implies --backend server. Key: $IPO_API_KEY or $OPENAI_API_KEY.")
ConcurrencyOpt = typer.Option(4, "--concurrency", min=1, help="server: requests in flight at most.")
AdapterOpt = typer.Option(None, "--adapter", help="A trained LoRA adapter folder (e.g. runs/dpo-001/adapter) on top of the model.")
PrecisionOpt = typer.Option("auto", "--score-precision", help="llamacpp: native (the file's quantized kernels), f32 (a full-precision copy), or auto (f32 for quantized models up to 400M parameters).")
JudgeModeOpt = typer.Option(None, "--judge-mode", help="pointwise (a score for each reply) or pairwise (A or B, both orders; pair-only uses). Default: the config's, else pointwise.")
RouterOpt = typer.Option(None, "--router", help="keyword or model (the model's own next-token choice among the categories). Default: the config's, else keyword.")
CalibrateOpt = typer.Option(None, "--calibrate/--no-calibrate", help="Subtract a content-free reply's score, so that it scores 0 (p'yes 0.5): rankings stay, thresholds such as --min-margin mean the same across prompts. Default: the config's, else off.")
PlainOpt = typer.Option(False, "--judge-plain", help="The paper's recipe: each category's own template alone, ignoring the settings saved for this model.")
SampleN = typer.Option(4, "-n", min=1, help="Candidates per prompt.")
TemperatureOpt = typer.Option(0.8, "--temperature", min=0.0, max=TEMPERATURE_MAX, help="Sampling temperature (0: greedy).")
TopPOpt = typer.Option(0.95, "--top-p", min=0.0, max=1.0, help="Nucleus sampling: draw from the likeliest tokens holding this much probability.")
MaxTokensOpt = typer.Option(256, "--max-tokens", min=1, help="Tokens per answer at most.")
SeedOpt = typer.Option(0, "--seed", min=0, max=SEED_MAX, help="Sampling seed.")
MinMarginOpt = typer.Option(0.0, "--min-margin", min=0.0, help="Drop pairs whose score margin (chosen's minus rejected's, in log-odds) is below this.")


def open_backend(backend: str, model: str | None, device=None, dtype=None, ctx=None, threads=None,
                 score_precision: str = "auto", adapter: str | None = None, base_url: str | None = None,
                 concurrency: int = 4):
    """Resolve the model, pick the backend, load it with a status line on stderr."""
    from ipo_tui import backends
    from ipo_tui.backends import weights

    if base_url and backend not in ("auto", "server"):
        raise IpoError(f"--base-url goes with --backend server, not {backend}")
    if backend == "server" or (backend == "auto" and base_url):
        ref = weights.ModelRef("hub", model, model) if model else None  # a name the server lists
        with err.status(f"connecting to {base_url or 'the server'}") as status:
            return with_notes(backends.load("server", ref, base_url=base_url, concurrency=concurrency, device=device,
                                            dtype=dtype, n_ctx=ctx, threads=threads, adapter=adapter,
                                            on_status=lambda msg: status.update(msg)))
    ref = weights.resolve(model)
    name = backends.choose(backend, ref)
    options = {"score_precision": score_precision} if name == "llamacpp" else {}
    if adapter:
        options["adapter"] = adapter
    with err.status(f"loading {ref.name} ({name})") as status:
        loaded = backends.load(name, ref, device=device, dtype=dtype, n_ctx=ctx, threads=threads,
                               on_status=lambda msg: status.update(msg), **options)
    weights.remember(ref)
    return with_notes(loaded)


def with_notes(engine):
    """The engine's notes (a prompt cut to fit the context) as the CLI's note lines on stderr."""
    engine.on_note = lambda note: err.print(f"[yellow]note:[/] {note}", highlight=False)
    return engine


def open_judge(backend: str, model: str | None, device=None, dtype=None, ctx=None, threads=None,
               score_precision: str = "auto", config: dict | None = None, adapter: str | None = None,
               base_url: str | None = None, concurrency: int = 4, flags: dict | None = None):
    """A Judge on a freshly loaded backend, with the user's templates and settings (those saved for
    this model included), and a command's --judge-* `flags` on top."""
    from ipo_tui.judge.scoring import configured_judge

    engine = open_backend(backend, model, device, dtype, ctx, threads, score_precision, adapter, base_url, concurrency)
    return configured_judge(engine, flags, config)


def open_store(workspace: Path | None):
    from ipo_tui.workspace.store import Store

    return Store(workspace)


PLAIN_EVERY = 5.0  # seconds between progress lines where stderr is not a terminal
# Seconds of steps the time left is read from: the whole phase. Rich's 30 forget every step slower
# than that (a prompt's samples on a CPU), so no estimate shows, or a burst of quick steps alone
# decides it.
PACE_WINDOW = 24 * 3600.0


def progress_bar(label: str, *columns, **fields):
    """A progress display on stderr and the (done, total) callback that moves it: on a terminal, a
    rich bar (description, bar, count, `columns`, elapsed, remaining); elsewhere (a log, a pipe),
    `PlainProgress`'s lines. `fields` are the task's own, for the columns to show."""
    kind = Progress if err.is_terminal else PlainProgress
    bar = kind(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *columns, TimeElapsedColumn(),
               TimeRemainingColumn(), console=err, speed_estimate_period=PACE_WINDOW)
    task = bar.add_task(label, total=None, **fields)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


@contextmanager
def says_when_stopped(what: str, kept: str = "what was finished is stored; run the same command to continue"):
    """A stop signal inside becomes one line: `what` stopped (the signal), and what is `kept`."""
    try:
        yield
    except KeyboardInterrupt:
        raise Stopped(f"{what} stopped ({stopping.REQUEST.name}); {kept}") from None


@contextmanager
def status(message: str):
    """A step that reports no progress of its own: a spinner on a terminal, else `PlainProgress`'s lines."""
    if err.is_terminal:
        with err.status(message):
            yield
        return
    with progress_bar(message)[0]:
        yield


class PlainProgress(Progress):
    """Progress where stderr is not a terminal (a log, a pipe), which would keep every redraw: a
    plain line per task every PLAIN_EVERY seconds while it runs (never one per item) and one when it
    ends, so that a long phase is told from a hang. A phase that fails prints no last line: the
    error's one line says what happened."""

    def __init__(self, *columns, **options) -> None:
        super().__init__(*columns, disable=True, **options)
        self._ended = threading.Event()
        self._ticker = threading.Thread(target=self._tick, daemon=True)

    def start(self) -> None:
        self._ticker.start()

    def stop(self) -> None:
        self._ended.set()
        self._ticker.join()

    def __exit__(self, exc_type, exc, tb) -> None:
        self.stop()
        if exc_type is None:
            self._say()

    def _tick(self) -> None:
        while not self._ended.wait(PLAIN_EVERY):
            self._say()

    def _say(self) -> None:
        for task in self.tasks:
            self.console.print(plain_line(task), markup=False, highlight=False)


def plain_line(task: Task) -> str:
    """A task's state in words, for a log: label, done/total, its fields, elapsed, what remains."""
    head = task.description
    if task.total is not None:
        head += f" {task.completed:.0f}/{task.total:.0f}"
    elif task.completed:
        head += f" {task.completed:.0f}"
    parts = [head, *(str(value) for value in task.fields.values()),
             f"{timedelta(seconds=int(task.elapsed or 0))} elapsed"]
    if task.time_remaining is not None and not task.finished:
        parts.append(f"about {timedelta(seconds=int(task.time_remaining))} left")
    return ", ".join(parts)


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """A count with its noun in the right number: "1 pair", "2 pairs" (`plural` where "s" will not do)."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def readable_metavars(command) -> None:
    """Option help without Python's type names, in `command` and every command under it: a flag
    shows no value (typer writes <bool>, as if it took one), a repeatable option the value it takes
    each time (<str>, not <list[str]>)."""
    import typer.core

    context = typer.Context(command)
    for param in [*command.params, command.get_help_option(context)]:
        if not isinstance(param, typer.core.TyperOption) or param.metavar is not None:
            continue
        if param.is_flag:
            param.metavar = ""
        elif param.multiple:
            param.metavar = re.sub(r"list\[(.*)\]", r"\1", param.display_type(context))
    for sub in getattr(command, "commands", {}).values():
        readable_metavars(sub)


def cell(value, spec: str = "") -> str:
    """A value as a table shows it, formatted by `spec`; "–" where there is none (NULL, empty), as
    JSON says null: a pair edited with no model loaded has no scores and no category."""
    return "–" if value is None or value == "" else format(value, spec)


def sampling_settings(n: int, temperature: float, top_p: float, max_tokens: int, seed: int):
    """Sampling settings from options whose ranges the options themselves check (imported here, so
    that `ipo --help` loads no backend)."""
    from ipo_tui.backends import Sampling

    return Sampling(n, temperature, top_p, max_tokens, seed)


def judgement_table(instruction: str, ranked) -> Table:
    """Ranked judgements: p'yes where each score is one template's own log-odds, else the score, and
    each one's distance from the best, in log-odds (what orders them)."""
    from ipo_tui.judge.scoring import margin, score_label, shown

    label = score_label(j.probability for j in ranked)
    best = ranked[0].score if ranked else None
    title = instruction if len(instruction) <= 80 else instruction[:77] + "..."
    table = Table(title=title, title_justify="left")
    for col, justify in (("rank", "right"), (label, "right"), ("Δ log-odds", "right"), ("mass", "right"),
                         ("category", "left"), ("template", "left"), ("response", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "response", min_width=len(col))
    for rank, j in enumerate(ranked, 1):
        mass = f"[red]{j.mass:.3f}[/]" if j.low_mass else f"{j.mass:.3f}"
        preview = " ".join(j.response.split())
        table.add_row(str(rank), cell(shown(j.score, label == "p'yes")), cell(shown(margin(j.score, best), False)),
                      mass, j.category, j.template, preview[:60] + ("..." if len(preview) > 60 else ""))
    return table
