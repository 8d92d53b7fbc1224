"""`ipo bench`: a policy on IFEval, GSM8K and its own judging accuracy; `ipo bench list` and
`ipo bench compare A B` on the stored results."""

from __future__ import annotations

import json
from pathlib import Path

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
    ModelOpt,
    PrecisionOpt,
    ThreadsOpt,
    WorkspaceOpt,
    cell,
    err,
    open_backend,
    open_store,
    out,
    progress_bar,
)
from ipo_tui.errors import IpoError

app = typer.Typer(help="Objective benchmarks of a policy: IFEval, GSM8K, judge accuracy; list and compare results.",
                  pretty_exceptions_enable=False, invoke_without_command=True)


@app.callback()
def bench(
    ctx: typer.Context,
    tasks: str = typer.Option("ifeval", "--tasks", "-t", help="Comma-separated: ifeval, gsm8k, judge."),
    limit: int | None = typer.Option(None, "--limit", min=1, help="A fixed sample of N items of each task, spread over it (default: all)."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Greedy answers stop here; results under another value are kept apart."),
    pairs: str | None = typer.Option(None, "--pairs", help="judge task: a RewardBench-format pair file."),
    pairs_limit: int | None = typer.Option(None, "--pairs-limit", min=1, help="judge task: a fixed sample of N pairs."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object of the figures."),
    backend: str = BackendOpt, model: str | None = ModelOpt, adapter: str | None = AdapterOpt,
    device: str | None = DeviceOpt, dtype: str | None = DtypeOpt, ctx_len: int | None = CtxOpt,
    threads: int | None = ThreadsOpt, score_precision: str = PrecisionOpt,
    base_url: str | None = BaseUrlOpt, concurrency: int = ConcurrencyOpt, workspace: Path | None = WorkspaceOpt,
) -> None:
    """Benchmark a policy (a model, optionally with an adapter): greedy answers checked by program,
    resumable, stored in the workspace. `ipo bench --tasks ifeval,gsm8k --adapter runs/dpo-001/adapter`."""
    if ctx.invoked_subcommand is not None:
        return
    from ipo_tui.evaluation import bench as benchmarks
    from ipo_tui.judge.scoring import configured_judge

    chosen = benchmarks.parse_tasks(tasks)
    benchmarks.check(limit, max_tokens)  # before the model loads
    pair_file = benchmarks.PairFile(pairs, pairs_limit) if pairs else None
    if "judge" in chosen and pair_file is None:
        raise IpoError("the judge task needs a labelled pair file: give --pairs FILE (RewardBench format)")
    if pair_file:
        from ipo_tui.evaluation.pairwise import load_pairs

        load_pairs(pairs, 1)  # a bad file fails now, before the model loads
    if "ifeval" in chosen:
        from ipo_tui.evaluation.ifeval import checkers

        checkers()  # a missing lm-eval fails now too
    err.print(f"benchmark: {benchmarks.plan(chosen, limit, pair_file)}", highlight=False)
    store = open_store(workspace)
    engine = open_backend(backend, model, device, dtype, ctx_len, threads, score_precision, adapter, base_url, concurrency)
    try:
        judge = configured_judge(engine) if "judge" in chosen else None
        bar, _ = progress_bar("benchmark")
        with bar:
            def progress(task: str, done: int, total: int) -> None:
                bar.update(bar.task_ids[0], description=task, completed=done, total=total)

            bench_id, figures = benchmarks.run(store, engine, chosen, limit, max_tokens, judge, pair_file, progress)
    finally:
        engine.close()
    policy = store.bench_row(bench_id)
    (err if as_json else out).print(figures_table(f"{bench_id}: {_policy_name(policy)}", figures))
    if as_json:
        print(json.dumps({"bench": bench_id, **figures}))


def figures_table(title: str, figures: dict) -> Table:
    """Each task's figures with their intervals; the time and answer lengths below."""
    from ipo_tui.evaluation.bench import figure_rows

    table = Table("task", "figure", "value", "95% interval", "n", title=title, title_justify="left")
    for task, name, value, low, high, n in figure_rows(figures):
        table.add_row(task, name, f"{value:.3f}", f"{low:.3f}–{high:.3f}", str(n))
    notes = []
    for task, values in figures.items():
        note = f"{task}: {values['seconds']:.0f} s"
        if values.get("mean_tokens") is not None:
            note += f", answers {values['mean_tokens']:.0f} tokens on average, {values['at_max_tokens']:.0%} stopped at --max-tokens"
        notes.append(note)
    table.caption = "\n".join(notes)
    table.caption_justify = "left"
    return table


def _policy_name(row) -> str:
    return f"{row['model']}" + (f" + {row['adapter']}" if row["adapter"] else "")


@app.command("list")
def bench_list(workspace: Path | None = WorkspaceOpt) -> None:
    """The stored benchmarks: policy, settings and each task's headline figure over its stored items."""
    from ipo_tui.evaluation import bench as benchmarks

    store = open_store(workspace)
    table = Table("bench", "policy", "settings", "figures", "answers")
    for row in store.benches():
        figures = benchmarks.stored_figures(store, row["id"])
        text = ", ".join(f"{task} {benchmarks.HEADLINE[task]} {v[benchmarks.HEADLINE[task]]:.3f} ({_count(v)})"
                         for task, v in figures.items())
        lengths = ", ".join(f"{task} {v['mean_tokens']:.0f} tokens, {v['at_max_tokens']:.0%} at max"
                            for task, v in figures.items() if v.get("mean_tokens") is not None)
        s = json.loads(row["settings"])
        table.add_row(row["id"], _policy_name(row), f"{s['backend']}, {s['decoding']}, max {s['max_tokens']}",
                      cell(text), cell(lengths))
    out.print(table)


def _count(values: dict) -> str:
    """n=50, or `1 of 541 asked: incomplete` for a task stopped before its end."""
    from ipo_tui.evaluation.bench import shortfall

    gap = shortfall(values)
    return f"{gap} asked: incomplete" if gap else f"n={values['n']}"


@app.command("compare")
def bench_compare(a: str = typer.Argument(..., help="A benchmark id (`ipo bench list`): the baseline."),
                  b: str = typer.Argument(..., help="Another: the policy to compare with it."),
                  as_json: bool = typer.Option(False, "--json"), workspace: Path | None = WorkspaceOpt) -> None:
    """The difference B - A per task on the items both hold, with the exact McNemar test's p-value."""
    from ipo_tui.evaluation import bench as benchmarks

    store = open_store(workspace)
    report = benchmarks.compare(store, a, b)
    table = Table("task", "n", a, b, "B - A", "only A right", "only B right", "McNemar p",
                  title=f"{b} against {a}", title_justify="left")
    for name, r in report.items():
        table.add_row(name + (" (incomplete)" if r["incomplete"] else ""), str(r["n"]), f"{r['a']:.3f}", f"{r['b']:.3f}",
                      f"{r['difference']:+.3f}", str(r["only_a"]), str(r["only_b"]), f"{r['p_value']:.3g}")
    (err if as_json else out).print(table)
    ids = {"a": a, "b": b}
    notes = dict.fromkeys(f"{ids[side]}'s {name.split()[0]} stopped short: {gap} items asked"
                          for name, r in report.items() for side, gap in r["incomplete"].items())
    for note in notes:
        err.print(f"[yellow]{note}; the comparison covers only the items both hold[/]", highlight=False)
    if as_json:
        print(json.dumps(report))
