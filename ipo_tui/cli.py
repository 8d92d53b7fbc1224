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
    help="Implicit Preference Optimization: a model judges its own answers by p(Yes) and learns from them. "
         "With no command, opens the app.",
    pretty_exceptions_enable=False, add_completion=False,
)
models_app = typer.Typer(help="The models ipo knows: the embedded default, registered and recent ones.",
                         invoke_without_command=True, pretty_exceptions_enable=False)
app.add_typer(models_app, name="models")
prompts_app = typer.Typer(help="Prompt sets in the workspace.", no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(prompts_app, name="prompts")
pairs_app = typer.Typer(help="Chosen/rejected pairs: build, list, export.", no_args_is_help=True, pretty_exceptions_enable=False)
app.add_typer(pairs_app, name="pairs")

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


def open_backend(backend: str, model: str | None, device=None, dtype=None, ctx=None, threads=None,
                 score_precision: str = "auto", adapter: str | None = None, base_url: str | None = None,
                 concurrency: int = 4):
    """Resolve the model, pick the backend, load it with a status line on stderr."""
    from ipo_tui import backends, models

    if base_url and backend not in ("auto", "server"):
        raise IpoError(f"--base-url goes with --backend server, not {backend}")
    if backend == "server" or (backend == "auto" and base_url):
        ref = models.ModelRef("hub", model, model) if model else None  # a name the server lists
        with err.status(f"connecting to {base_url or 'the server'}") as status:
            return backends.load("server", ref, base_url=base_url, concurrency=concurrency, device=device,
                                 dtype=dtype, n_ctx=ctx, threads=threads, adapter=adapter,
                                 on_status=lambda msg: status.update(msg))
    ref = models.resolve(model)
    name = backend if backend != "auto" else ("llamacpp" if ref.kind == "gguf" else "hf")
    options = {"score_precision": score_precision} if name == "llamacpp" else {}
    if adapter:
        options["adapter"] = adapter
    with err.status(f"loading {ref.name} ({name})") as status:
        loaded = backends.load(name, ref, device=device, dtype=dtype, n_ctx=ctx, threads=threads,
                               on_status=lambda msg: status.update(msg), **options)
    models.remember(ref)
    return loaded


def open_judge(backend: str, model: str | None, device=None, dtype=None, ctx=None, threads=None,
               score_precision: str = "auto", config: dict | None = None, adapter: str | None = None,
               base_url: str | None = None, concurrency: int = 4):
    """A Judge on a freshly loaded backend, with the user's templates and thresholds."""
    from ipo_tui.config import load_config
    from ipo_tui.judge import Judge

    engine = open_backend(backend, model, device, dtype, ctx, threads, score_precision, adapter, base_url, concurrency)
    return Judge(engine, load_config() if config is None else config)


@app.callback(invoke_without_command=True)
def _default(ctx: typer.Context, verbose: bool = typer.Option(
        False, "--verbose", help="Let llama.cpp's and transformers' own logs through (they are kept quiet otherwise).")) -> None:
    from ipo_tui import verbosity

    if verbose:
        verbosity.set_verbose(True)
    if ctx.invoked_subcommand is None:
        tui(model=None, backend="auto", workspace=None, start="lab")


@app.command()
def tui(
    model: Optional[str] = ModelOpt,
    backend: str = typer.Option("auto", "--backend", "-b", help="hf, llamacpp, or auto (the config's `backend:`, else hf)."),
    workspace: Optional[Path] = WorkspaceOpt,
    start: str = typer.Option("lab", "--start", help="First screen: model, lab, pairs, eval, train or runs."),
) -> None:
    """Open the app: live scoring, pair curation, training dashboard, evaluation, runs."""
    from ipo_tui.app import IpoApp, run

    if start not in IpoApp.MODES:
        raise IpoError(f"--start {start}: choose one of {', '.join(IpoApp.MODES)}")
    run(workspace=workspace, model=model, backend=None if backend == "auto" else backend, start=start)


@app.command()
def score(
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="The instruction the candidates answer."),
    response: list[str] = typer.Option([], "--response", "-r", help="A candidate response; repeat for several."),
    file: Optional[Path] = typer.Option(None, "--file", "-f", help="JSONL of candidates: {\"response\": ..., \"prompt\"?: ...} a line."),
    category: Optional[str] = typer.Option(None, "--category", "-c", help="chat, code, math, safety, generic (default: routed by keywords)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per candidate instead of a table."),
    backend: str = BackendOpt, model: Optional[str] = ModelOpt, device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DtypeOpt, ctx: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: Optional[str] = AdapterOpt,
    base_url: Optional[str] = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Score candidate responses by p'yes = p(Yes) / (p(Yes) + p(No)) from one forward pass each."""
    from ipo_tui.candidates import Candidate, read_candidates
    from ipo_tui.judge import ranked as rank_judgements

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
                       base_url=base_url, concurrency=concurrency)
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
        if any(j.missing for j in judgements):
            err.print("[yellow]warning:[/] neither Yes nor No was among the server's top logprobs for some "
                      "candidates: they have no score")
        ranked = rank_judgements(judgements)
        if as_json:
            for rank, j in enumerate(ranked, 1):
                print(json.dumps({"rank": rank, "prompt": instruction, **j.as_dict()}, ensure_ascii=False))
        else:
            out.print(_table(instruction, ranked))


def _table(instruction: str, ranked) -> Table:
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


def open_store(workspace: Path | None):
    from ipo_tui.store import Store

    return Store(workspace)


@prompts_app.command("import")
def prompts_import(
    source: str = typer.Argument(..., help="JSONL, JSON, CSV or Parquet file, or an HF dataset id (name[:split])."),
    name: str = typer.Option(..., "--name", help="Name of the new prompt set."),
    prompt_field: str = typer.Option("prompt", "--prompt-field"),
    category_field: str = typer.Option("category", "--category-field"),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Import prompts as a named set (all of them, or none if a record is bad)."""
    from ipo_tui.datasets import load_prompts

    prompts = load_prompts(source, prompt_field, category_field)
    open_store(workspace).add_prompt_set(name, source, prompts)
    out.print(f"imported {len(prompts)} prompts as {name!r}")


@prompts_app.command("list")
def prompts_list(workspace: Optional[Path] = WorkspaceOpt) -> None:
    """The prompt sets in the workspace."""
    table = Table("name", "prompts", "source", "imported")
    for row in open_store(workspace).prompt_sets():
        table.add_row(row["name"], str(row["prompts"]), row["source"], row["created_at"])
    out.print(table)


def _progress(label: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), console=err)
    task = bar.add_task(label, total=None)
    return bar, lambda done, total: bar.update(task, completed=done, total=total)


def _sampling(n: int, temperature: float, top_p: float, max_tokens: int, seed: int):
    from ipo_tui.backends import Sampling

    if n < 1 or max_tokens < 1 or not 0 < top_p <= 1 or temperature < 0:
        raise IpoError("sampling settings out of range: need -n >= 1, --max-tokens >= 1, 0 < --top-p <= 1, --temperature >= 0")
    return Sampling(n, temperature, top_p, max_tokens, seed)


SampleN = typer.Option(4, "-n", help="Candidates per prompt.")
TemperatureOpt = typer.Option(0.8, "--temperature")
TopPOpt = typer.Option(0.95, "--top-p")
MaxTokensOpt = typer.Option(256, "--max-tokens")
SeedOpt = typer.Option(0, "--seed")


@app.command()
def generate(
    prompts: str = PromptSetOpt, n: int = SampleN, limit: Optional[int] = LimitOpt,
    temperature: float = TemperatureOpt, top_p: float = TopPOpt, max_tokens: int = MaxTokensOpt, seed: int = SeedOpt,
    workspace: Optional[Path] = WorkspaceOpt, backend: str = BackendOpt, model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt, ctx: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    adapter: Optional[str] = AdapterOpt,
    base_url: Optional[str] = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Sample N candidates per prompt; a rerun resumes, keeping what is stored."""
    from ipo_tui import pipeline

    store = open_store(workspace)
    rows = store.prompts(prompts, limit)
    sampling = _sampling(n, temperature, top_p, max_tokens, seed)
    engine = open_backend(backend, model, device, dtype, ctx, threads, adapter=adapter, base_url=base_url,
                          concurrency=concurrency)
    bar, progress = _progress("generating")
    with bar:
        added = pipeline.generate(store, engine, pipeline.policy_of(engine), rows, n, sampling, progress)
    out.print(f"{added} new candidates for {len(rows)} prompts ({len(rows) * n - added} were stored already)")


@app.command()
def judge(
    prompts: str = PromptSetOpt, limit: Optional[int] = LimitOpt,
    category: Optional[str] = typer.Option(None, "--category", "-c", help="Judge every prompt under this category's template."),
    workspace: Optional[Path] = WorkspaceOpt, backend: str = BackendOpt, model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt, ctx: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: Optional[str] = AdapterOpt,
    base_url: Optional[str] = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Score the stored candidates of the judging model's own policy by p'yes."""
    from ipo_tui import pipeline

    store = open_store(workspace)
    rows = store.prompts(prompts, limit)
    engine = open_judge(backend, model, device, dtype, ctx, threads, score_precision, adapter=adapter,
                       base_url=base_url, concurrency=concurrency)
    bar, progress = _progress("judging")
    with bar:
        scored = pipeline.judge(store, engine, pipeline.policy_of(engine.backend), rows, category, progress)
    out.print(f"judged {scored} candidates")
    if engine.missing:
        err.print(f"[yellow]note:[/] {engine.missing} candidates got neither Yes nor No among the server's top "
                  "logprobs: no score, not stored")


@pairs_app.command("build")
def pairs_build(
    prompts: str = PromptSetOpt, n: int = SampleN, limit: Optional[int] = LimitOpt,
    min_margin: float = typer.Option(0.0, "--min-margin", help="Drop pairs whose p'yes margin is below this."),
    temperature: float = TemperatureOpt, top_p: float = TopPOpt, max_tokens: int = MaxTokensOpt, seed: int = SeedOpt,
    workspace: Optional[Path] = WorkspaceOpt, backend: str = BackendOpt, model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt, ctx: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: Optional[str] = AdapterOpt,
    base_url: Optional[str] = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Generate and judge whatever is missing, then propose (best, worst) pairs."""
    from ipo_tui import pipeline

    store = open_store(workspace)
    rows = store.prompts(prompts, limit)
    sampling = _sampling(n, temperature, top_p, max_tokens, seed)
    engine = open_judge(backend, model, device, dtype, ctx, threads, score_precision, adapter=adapter,
                       base_url=base_url, concurrency=concurrency)
    policy = pipeline.policy_of(engine.backend)
    for label, step in (("generating", lambda p: pipeline.generate(store, engine.backend, policy, rows, n, sampling, p)),
                        ("judging", lambda p: pipeline.judge(store, engine, policy, rows, None, p))):
        bar, progress = _progress(label)
        with bar:
            step(progress)
    report = pipeline.build_pairs(store, policy.judge_id, policy, rows, min_margin)
    out.print(f"{report.proposed} pairs proposed; dropped {report.too_close} below the margin or tied, "
              f"{report.too_few} with fewer than two judged candidates")


@pairs_app.command("list")
def pairs_list(
    status: list[str] = typer.Option([], "--status", help="Only these statuses (repeatable)."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """The pairs with their scores."""
    from ipo_tui.store import PAIR_STATUSES

    table = Table("id", "status", "margin", "chosen p'yes", "rejected p'yes", "category", "prompt")
    for r in open_store(workspace).pairs(tuple(status) or PAIR_STATUSES):
        table.add_row(str(r["id"]), r["status"], f"{r['margin']:.3f}", f"{r['score_chosen']:.3f}",
                      f"{r['score_rejected']:.3f}", r["category"] or "", " ".join(r["prompt"].split())[:60])
    out.print(table)


def _mark(status: str, ids: list[int], min_margin: float | None, workspace) -> None:
    store = open_store(workspace)
    if min_margin is not None:  # bulk: every proposed pair at or above the margin
        ids = ids + [r["id"] for r in store.pairs(("proposed",)) if r["margin"] >= min_margin]
    if not ids:
        raise IpoError("name pair ids (see `ipo pairs list`) or give --min-margin")
    store.set_pair_status(ids, status)
    out.print(f"{status} {len(ids)} pair(s)")


@pairs_app.command("accept")
def pairs_accept(
    ids: list[int] = typer.Argument(None, help="Pair ids."),
    min_margin: Optional[float] = typer.Option(None, "--min-margin", help="Also every proposed pair with at least this margin."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Accept pairs for training (`ipo train dpo --pairs accepted`)."""
    _mark("accepted", ids or [], min_margin, workspace)


@pairs_app.command("reject")
def pairs_reject(ids: list[int] = typer.Argument(..., help="Pair ids."), workspace: Optional[Path] = WorkspaceOpt) -> None:
    """Reject pairs: they are kept, but never trained on."""
    _mark("rejected", ids, None, workspace)


@pairs_app.command("export")
def pairs_export(
    out_path: Path = typer.Option(..., "--out", help="FILE.jsonl or FILE.parquet"),
    fmt: str = typer.Option("trl", "--format", help="trl or llamafactory"),
    conversational: bool = typer.Option(False, "--conversational", help="TRL conversational shape (lists of messages)."),
    status: list[str] = typer.Option([], "--status", help="Statuses to export (default: proposed, accepted, edited)."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Write the pairs in a trainer's format."""
    from ipo_tui.datasets import pair_records, write_records

    if out_path.suffix.lower() not in (".jsonl", ".parquet"):
        raise IpoError(f"--out {out_path}: give a .jsonl or .parquet file name")
    rows = open_store(workspace).pairs(tuple(status) or ("proposed", "accepted", "edited"))
    if not rows:
        raise IpoError("no pairs with those statuses; build some with `ipo pairs build`")
    write_records(out_path, pair_records(rows, fmt, conversational))
    out.print(f"wrote {len(rows)} pairs to {out_path}")


@app.command("eval")
def eval_pairs(
    file: str = typer.Argument(..., help="RewardBench-format pairs: prompt, chosen, rejected, subset, category?"),
    judge_name: str = typer.Option("ipo", "--judge", help="ipo (p'yes) or self-reward (the model writes a 1-5 score)."),
    limit: Optional[int] = typer.Option(None, "--limit", help="A fixed sample of N pairs spread over the file."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object of the results."),
    backend: str = BackendOpt, model: Optional[str] = ModelOpt, device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DtypeOpt, ctx: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: Optional[str] = AdapterOpt,
    base_url: Optional[str] = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Pairwise accuracy of a judge, per subset and per category (ties count as wrong)."""
    from ipo_tui.config import load_config
    from ipo_tui.evaluate import JUDGES, evaluate, load_pairs
    from ipo_tui.judge import Judge

    if judge_name not in JUDGES:
        raise IpoError(f"unknown judge {judge_name!r}: choose ipo or self-reward")
    pairs = load_pairs(file, limit)
    engine = open_backend(backend, model, device, dtype, ctx, threads, score_precision, adapter, base_url, concurrency)
    bar, progress = _progress(f"evaluating ({judge_name})")
    with bar:
        result = evaluate(pairs, judge_name, Judge(engine, load_config()) if judge_name == "ipo" else None, engine, progress)
    summary = result.as_dict()
    for title, scores, counts in (("category", summary["by_category"], result.by_category),
                                  ("subset", summary["by_subset"], result.by_subset)):
        table = Table(title, "accuracy", "pairs", title=f"{judge_name} accuracy by {title}", title_justify="left")
        for name, accuracy in scores.items():
            table.add_row(name, f"{accuracy:.3f}", str(counts[name][1]))
        err.print(table) if as_json else out.print(table)
    extra = (f", mean Yes+No mass {summary['mean_mass']:.3f}" if judge_name == "ipo"
             else f", {result.parse_failures} of {2 * result.pairs} ratings unparsed")
    err.print(f"accuracy {result.accuracy:.3f} on {result.pairs} pairs{extra}, {summary['pairs_per_s']:.2f} pairs/s", highlight=False)
    if as_json:
        print(json.dumps(summary))


@app.command()
def bestofn(
    prompt: str = typer.Option(..., "--prompt", "-p"), n: int = typer.Option(8, "-n"),
    category: Optional[str] = typer.Option(None, "--category", "-c"),
    temperature: float = TemperatureOpt, top_p: float = TopPOpt, max_tokens: int = MaxTokensOpt, seed: int = SeedOpt,
    as_json: bool = typer.Option(False, "--json"),
    backend: str = BackendOpt, model: Optional[str] = ModelOpt, device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DtypeOpt, ctx: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: Optional[str] = AdapterOpt,
    base_url: Optional[str] = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Sample n answers and pick the best by p'yes, showing every score."""
    from ipo_tui.evaluate import best_of_n

    if not prompt.strip():
        raise IpoError("--prompt is empty: give the instruction to answer")
    sampling = _sampling(n, temperature, top_p, max_tokens, seed)
    judge = open_judge(backend, model, device, dtype, ctx, threads, score_precision, adapter=adapter,
                       base_url=base_url, concurrency=concurrency)
    with err.status(f"sampling {n} answers and judging them"):
        ranked = best_of_n(judge, prompt, sampling, category)
    if as_json:
        for rank, j in enumerate(ranked, 1):
            print(json.dumps({"rank": rank, "prompt": prompt, **j.as_dict()}, ensure_ascii=False))
        return
    out.print(_table(prompt, ranked))
    out.rule("best answer")
    out.print(ranked[0].response, highlight=False, markup=False)


@prompts_app.command("search")
def prompts_search(
    file: str = typer.Argument(..., help="Labelled pairs (RewardBench format)."),
    candidates: Path = typer.Option(..., "--candidates", help="YAML: {category: [{name, system?, user}, ...]}"),
    limit: Optional[int] = typer.Option(200, "--limit", help="A fixed sample of N pairs spread over the file (0: all)."),
    save: bool = typer.Option(True, "--save/--no-save", help="Keep the best template per category in the config."),
    backend: str = BackendOpt, model: Optional[str] = ModelOpt, device: Optional[str] = DeviceOpt,
    dtype: Optional[str] = DtypeOpt, ctx: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: Optional[str] = AdapterOpt,
    base_url: Optional[str] = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Measure every candidate template's pairwise accuracy per category; keep the best."""
    import yaml

    from ipo_tui.config import load_config, save_config
    from ipo_tui.evaluate import load_pairs, search_templates
    from ipo_tui.prompts import BUILTIN, Template

    try:
        spec = yaml.safe_load(candidates.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise IpoError(f"{candidates}: cannot read it as YAML ({type(exc).__name__})") from None
    if not isinstance(spec, dict) or not all(isinstance(v, list) and v for v in spec.values()):
        raise IpoError(f"{candidates}: expected {{category: [{{name, system?, user}}, ...]}}")
    templates = {}
    for category, items in spec.items():
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict) or "user" not in item:
                raise IpoError(f"{candidates}: {category} item {i} needs a 'user' text")
            templates.setdefault(category, []).append(
                Template(str(item.get("name") or f"{category}-{i}"), item.get("system", BUILTIN["generic"].system), item["user"]))
    pairs = load_pairs(file, limit or None)
    config = load_config()
    judge = open_judge(backend, model, device, dtype, ctx, threads, score_precision, config, adapter, base_url,
                       concurrency)
    bar, progress = _progress("searching templates")
    with bar:
        results = search_templates(judge, pairs, templates, progress)
    table = Table("category", "template", "accuracy", "pairs", title="template accuracy (best first)", title_justify="left")
    for category, scores in results.items():
        for rank, (name, accuracy, count) in enumerate(scores):
            table.add_row(category if rank == 0 else "", f"[bold]{name}[/]" if rank == 0 else name, f"{accuracy:.3f}", str(count))
    out.print(table)
    if save:
        chosen = {t.name: t for ts in templates.values() for t in ts}
        config.setdefault("templates", {})
        config.setdefault("judge", {}).setdefault("category_templates", {})
        for category, scores in results.items():
            best = chosen[scores[0][0]]
            config["templates"][best.name] = {"system": best.system, "user": best.user}
            config["judge"]["category_templates"][category] = best.name
        save_config(config)
        from ipo_tui.config import config_path

        out.print(f"saved the best template per category to {config_path()}")


from ipo_tui import cli_export, cli_train  # noqa: E402 - their commands use the options above

app.add_typer(cli_train.train_app, name="train")
app.add_typer(cli_export.app, name="export")
app.command("runs")(cli_train.runs)
app.command("loop")(cli_train.loop)


def main() -> None:
    try:
        app()
    except IpoError as exc:
        err.print(f"[red]error:[/] {exc}", highlight=False)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
