"""The `ipo` command: parses, calls the core, renders with rich. Heavy imports stay inside commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ipo_tui.errors import IpoError

app = typer.Typer(
    help="Implicit Preference Optimization: a model judges its own answers by p(Yes) and learns from them.",
    no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
)
models_app = typer.Typer(help="The models ipo knows: the embedded default, registered and recent ones.",
                         invoke_without_command=True, pretty_exceptions_enable=False)
app.add_typer(models_app, name="models")

out = Console()
err = Console(stderr=True)

BackendOpt = typer.Option("auto", "--backend", "-b", help="hf, llamacpp, or auto (llamacpp for GGUF files, else hf).")
ModelOpt = typer.Option(None, "--model", "-m", help="GGUF file, HF folder, HF id or registered name; default: the embedded SmolLM2-135M-Instruct.")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda when available).")
DtypeOpt = typer.Option(None, "--dtype", help="hf: fp32, bf16 or fp16 (default: bf16 on a GPU that computes it, fp32 on CPU).")
CtxOpt = typer.Option(None, "--ctx", help="Context length in tokens (default: the model's, at most 4096).")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads (default: all cores).")
PrecisionOpt = typer.Option("auto", "--score-precision", help="llamacpp: native (the file's quantized kernels), f32 (a full-precision copy), or auto (f32 for files up to 400 MB).")


def open_backend(backend: str, model: str | None, device=None, dtype=None, ctx=None, threads=None,
                 score_precision: str = "auto"):
    """Resolve the model, pick the backend, load it with a status line on stderr."""
    from ipo_tui import backends, models

    ref = models.resolve(model)
    name = backend if backend != "auto" else ("llamacpp" if ref.kind == "gguf" else "hf")
    options = {"score_precision": score_precision} if name == "llamacpp" else {}
    with err.status(f"loading {ref.name} ({name})") as status:
        loaded = backends.load(name, ref, device=device, dtype=dtype, n_ctx=ctx, threads=threads,
                               on_status=lambda msg: status.update(msg), **options)
    models.remember(ref)
    return loaded


@app.command()
def score(
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="The instruction the candidates answer."),
    response: list[str] = typer.Option([], "--response", "-r", help="A candidate response; repeat for several."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="JSONL of candidates: {\"response\": ..., \"prompt\"?: ...} a line."),
    category: Optional[str] = typer.Option(None, "--category", "-c", help="chat, code, math, safety, generic (default: routed by keywords)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per candidate instead of a table."),
    backend: str = BackendOpt, model: Optional[str] = ModelOpt, device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DtypeOpt, ctx: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    score_precision: str = PrecisionOpt,
) -> None:
    """Score candidate responses by p'yes = p(Yes) / (p(Yes) + p(No)) from one forward pass each."""
    from ipo_tui.candidates import Candidate, read_candidates
    from ipo_tui.config import load_config
    from ipo_tui.judge import Judge

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

    judge = Judge(open_backend(backend, model, device, dtype, ctx, threads, score_precision), load_config())
    groups: dict[tuple[str, str | None], list[str]] = {}
    for c in candidates:
        groups.setdefault((c.prompt, c.category or category), []).append(c.response)
    for (instruction, cat), responses in groups.items():
        judgements = judge.score(instruction, responses, cat)
        for j in judgements:
            if j.truncated:
                err.print(f"[yellow]note:[/] {j.truncated}", highlight=False)
        if any(j.low_mass for j in judgements):
            err.print(f"[yellow]warning:[/] p(Yes)+p(No) is below {judge.min_mass} for some candidates: "
                      "the model is not answering Yes/No under this template, so those scores mean little")
        ranked = sorted(judgements, key=lambda j: -j.p_yes)
        if as_json:
            for rank, j in enumerate(ranked, 1):
                print(json.dumps({"rank": rank, "prompt": instruction, **j.as_dict()}, ensure_ascii=False))
        else:
            out.print(_table(instruction, ranked))


def _table(instruction: str, ranked) -> Table:
    best = ranked[0].p_yes
    title = instruction if len(instruction) <= 80 else instruction[:77] + "..."
    table = Table(title=title, title_justify="left")
    for col, justify in (("rank", "right"), ("p'yes", "right"), ("Δ best", "right"), ("mass", "right"),
                         ("category", "left"), ("template", "left"), ("response", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "response", min_width=len(col))
    for rank, j in enumerate(ranked, 1):
        mass = f"[red]{j.mass:.3f}[/]" if j.low_mass else f"{j.mass:.3f}"
        preview = " ".join(j.response.split())
        table.add_row(str(rank), f"{j.p_yes:.3f}", f"{j.p_yes - best:+.3f}", mass, j.category, j.template,
                      preview[:60] + ("..." if len(preview) > 60 else ""))
    return table


@models_app.callback()
def models_list(ctx: typer.Context) -> None:
    """List the embedded default, registered models and recently used ones."""
    if ctx.invoked_subcommand:
        return
    from ipo_tui import models

    table = Table()
    for col in ("name", "kind", "size", "architecture", "context", "location"):
        table.add_column(col, overflow="fold")
    for ref in models.known():
        if ref.kind == "missing":
            table.add_row(ref.name, "[red]missing[/]", "", "", "", ref.location)
            continue
        i = models.info(ref)
        size = f"{i.size_bytes / 1e6:,.0f} MB" if i.size_bytes else ""
        table.add_row(ref.name, ref.kind, size, i.architecture or "", str(i.context_length or ""), ref.location)
    out.print(table)


@models_app.command("add")
def models_add(path: str = typer.Argument(..., help="GGUF file or HF model folder."),
               name: Optional[str] = typer.Option(None, "--name", help="Name to use with --model (default: the file or folder name).")) -> None:
    """Register a model under a name."""
    from ipo_tui import models

    ref = models.register(name or Path(path).name, path)
    out.print(f"registered {ref.name} -> {ref.location}")


@models_app.command("remove")
def models_remove(name: str) -> None:
    """Forget a registered model (its files stay where they are)."""
    from ipo_tui import models

    models.unregister(name)
    out.print(f"removed {name}")


def main() -> None:
    try:
        app()
    except IpoError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
