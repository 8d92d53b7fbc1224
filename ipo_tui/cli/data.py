"""`ipo prompts`, `ipo generate`, `ipo judge` and `ipo pairs`: the preference data in the workspace,
from prompt sets to curated pairs and their export."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ipo_tui.cli.common import (
    AdapterOpt,
    BackendOpt,
    BaseUrlOpt,
    CalibrateOpt,
    ConcurrencyOpt,
    counted,
    CtxOpt,
    DeviceOpt,
    DtypeOpt,
    JudgeModeOpt,
    LimitOpt,
    MaxTokensOpt,
    MinMarginOpt,
    ModelOpt,
    PlainOpt,
    PrecisionOpt,
    PromptSetOpt,
    RouterOpt,
    SampleN,
    SeedOpt,
    TemperatureOpt,
    ThreadsOpt,
    TopPOpt,
    WorkspaceOpt,
    cell,
    err,
    open_backend,
    open_judge,
    open_store,
    out,
    progress_bar,
    says_when_stopped,
    sampling_settings,
)
from ipo_tui.errors import IpoError

prompts_app = typer.Typer(help="Prompt sets in the workspace.", no_args_is_help=True, pretty_exceptions_enable=False)
pairs_app = typer.Typer(help="Chosen/rejected pairs: build, list, export.", no_args_is_help=True, pretty_exceptions_enable=False)


@prompts_app.command("import")
def prompts_import(
    source: str = typer.Argument(..., help="JSONL, JSON, CSV or Parquet file, or hf:NAME[:SPLIT] for a dataset on the Hugging Face hub."),
    name: str = typer.Option(..., "--name", help="Name of the new prompt set."),
    prompt_field: str = typer.Option("prompt", "--prompt-field"),
    category_field: str = typer.Option("category", "--category-field"),
    keep_duplicates: bool = typer.Option(False, "--keep-duplicates", help="Keep records that repeat an earlier prompt's text or id (skipped, and listed, by default)."),
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """Import prompts as a named set (all of them, or none if a record is bad)."""
    from ipo_tui.workspace.records import read_prompts

    loaded = read_prompts(source, prompt_field, category_field, keep_duplicates=keep_duplicates)
    open_store(workspace).add_prompt_set(name, source, loaded.prompts)
    out.print(f"imported {len(loaded.prompts)} prompts as {name!r}")
    if loaded.skipped:
        err.print(f"[yellow]warning:[/] {loaded.skipped_summary()}; --keep-duplicates keeps them", highlight=False)


@prompts_app.command("list")
def prompts_list(workspace: Path | None = WorkspaceOpt) -> None:
    """The prompt sets in the workspace."""
    table = Table("name", "prompts", "source", "imported")
    for row in open_store(workspace).prompt_sets():
        table.add_row(row["name"], str(row["prompts"]), cell(row["source"]), row["created_at"])
    out.print(table)


@prompts_app.command("search")
def prompts_search(
    file: str = typer.Argument(..., help="Labelled pairs (RewardBench format)."),
    candidates: Path | None = typer.Option(None, "--candidates", help="YAML: {category: [{name, system?, user, polarity?}, ...]}; default: the built-in templates of each category."),
    per_category: int = typer.Option(80, "--per-category", min=0, help="Pairs per category, spread evenly over the file (0: all)."),
    holdout: int = typer.Option(0, "--holdout", min=0, help="Leave out the N-pair sample `ipo eval --limit N` takes, so that eval measures on pairs the search never saw."),
    n_folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds."),
    pairwise: bool = typer.Option(True, "--pairwise/--no-pairwise", help="Also measure pairwise mode (two passes per pair)."),
    reply_pmi: bool = typer.Option(True, "--reply-pmi/--no-reply-pmi", help="Also measure each reply's PMI with its instruction (two passes per reply)."),
    save: bool = typer.Option(True, "--save/--no-save", help="Keep the chosen setting per category for this model in the config."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON line of the results; the tables go to stderr then."),
    backend: str = BackendOpt, model: str | None = ModelOpt, device: str | None = DeviceOpt,
    dtype: str | None = DtypeOpt, ctx: int | None = CtxOpt, threads: int | None = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: str | None = AdapterOpt,
    base_url: str | None = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Choose each category's judge setting on labelled pairs, cross-validated; keep it for this model.

    The candidates: templates, ensembles, the PMI baseline, length control, the reply's PMI with its
    instruction and weights fitted to the pairs, each reported against the plain recipe."""
    import json

    from ipo_tui.config import load_config
    from ipo_tui.evaluation import search
    from ipo_tui.evaluation.stats import wilson

    custom = _candidate_templates(candidates) if candidates else {}
    groups = _search_groups(file, custom, holdout, per_category)
    config = load_config()
    judge = open_judge(backend, model, device, dtype, ctx, threads, score_precision, config, adapter, base_url,
                       concurrency)
    judge.templates.update({t.name: t for ts in custom.values() for t in ts})
    shown = err if as_json else out  # under --json, stdout holds the JSON line alone
    found, chosen = _measure_techniques(judge, groups, custom, n_folds, pairwise, reply_pmi)
    shown.print(_techniques_table(found, f"judge techniques on {file} ({judge.backend.ref.name})"))
    routing = _router_accuracy(judge, groups)
    rates = {name: right / n if n else None for name, (right, n) in routing.items()}
    if routing:
        shown.print("router accuracy against the file's categories: " + ", ".join(
            f"{name} {cell(rates[name], '.3f')} ({right}/{n})" for name, (right, n) in routing.items()))
    cv = [next(t for t in techniques if t.name == search.SEARCH) for techniques in found.values()]
    right, total = sum(t.right for t in cv), sum(t.n for t in cv)
    low, high = wilson(right, total)
    shown.print(f"cross-validated accuracy of the search over {total} pairs: {right / total:.3f} "
                f"(95% {low:.2f}-{high:.2f}); the overall figure weights categories by their pairs here, not as the "
                "eval file does")
    if save:
        _save_search(config, judge.backend.ref.name, chosen, custom, shown)
    if as_json:
        report = {c: [{"technique": t.name, "accuracy": t.right / t.n, "interval95": wilson(t.right, t.n),
                       "pairs": t.n, "note": t.note} for t in techniques] for c, techniques in found.items()}
        print(json.dumps({"model": judge.backend.ref.name, "cross_validated": right / total, "pairs": total,
                          "routers": rates, "techniques": report,
                          "chosen": {c: s.describe() for c, s in chosen.items()}}))


def _search_groups(file: str, custom: dict, holdout: int, per_category: int) -> dict[str, list[dict]]:
    """The file's pairs by category: less the --holdout sample, only the categories with --candidates
    when given, at most --per-category of each, spread over the file."""
    from ipo_tui.evaluation import search
    from ipo_tui.evaluation.pairwise import load_pairs
    from ipo_tui.evaluation.stats import spread

    pairs = load_pairs(file)
    if holdout:
        held = {search.pair_key(r) for r in load_pairs(file, holdout)}
        pairs = [r for r in pairs if search.pair_key(r) not in held]
        if not pairs:
            raise IpoError(f"--holdout {holdout} leaves none of the pairs of {file}; hold out fewer")
    groups = search.by_category(pairs)
    if custom:
        missing = sorted(set(custom) - set(groups))
        if missing:
            raise IpoError(f"no pairs of category {missing[0]!r} in {file}; its candidate templates cannot be compared")
        groups = {c: groups[c] for c in custom}
    return {c: spread(rows, per_category) for c, rows in groups.items()}


def _measure_techniques(judge, groups: dict, custom: dict, n_folds: int, pairwise: bool, reply_pmi: bool):
    """Per category, each technique's accuracy ({category: [Technique]}) and the setting the search
    chooses on all its pairs ({category: CategorySetting}); each phase shows its progress."""
    import numpy as np

    from ipo_tui.config import cache_dir
    from ipo_tui.evaluation import search
    from ipo_tui.judge.pairwise import PairwiseJudge
    from ipo_tui.judge.templates import POOL

    by_text = judge.backend.scores_by_text  # such a backend (a server) measures neither verdicts nor reply PMI
    pairwise_judge = PairwiseJudge(judge.backend) if pairwise and not by_text else None
    folder = cache_dir() / "judge-features"
    found, chosen = {}, {}
    for category, rows in groups.items():
        templates = custom.get(category) or [judge.named(n) for n in POOL.get(category, (category,))]
        bar, progress = progress_bar(f"measuring {category} ({len(templates)} templates)")
        with bar:
            features = search.extract(judge, rows, templates, folder, pairwise_judge, reply_pmi and not by_text,
                                      progress)
        bar, progress = progress_bar(f"cross-validating {category} ({n_folds} folds)")
        with bar:
            chosen[category] = search.choose(features, np.arange(features.n))
            found[category] = search.techniques(features, chosen[category], n_folds, progress)
    return found, chosen


def _techniques_table(found: dict, title: str) -> Table:
    from ipo_tui.evaluation import search
    from ipo_tui.evaluation.stats import wilson

    table = Table("category", "technique", "accuracy", "95% interval", "pairs", "note", title=title,
                  title_justify="left")
    for column in table.columns[1:5]:
        column.no_wrap = True
    for category, techniques in found.items():
        for i, t in enumerate(techniques):
            low, high = wilson(t.right, t.n)
            name = f"[bold]{t.name}[/]" if t.name == search.SEARCH else t.name
            table.add_row(category if i == 0 else "", name, f"{t.right / t.n:.3f}", f"{low:.2f}-{high:.2f}", str(t.n),
                          t.note)
    return table


def _router_accuracy(judge, groups: dict) -> dict[str, tuple[int, int]]:
    """{router: (prompts routed to their labelled category, labelled prompts)}; none for a server's text scores."""
    if judge.backend.scores_by_text:
        return {}
    from ipo_tui.evaluation import search
    from ipo_tui.judge.model_router import ModelRouter
    from ipo_tui.judge.routing import route

    bar, progress = progress_bar("routing the prompts")
    with bar:
        return search.router_accuracy([r for rows in groups.values() for r in rows],
                                      {"keyword": route, "model": ModelRouter(judge.backend).route}, progress)


def _save_search(config: dict, model: str, chosen: dict, custom: dict, shown) -> None:
    """Keep the chosen settings for `model`, and the candidate templates they name, in the config."""
    from ipo_tui.config import config_path, save_config
    from ipo_tui.judge.settings import save_for_model

    config = save_for_model(config, model, chosen)
    for ts in custom.values():
        config.setdefault("templates", {}).update(
            {t.name: {"system": t.system, "user": t.user, "polarity": t.polarity} for t in ts})
    save_config(config)
    shown.print(f"saved the chosen setting per category for {model} to {config_path()}:")
    for category, setting in chosen.items():
        shown.print(f"  {category}: {setting.describe()}")


def _candidate_templates(path: Path) -> dict[str, list]:
    import yaml

    from ipo_tui.judge.templates import BUILTIN, Template

    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise IpoError(f"{path}: cannot read it as YAML ({type(exc).__name__})") from None
    if not isinstance(spec, dict) or not all(isinstance(v, list) and v for v in spec.values()):
        raise IpoError(f"{path}: expected {{category: [{{name, system?, user, polarity?}}, ...]}}")
    templates: dict[str, list] = {}
    for category, items in spec.items():
        for i, item in enumerate(items, 1):
            if not isinstance(item, dict) or "user" not in item:
                raise IpoError(f"{path}: {category} item {i} needs a 'user' text")
            templates.setdefault(category, []).append(
                Template(str(item.get("name") or f"{category}-{i}"), item.get("system", BUILTIN["generic"].system),
                         item["user"], item.get("polarity", "positive")))
    return templates


def generate(
    prompts: str = PromptSetOpt, n: int = SampleN, limit: int | None = LimitOpt,
    temperature: float = TemperatureOpt, top_p: float = TopPOpt, max_tokens: int = MaxTokensOpt, seed: int = SeedOpt,
    workspace: Path | None = WorkspaceOpt, backend: str = BackendOpt, model: str | None = ModelOpt,
    device: str | None = DeviceOpt, dtype: str | None = DtypeOpt, ctx: int | None = CtxOpt, threads: int | None = ThreadsOpt,
    adapter: str | None = AdapterOpt,
    base_url: str | None = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Sample N candidates per prompt; a rerun resumes, keeping what is stored."""
    from ipo_tui.loop import stages

    store = open_store(workspace)
    rows = store.prompts(prompts, limit)
    sampling = sampling_settings(n, temperature, top_p, max_tokens, seed)
    engine = open_backend(backend, model, device, dtype, ctx, threads, adapter=adapter, base_url=base_url,
                          concurrency=concurrency)
    bar, progress = progress_bar("generating")
    with says_when_stopped("generate", "each prompt's candidates are stored as they come; run the same "
                                       "command to continue with the next prompt"), bar:
        added = stages.generate(store, engine, stages.policy_of(engine), rows, n, sampling, progress)
    out.print(f"{counted(added, 'new candidate')} for {counted(len(rows), 'prompt')} "
              f"({counted(len(rows) * n - added, 'candidate')} stored already)")


def judge(
    prompts: str = PromptSetOpt, limit: int | None = LimitOpt,
    category: str | None = typer.Option(None, "--category", "-c", help="Judge every prompt under this category's template."),
    router: str | None = RouterOpt, plain: bool = PlainOpt, calibrate: bool | None = CalibrateOpt,
    workspace: Path | None = WorkspaceOpt, backend: str = BackendOpt, model: str | None = ModelOpt,
    device: str | None = DeviceOpt, dtype: str | None = DtypeOpt, ctx: int | None = CtxOpt, threads: int | None = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: str | None = AdapterOpt,
    base_url: str | None = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Score the stored candidates of the judging model's own policy (p'yes, or the setting's score)."""
    from ipo_tui.loop import stages

    store = open_store(workspace)
    rows = store.prompts(prompts, limit)
    engine = open_judge(backend, model, device, dtype, ctx, threads, score_precision, adapter=adapter,
                       base_url=base_url, concurrency=concurrency,
                       flags={"router": router, "plain": plain, "calibrate": calibrate})
    err.print(engine.summary(), highlight=False)
    bar, progress = progress_bar("judging")
    with says_when_stopped("judge", "each prompt's judgements are stored as they come; run the same command "
                                    "to continue with the next prompt"), bar:
        scored = stages.judge(store, engine, stages.policy_of(engine.backend), rows, category, progress)
    out.print(f"judged {counted(scored, 'candidate')}")
    if report := engine.terms_report():
        err.print(report, highlight=False)
    if engine.missing:
        err.print(f"[yellow]note:[/] {engine.missing} candidates got neither Yes nor No among the server's top "
                  "logprobs: no score, not stored")


@pairs_app.command("build")
def pairs_build(
    prompts: str = PromptSetOpt, n: int = SampleN, limit: int | None = LimitOpt, min_margin: float = MinMarginOpt,
    temperature: float = TemperatureOpt, top_p: float = TopPOpt, max_tokens: int = MaxTokensOpt, seed: int = SeedOpt,
    judge_mode: str | None = JudgeModeOpt, router: str | None = RouterOpt, plain: bool = PlainOpt,
    calibrate: bool | None = CalibrateOpt,
    workspace: Path | None = WorkspaceOpt, backend: str = BackendOpt, model: str | None = ModelOpt,
    device: str | None = DeviceOpt, dtype: str | None = DtypeOpt, ctx: int | None = CtxOpt, threads: int | None = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: str | None = AdapterOpt,
    base_url: str | None = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Generate and judge whatever is missing, then propose (best, worst) pairs."""
    from ipo_tui.loop import stages

    store = open_store(workspace)
    rows = store.prompts(prompts, limit)
    sampling = sampling_settings(n, temperature, top_p, max_tokens, seed)
    engine = open_judge(backend, model, device, dtype, ctx, threads, score_precision, adapter=adapter,
                       base_url=base_url, concurrency=concurrency,
                       flags={"mode": judge_mode, "router": router, "plain": plain, "calibrate": calibrate})
    err.print(engine.summary(), highlight=False)
    policy = stages.policy_of(engine.backend)
    pairwise = None
    if engine.settings.mode == "pairwise":
        from ipo_tui.judge.pairwise import PairwiseJudge

        pairwise = PairwiseJudge(engine.backend)
    for label, step in (("generating", lambda p: stages.generate(store, engine.backend, policy, rows, n, sampling, p)),
                        ("judging", lambda p: stages.judge(store, engine, policy, rows, None, p))):
        bar, progress = progress_bar(label)
        with says_when_stopped("pairs build"), bar:
            step(progress)
    report = stages.build_pairs(store, engine.id, policy, rows, min_margin, pairwise)
    out.print(f"{report.proposed} pairs proposed; dropped {report.too_close} below the margin or tied, "
              f"{report.too_few} with fewer than two judged candidates")
    if pairwise is not None and pairwise.report.warning:
        err.print(f"[yellow]warning:[/] {pairwise.report.warning}", highlight=False)


@pairs_app.command("list")
def pairs_list(
    status: list[str] = typer.Option([], "--status", help="Only these statuses (repeatable): proposed, accepted, rejected, edited."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per pair instead of a table."),
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """The pairs with their scores and what a person did to them."""
    import json

    from ipo_tui.judge.scoring import score_label, shown
    from ipo_tui.workspace.store import PAIR_STATUSES, curation_status

    rows = open_store(workspace).pairs(tuple(status) or PAIR_STATUSES)
    if as_json:
        for r in rows:
            print(json.dumps({key: r[key] for key in ("id", "status", "curation", "margin", "score_chosen", "score_rejected",
                                                      "probability", "category", "judge", "prompt_set", "prompt",
                                                      "chosen", "rejected")}))
        return
    label = score_label(r["probability"] for r in rows)
    table = Table("id", "status", "margin", f"chosen {label}", f"rejected {label}", "category", "prompt")
    for r in rows:
        table.add_row(str(r["id"]), curation_status(r), cell(r["margin"], "+.2f"), cell(shown(r["score_chosen"], label == "p'yes")),
                      cell(shown(r["score_rejected"], label == "p'yes")), cell(r["category"]),
                      " ".join(r["prompt"].split())[:60])
    out.print(table)
    out.print("margin: the chosen reply's score minus the rejected one's, in log-odds (below 0 after a swap: "
              "you overruled the judge; – where an edited reply is not scored; pairs by `longer`: characters; "
              "by `random`: 0)", style="dim")


@pairs_app.command("stats")
def pairs_stats(
    as_json: bool = typer.Option(False, "--json", help="One JSON object per row instead of a table."),
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """How often you agreed with the judge when curating: its accuracy on your own data.

    Per judge setting and category: accepted = agreed, swapped = disagreed; rejected and edited
    pairs are counted apart."""
    import json

    from ipo_tui.evaluation.agreement import person_agreement

    rows = person_agreement(open_store(workspace))
    if not rows:
        out.print("no curated pairs yet: accept, swap, reject or edit pairs (`ipo pairs accept`, the app's Pairs screen)")
        return
    if as_json:
        for a in rows:
            print(json.dumps({"judge": a.judge, "settings": a.settings, "category": a.category, "accept": a.accept,
                              "swap": a.swap, "reject": a.reject, "edit": a.edit, "agreement": a.rate,
                              "interval95": a.interval95 if a.checked else None}))
        return
    table = Table("judge", "settings", "category", "agreed", "95% interval", "accepted", "swapped", "rejected", "edited",
                  title="the person as a check on the judge", title_justify="left")
    for a in rows:
        low, high = a.interval95
        table.add_row(a.judge.rsplit("/", 1)[-1], a.settings, cell(a.category), cell(a.rate, ".3f"),
                      cell(f"{low:.2f}–{high:.2f}" if a.checked else None),
                      str(a.accept), str(a.swap), str(a.reject), str(a.edit))
    out.print(table)


def _mark(status: str, ids: list[int], min_margin: float | None, workspace) -> None:
    store = open_store(workspace)
    bulk = ([r["id"] for r in store.pairs(("proposed",)) if r["margin"] is not None and r["margin"] >= min_margin
             and r["id"] not in ids] if min_margin is not None else [])  # a named pair keeps the person's check
    if not ids and not bulk:
        raise IpoError("name pair ids (see `ipo pairs list`) or give --min-margin")
    if ids:
        store.set_pair_status(ids, status)
    if bulk:
        store.set_pair_status(bulk, status, bulk=True)  # not a check of each pair by a person
    out.print(f"{status} {counted(len(ids) + len(bulk), 'pair')}; take it back with `ipo pairs undo`")


@pairs_app.command("accept")
def pairs_accept(
    ids: list[int] = typer.Argument(None, help="Pair ids."),
    min_margin: float | None = typer.Option(None, "--min-margin", min=0.0, help="Also every proposed pair with at least this score margin (log-odds)."),
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """Accept pairs: they train (`ipo train dpo` takes accepted and edited pairs)."""
    _mark("accepted", ids or [], min_margin, workspace)


@pairs_app.command("reject")
def pairs_reject(ids: list[int] = typer.Argument(..., help="Pair ids."), workspace: Path | None = WorkspaceOpt) -> None:
    """Reject pairs: they are kept, but never trained on."""
    _mark("rejected", ids, None, workspace)


@pairs_app.command("swap")
def pairs_swap(ids: list[int] = typer.Argument(..., help="Pair ids."), workspace: Path | None = WorkspaceOpt) -> None:
    """The judge had it backwards: chosen and rejected trade places, and the pair is `edited` (it trains)."""
    open_store(workspace).swap_pair(ids)
    out.print(f"swapped {counted(len(ids), 'pair')}; take it back with `ipo pairs undo`")


@pairs_app.command("reset")
def pairs_reset(ids: list[int] = typer.Argument(..., help="Pair ids."), workspace: Path | None = WorkspaceOpt) -> None:
    """Back to proposed: the judge's own chosen and rejected, no curation on record."""
    open_store(workspace).reset_pairs(ids)
    out.print(f"{counted(len(ids), 'pair')} back to proposed")


@pairs_app.command("undo")
def pairs_undo(workspace: Path | None = WorkspaceOpt) -> None:
    """Take back the last curation action (accept, reject, swap, edit, reset, or a bulk accept as a whole)."""
    done = open_store(workspace).undo_curation()
    out.print(done or "nothing to undo")


@pairs_app.command("export")
def pairs_export(
    out_path: Path = typer.Option(..., "--out", help="FILE.jsonl or FILE.parquet"),
    fmt: str = typer.Option("trl", "--format", help="trl or llamafactory"),
    conversational: bool = typer.Option(False, "--conversational", help="TRL conversational shape (lists of messages)."),
    status: list[str] = typer.Option([], "--status", help="Statuses to export (repeatable; default: accepted and edited, the pairs that train)."),
    force: bool = typer.Option(False, "--force", help="Replace the file if it exists."),
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """Write the pairs in a trainer's format."""
    from ipo_tui.workspace.records import pair_records, write_records
    from ipo_tui.workspace.store import TRAINED_STATUSES

    if out_path.suffix.lower() not in (".jsonl", ".parquet"):
        raise IpoError(f"--out {out_path}: give a .jsonl or .parquet file name")
    if out_path.exists() and not force:
        raise IpoError(f"--out {out_path} exists; nothing was written; pass --force to replace it, or another name")
    statuses = tuple(status) or TRAINED_STATUSES
    rows = open_store(workspace).pairs(statuses)
    if not rows:
        raise IpoError(f"no {' or '.join(statuses)} pairs; curate some (`ipo pairs accept`, the app's Pairs screen), "
                       "or pass --status proposed")
    write_records(out_path, pair_records(rows, fmt, conversational))
    out.print(f"wrote {counted(len(rows), 'pair')} ({', '.join(statuses)}) to {out_path}")
