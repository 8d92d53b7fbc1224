"""What every command group shares: the consoles, the common options, and opening a backend, a
judge or the workspace. Command modules import this one; nothing here imports them."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from ipo_tui.errors import IpoError

out = Console(soft_wrap=True)  # messages stay one line when piped; tables still fit the width
err = Console(stderr=True, soft_wrap=True)

BackendOpt = typer.Option("auto", "--backend", "-b", help="hf, llamacpp, server, or auto (server with --base-url, llamacpp for GGUF files, else hf).")
ModelOpt = typer.Option(None, "--model", "-m", help="GGUF file, HF folder, HF id or registered name; default: the embedded SmolLM2-135M-Instruct.")
DeviceOpt = typer.Option(None, "--device", help="cpu, cuda, cuda:N (default: cuda when available).")
DtypeOpt = typer.Option(None, "--dtype", help="hf: fp32, bf16 or fp16 (default: bf16 on a GPU that computes it, fp32 on CPU).")
CtxOpt = typer.Option(None, "--ctx", help="Context length in tokens (default: the model's, at most 4096).")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads (default: all cores).")
WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace SQLite file (default: workspace.sqlite in the user data dir).")
PromptSetOpt = typer.Option(..., "--prompts", help="Name of an imported prompt set.")
LimitOpt = typer.Option(None, "--limit", help="Only the first N prompts of the set.")
BaseUrlOpt = typer.Option(None, "--base-url", help="An OpenAI-compatible server that returns logprobs (vLLM, llama.cpp's server), e.g. http://127.0.0.1:8000/v1; implies --backend server. Key: $IPO_API_KEY or $OPENAI_API_KEY.")
ConcurrencyOpt = typer.Option(4, "--concurrency", help="server: requests in flight at most.")
AdapterOpt = typer.Option(None, "--adapter", help="A trained LoRA adapter folder (e.g. runs/dpo-001/adapter) on top of the model.")
PrecisionOpt = typer.Option("auto", "--score-precision", help="llamacpp: native (the file's quantized kernels), f32 (a full-precision copy), or auto (f32 for quantized models up to 400M parameters).")
JudgeModeOpt = typer.Option(None, "--judge-mode", help="pointwise (p'yes of each reply) or pairwise (A or B, both orders; pair-only uses). Default: the config's, else pointwise.")
RouterOpt = typer.Option(None, "--router", help="keyword or model (the model's own next-token choice among the categories). Default: the config's, else keyword.")
CalibrateOpt = typer.Option(None, "--calibrate/--no-calibrate", help="Subtract a content-free reply's score, so that it scores p'yes 0.5: rankings stay, thresholds such as --min-margin mean the same across prompts. Default: the config's, else off.")
PlainOpt = typer.Option(False, "--judge-plain", help="The paper's recipe: each category's own template alone, ignoring the settings saved for this model.")
SampleN = typer.Option(4, "-n", help="Candidates per prompt.")
TemperatureOpt = typer.Option(0.8, "--temperature")
TopPOpt = typer.Option(0.95, "--top-p")
MaxTokensOpt = typer.Option(256, "--max-tokens")
SeedOpt = typer.Option(0, "--seed")


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
            return backends.load("server", ref, base_url=base_url, concurrency=concurrency, device=device,
                                 dtype=dtype, n_ctx=ctx, threads=threads, adapter=adapter,
                                 on_status=lambda msg: status.update(msg))
    ref = weights.resolve(model)
    name = backend if backend != "auto" else ("llamacpp" if ref.kind == "gguf" else "hf")
    options = {"score_precision": score_precision} if name == "llamacpp" else {}
    if adapter:
        options["adapter"] = adapter
    with err.status(f"loading {ref.name} ({name})") as status:
        loaded = backends.load(name, ref, device=device, dtype=dtype, n_ctx=ctx, threads=threads,
                               on_status=lambda msg: status.update(msg), **options)
    weights.remember(ref)
    return loaded


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


def progress_bar(label: str, *columns, **fields):
    """A rich progress bar on stderr (description, bar, count, `columns`, elapsed, remaining) and the
    (done, total) callback that moves it; `fields` are the task's own, for the columns to show."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), *columns, TimeElapsedColumn(),
                   TimeRemainingColumn(), console=err)
    task = bar.add_task(label, total=None, **fields)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


def sampling_settings(n: int, temperature: float, top_p: float, max_tokens: int, seed: int):
    from ipo_tui.backends import Sampling

    if n < 1 or max_tokens < 1 or not 0 < top_p <= 1 or temperature < 0:
        raise IpoError("sampling settings out of range: need -n >= 1, --max-tokens >= 1, 0 < --top-p <= 1, --temperature >= 0")
    return Sampling(n, temperature, top_p, max_tokens, seed)


def judgement_table(instruction: str, ranked) -> Table:
    best = next((j.p_yes for j in ranked if not j.missing), 0.0)
    title = instruction if len(instruction) <= 80 else instruction[:77] + "..."
    table = Table(title=title, title_justify="left")
    for col, justify in (("rank", "right"), ("p'yes", "right"), ("Δ best", "right"), ("mass", "right"),
                         ("category", "left"), ("template", "left"), ("response", "left")):
        table.add_column(col, justify=justify, no_wrap=col != "response", min_width=len(col))
    for rank, j in enumerate(ranked, 1):
        mass = f"[red]{j.mass:.3f}[/]" if j.low_mass else f"{j.mass:.3f}"
        preview = " ".join(j.response.split())
        score, delta = ("missing", "") if j.missing else (f"{j.p_yes:.3f}", f"{j.p_yes - best:+.3f}")
        table.add_row(str(rank), score, delta, mass, j.category, j.template,
                      preview[:60] + ("..." if len(preview) > 60 else ""))
    return table
