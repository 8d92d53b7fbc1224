"""`ipo eval` and `ipo bestofn`: a judge's pairwise accuracy on labelled pairs, and the judge at test time."""

from __future__ import annotations

import json

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
    JudgeModeOpt,
    MaxTokensOpt,
    ModelOpt,
    PlainOpt,
    PrecisionOpt,
    RouterOpt,
    SeedOpt,
    TemperatureOpt,
    ThreadsOpt,
    TopPOpt,
    counted,
    err,
    judgement_table,
    open_backend,
    open_judge,
    out,
    progress_bar,
    sampling_settings,
    status,
)
from ipo_tui.errors import IpoError


def eval_pairs(
    file: str = typer.Argument(..., help="RewardBench-format pairs: prompt, chosen, rejected, subset, category?"),
    judge_name: str = typer.Option("ipo", "--judge", help="ipo (the judge's score) or self-reward (the model writes a 1-5 score)."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="A fixed sample of N pairs spread over the file."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object of the results."),
    judge_mode: str | None = JudgeModeOpt, router: str | None = RouterOpt, plain: bool = PlainOpt,
    backend: str = BackendOpt, model: str | None = ModelOpt, device: str | None = DeviceOpt,
    dtype: str | None = DtypeOpt, ctx: int | None = CtxOpt, threads: int | None = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: str | None = AdapterOpt,
    base_url: str | None = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Pairwise accuracy of a judge, per subset and per category (ties count as wrong)."""
    from ipo_tui.evaluation.pairwise import JUDGES, evaluate, load_pairs
    from ipo_tui.evaluation.stats import wilson
    from ipo_tui.judge.scoring import configured_judge

    if judge_name not in JUDGES:
        raise IpoError(f"unknown judge {judge_name!r}: choose ipo or self-reward")
    pairs = load_pairs(file, limit)
    engine = open_backend(backend, model, device, dtype, ctx, threads, score_precision, adapter, base_url, concurrency)
    judge = None
    if judge_name == "ipo":
        judge = configured_judge(engine, flags={"mode": judge_mode, "router": router, "plain": plain})
        err.print(judge.summary(), highlight=False)
    bar, progress = progress_bar(f"evaluating ({judge_name})")
    with bar:
        result = evaluate(pairs, judge_name, judge, engine, progress)
    summary = result.as_dict()
    shown = err if as_json else out  # results on stdout, where --json keeps its one object alone
    for title, counts in (("category", result.by_category), ("subset", result.by_subset)):
        table = Table(title, "accuracy", "95% interval", "pairs", title=f"{judge_name} accuracy by {title}",
                      title_justify="left")
        for name, (correct, total) in sorted(counts.items()):
            low, high = wilson(correct, total)
            table.add_row(name, f"{correct / total:.3f}", f"{low:.2f}–{high:.2f}", str(total))
        shown.print(table)
    extra = (f", mean Yes+No mass {summary['mean_mass']:.3f}" if summary["mean_mass"] is not None
             else f", {result.parse_failures} of {2 * result.pairs} ratings unparsed")
    low, high = summary["interval95"]
    if result.position:
        extra += f", {result.position['consistent']:.0%} of comparisons position-consistent"
    shown.print(f"accuracy {result.accuracy:.3f} (95% interval {low:.3f}–{high:.3f}) on {counted(result.pairs, 'pair')}"
                f"{extra}, {summary['pairs_per_s']:.2f} pairs/s", highlight=False)
    if result.warning:
        err.print(f"[yellow]warning:[/] {result.warning}", highlight=False)
    if as_json:
        print(json.dumps(summary))


def bestofn(
    prompt: str = typer.Option(..., "--prompt", "-p"), n: int = typer.Option(8, "-n", min=1, help="Answers to sample."),
    category: str | None = typer.Option(None, "--category", "-c"),
    temperature: float = TemperatureOpt, top_p: float = TopPOpt, max_tokens: int = MaxTokensOpt, seed: int = SeedOpt,
    as_json: bool = typer.Option(False, "--json"),
    router: str | None = RouterOpt, plain: bool = PlainOpt,
    backend: str = BackendOpt, model: str | None = ModelOpt, device: str | None = DeviceOpt,
    dtype: str | None = DtypeOpt, ctx: int | None = CtxOpt, threads: int | None = ThreadsOpt,
    score_precision: str = PrecisionOpt, adapter: str | None = AdapterOpt,
    base_url: str | None = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
) -> None:
    """Sample n answers and pick the best by the judge's score, showing every score."""
    from ipo_tui.evaluation.pairwise import best_of_n

    if not prompt.strip():
        raise IpoError("--prompt is empty: give the instruction to answer")
    sampling = sampling_settings(n, temperature, top_p, max_tokens, seed)
    judge = open_judge(backend, model, device, dtype, ctx, threads, score_precision, adapter=adapter,
                       base_url=base_url, concurrency=concurrency, flags={"router": router, "plain": plain})
    with status(f"sampling {counted(n, 'answer')} and judging them"):
        ranked = best_of_n(judge, prompt, sampling, category)
    if as_json:
        for rank, j in enumerate(ranked, 1):
            print(json.dumps({"rank": rank, "prompt": prompt, **j.as_dict()}, ensure_ascii=False))
        return
    out.print(judgement_table(prompt, ranked))
    out.print("\nbest answer:", style="bold", highlight=False)  # not a rule: where stdout is a pipe it has no width to fill
    out.print(ranked[0].response, highlight=False, markup=False)
