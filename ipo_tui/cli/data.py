"""`ipo prompts`, `ipo generate`, `ipo judge` and `ipo pairs`: the preference data in the workspace,
from prompt sets to curated pairs and their export."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ipo_tui.cli.common import (
    AdapterOpt,
    BackendOpt,
    BaseUrlOpt,
    ConcurrencyOpt,
    CtxOpt,
    DeviceOpt,
    DtypeOpt,
    LimitOpt,
    MaxTokensOpt,
    ModelOpt,
    PrecisionOpt,
    PromptSetOpt,
    SampleN,
    SeedOpt,
    TemperatureOpt,
    ThreadsOpt,
    TopPOpt,
    WorkspaceOpt,
    err,
    open_backend,
    open_judge,
    open_store,
    out,
    progress_bar,
    sampling_settings,
)
from ipo_tui.errors import IpoError

prompts_app = typer.Typer(help="Prompt sets in the workspace.", no_args_is_help=True, pretty_exceptions_enable=False)
pairs_app = typer.Typer(help="Chosen/rejected pairs: build, list, export.", no_args_is_help=True, pretty_exceptions_enable=False)


@prompts_app.command("import")
def prompts_import(
    source: str = typer.Argument(..., help="JSONL, JSON, CSV or Parquet file, or an HF dataset id (name[:split])."),
    name: str = typer.Option(..., "--name", help="Name of the new prompt set."),
    prompt_field: str = typer.Option("prompt", "--prompt-field"),
    category_field: str = typer.Option("category", "--category-field"),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """Import prompts as a named set (all of them, or none if a record is bad)."""
    from ipo_tui.workspace.records import load_prompts

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
    from ipo_tui.evaluation.pairwise import load_pairs, search_templates
    from ipo_tui.judge.templates import BUILTIN, Template

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
    bar, progress = progress_bar("searching templates")
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


def generate(
    prompts: str = PromptSetOpt, n: int = SampleN, limit: Optional[int] = LimitOpt,
    temperature: float = TemperatureOpt, top_p: float = TopPOpt, max_tokens: int = MaxTokensOpt, seed: int = SeedOpt,
    workspace: Optional[Path] = WorkspaceOpt, backend: str = BackendOpt, model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt, ctx: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    adapter: Optional[str] = AdapterOpt,
    base_url: Optional[str] = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Sample N candidates per prompt; a rerun resumes, keeping what is stored."""
    from ipo_tui.loop import stages

    store = open_store(workspace)
    rows = store.prompts(prompts, limit)
    sampling = sampling_settings(n, temperature, top_p, max_tokens, seed)
    engine = open_backend(backend, model, device, dtype, ctx, threads, adapter=adapter, base_url=base_url,
                          concurrency=concurrency)
    bar, progress = progress_bar("generating")
    with bar:
        added = stages.generate(store, engine, stages.policy_of(engine), rows, n, sampling, progress)
    out.print(f"{added} new candidates for {len(rows)} prompts ({len(rows) * n - added} were stored already)")


def judge(
    prompts: str = PromptSetOpt, limit: Optional[int] = LimitOpt,
    category: Optional[str] = typer.Option(None, "--category", "-c", help="Judge every prompt under this category's template."),
    workspace: Optional[Path] = WorkspaceOpt, backend: str = BackendOpt, model: Optional[str] = ModelOpt,
    device: Optional[str] = DeviceOpt, dtype: Optional[str] = DtypeOpt, ctx: Optional[int] = CtxOpt, threads: Optional[int] = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: Optional[str] = AdapterOpt,
    base_url: Optional[str] = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Score the stored candidates of the judging model's own policy by p'yes."""
    from ipo_tui.loop import stages

    store = open_store(workspace)
    rows = store.prompts(prompts, limit)
    engine = open_judge(backend, model, device, dtype, ctx, threads, score_precision, adapter=adapter,
                       base_url=base_url, concurrency=concurrency)
    bar, progress = progress_bar("judging")
    with bar:
        scored = stages.judge(store, engine, stages.policy_of(engine.backend), rows, category, progress)
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
    from ipo_tui.loop import stages

    store = open_store(workspace)
    rows = store.prompts(prompts, limit)
    sampling = sampling_settings(n, temperature, top_p, max_tokens, seed)
    engine = open_judge(backend, model, device, dtype, ctx, threads, score_precision, adapter=adapter,
                       base_url=base_url, concurrency=concurrency)
    policy = stages.policy_of(engine.backend)
    for label, step in (("generating", lambda p: stages.generate(store, engine.backend, policy, rows, n, sampling, p)),
                        ("judging", lambda p: stages.judge(store, engine, policy, rows, None, p))):
        bar, progress = progress_bar(label)
        with bar:
            step(progress)
    report = stages.build_pairs(store, policy.judge_id, policy, rows, min_margin)
    out.print(f"{report.proposed} pairs proposed; dropped {report.too_close} below the margin or tied, "
              f"{report.too_few} with fewer than two judged candidates")


@pairs_app.command("list")
def pairs_list(
    status: list[str] = typer.Option([], "--status", help="Only these statuses (repeatable)."),
    workspace: Optional[Path] = WorkspaceOpt,
) -> None:
    """The pairs with their scores."""
    from ipo_tui.workspace.store import PAIR_STATUSES

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
    from ipo_tui.workspace.records import pair_records, write_records

    if out_path.suffix.lower() not in (".jsonl", ".parquet"):
        raise IpoError(f"--out {out_path}: give a .jsonl or .parquet file name")
    rows = open_store(workspace).pairs(tuple(status) or ("proposed", "accepted", "edited"))
    if not rows:
        raise IpoError("no pairs with those statuses; build some with `ipo pairs build`")
    write_records(out_path, pair_records(rows, fmt, conversational))
    out.print(f"wrote {len(rows)} pairs to {out_path}")
