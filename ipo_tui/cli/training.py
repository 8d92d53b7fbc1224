"""`ipo train ...` and `ipo runs`: LoRA-DPO and SFT runs in a child process, followed from here."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from ipo_tui.cli.common import (
    BaseUrlOpt,
    ConcurrencyOpt,
    LimitOpt,
    MaxTokensOpt,
    MinMarginOpt,
    ModelOpt,
    PlainOpt,
    RouterOpt,
    SeedOpt,
    TemperatureOpt,
    TopPOpt,
    WorkspaceOpt,
    cell,
    err,
    open_store,
    out,
    progress_bar,
    sampling_settings,
    says_when_stopped,
)
from ipo_tui import stopping
from ipo_tui.errors import IpoError, Stopped
from ipo_tui.workspace.store import TRAINED_STATUSES

train_app = typer.Typer(help="LoRA training runs: dpo, sft, resume, stop.", no_args_is_help=True,
                        pretty_exceptions_enable=False)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML of training settings (see `ipo train defaults`).")
SetOpt = typer.Option(None, "--set", help="One setting, KEY=VALUE (repeatable), over --config: --set learning_rate=1e-4.")
LauncherOpt = typer.Option("local", "--launcher", help="local (one process) or accelerate (`accelerate launch`, several GPUs or CPU processes).")
ProcessesOpt = typer.Option(None, "--processes", min=1, help="With --launcher accelerate: processes, one per GPU (default: every GPU; 2 on a CPU).")
StrategyOpt = typer.Option("ddp", "--strategy", help="With --launcher accelerate: ddp, fsdp or deepspeed (ZeRO-2, where installed).")
TrainDtypeOpt = typer.Option(None, "--dtype", help="Training precision: auto (bf16 where the CPU or GPU computes it natively, else fp32), fp32, bf16 or fp16; over the config's dtype.")
DetachOpt = typer.Option(False, "--detach", "-d", help="Start the run and return; follow it in the app or with `ipo runs`.")


def overrides(pairs: list[str] | None, dtype: str | None = None) -> dict:
    """--set KEY=VALUE items (and --dtype) as training settings."""
    import yaml

    result = {"dtype": dtype} if dtype else {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise IpoError(f"--set {item}: write KEY=VALUE, e.g. --set learning_rate=1e-4")
        result[key.strip()] = yaml.safe_load(value)
    return result


def follow(run, store) -> None:
    """A progress bar with loss, margin and accuracy until the run ends; Ctrl-C stops it cleanly."""
    from rich.progress import TextColumn

    from ipo_tui.training import runner

    bar, _ = progress_bar(run.id, TextColumn("{task.fields[stats]}"), stats="loading model")
    task = bar.task_ids[0]

    def update(progress: dict, metrics: list[dict]) -> None:
        stats = bar.tasks[0].fields["stats"]
        if metrics:
            m = metrics[-1]
            stats = f"loss {m['loss']:.4f}"
            if "rewards/margins" in m:
                stats += f"  margin {m['rewards/margins']:+.3f}  acc {m['rewards/accuracies']:.2f}"
        elif progress:
            stats = "training"
        bar.update(task, completed=progress.get("step", 0), total=progress.get("max_steps"), stats=stats)

    try:
        with bar:
            run = runner.follow(run, store, update, on_stopping=lambda r: bar.update(
                task, stats="stopping: finishing the step, then saving a checkpoint"))
    except KeyboardInterrupt:
        raise Stopped(stop_message(runner.info(store, run.id))) from None
    report(run)


def stop_message(run) -> str:
    """What a stop signal left of a foreground run: its checkpoint, or a trainer still saving one."""
    from ipo_tui.training import runner

    if run.status == "running":
        return f"{run.id} is saving its checkpoint and stopping; `ipo runs {run.id}` shows when it has"
    return f"{run.id} stopped at step {runner.last_checkpoint_step(run)}; continue with `ipo train resume {run.id}`"


def report(run) -> None:
    if run.status == "completed":
        out.print(f"{run.id} completed: adapter in {run.adapter}")
    elif run.status == "stopped":
        out.print(stop_message(run))
    else:
        reason = (run.folder / "error.txt").read_text().strip() if (run.folder / "error.txt").exists() else "see train.log"
        raise IpoError(f"{run.id} {run.status}: {reason} ({run.folder / 'train.log'}); `ipo train resume {run.id}` retries")


def launch(kind: str, data: str, model, config, set_, dtype, detach: bool, workspace, launcher: str, processes,
           strategy: str) -> None:
    from ipo_tui.training import runner

    store = open_store(workspace)
    with err.status("preparing the run") as status:
        run = runner.prepare(kind, data, model, store, overrides(set_, dtype), config, launcher=launcher, processes=processes,
                             strategy=strategy,
                             on_status=status.update)
    run = runner.launch(run, store, owned=not detach)
    out.print(f"{run.id}: {kind} on {run.config['examples']} examples, folder {run.folder}")
    if detach:
        out.print(f"running in the background (pid file {run.folder / 'pid'}); `ipo runs {run.id}` shows it")
    else:
        follow(run, store)


@train_app.command("dpo")
def train_dpo(
    pairs: str = typer.Option(",".join(TRAINED_STATUSES), "--pairs", help="A TRL pair file, or workspace pairs by status (the pairs a person kept by default; accepted@SET for one prompt set)."),
    model: str | None = ModelOpt, config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt,
    dtype: str | None = TrainDtypeOpt, detach: bool = DetachOpt, workspace: Path | None = WorkspaceOpt,
    launcher: str = LauncherOpt, processes: int | None = ProcessesOpt, strategy: str = StrategyOpt,
) -> None:
    """Train a LoRA adapter with DPO on chosen/rejected pairs."""
    launch("dpo", pairs, model, config, set_, dtype, detach, workspace, launcher, processes, strategy)


@train_app.command("sft")
def train_sft(
    data: str = typer.Option(..., "--data", help="JSONL/JSON/CSV/Parquet with prompt and response (or completion) fields."),
    model: str | None = ModelOpt, config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt,
    dtype: str | None = TrainDtypeOpt, detach: bool = DetachOpt, workspace: Path | None = WorkspaceOpt,
    launcher: str = LauncherOpt, processes: int | None = ProcessesOpt, strategy: str = StrategyOpt,
) -> None:
    """Supervised fine-tuning of a LoRA adapter (the optional first stage)."""
    launch("sft", data, model, config, set_, dtype, detach, workspace, launcher, processes, strategy)


@train_app.command("resume")
def train_resume(run_id: str, detach: bool = DetachOpt, workspace: Path | None = WorkspaceOpt) -> None:
    """Continue a stopped, failed or interrupted run from its last checkpoint."""
    from ipo_tui.training import runner

    store = open_store(workspace)
    run = runner.resume(run_id, store, owned=not detach)
    out.print(f"{run.id}: resuming from step {runner.last_checkpoint_step(run)}")
    if not detach:
        follow(run, store)


@train_app.command("stop")
def train_stop(run_id: str, workspace: Path | None = WorkspaceOpt) -> None:
    """Ask a running run to save a checkpoint and stop."""
    from ipo_tui.training import runner

    if runner.stop(run_id, open_store(workspace)):
        out.print(f"{run_id}: stopped (it had done no step since its last checkpoint)")
    else:
        out.print(f"{run_id}: stopping after the current step, which it saves first")


@train_app.command("defaults")
def train_defaults() -> None:
    """Print the default training settings (YAML) to copy and edit."""
    from ipo_tui.training.settings import defaults_text

    print(defaults_text(), end="")


def runs(run_id: str | None = typer.Argument(None, help="Show one run in detail."),
         as_json: bool = typer.Option(False, "--json", help="One JSON object per run (with a run id: the run and its metrics)."),
         workspace: Path | None = WorkspaceOpt) -> None:
    """Training runs and loop iterations with their last metrics."""
    from ipo_tui.training import runner

    store = open_store(workspace)
    if as_json:
        for run in [runner.info(store, run_id)] if run_id else runner.list_runs(store):
            _print_run_json(run, runner.read_metrics(run.folder) if run.kind in ("dpo", "sft") else [], bool(run_id))
        return
    if run_id:
        run = runner.info(store, run_id)
        if run.kind == "loop":
            out.print(f"{run.id}  loop  {run.status}  {run.folder}  pairs by {run.config.get('pairs_by', 'ipo')}")
            show_loop(store, run.config)
            return
        metrics = runner.read_metrics(run.folder)
        out.print(f"{run.id}  {run.kind}  {run.status}  {run.folder}")
        table = Table("step", "loss", "margin", "accuracy", "lr", "elapsed s")
        for m in metrics[-20:]:
            table.add_row(str(m["step"]), f"{m['loss']:.4f}", cell(m.get("rewards/margins"), ".3f"),
                          cell(m.get("rewards/accuracies"), ".3f"), f"{m.get('learning_rate', 0):.2e}", f"{m['elapsed_s']:.0f}")
        out.print(table)
        return
    table = Table("run", "kind", "status", "examples", "step", "loss", "margin", "adapter", "started")
    for run in runner.list_runs(store):
        metrics = runner.read_metrics(run.folder) if run.kind in ("dpo", "sft") else []
        last = metrics[-1] if metrics else {}
        step = f"{last['step']}/{last['max_steps']}" if last else ""
        table.add_row(run.id, run.kind, run.status, str(run.config.get("examples", "")), step,
                      cell(last.get("loss"), ".3f"), cell(last.get("rewards/margins"), ".3f"), "yes" if run.adapter else "",
                      run.created_at)
    out.print(table)


def _print_run_json(run, metrics: list[dict], every_step: bool) -> None:
    """A run as one JSON line: its record, its last metrics, and every step's where asked."""
    import json

    row = {"id": run.id, "kind": run.kind, "status": run.status, "folder": str(run.folder), "created_at": run.created_at,
           "adapter": str(run.adapter) if run.adapter else None, "config": run.config, "last": metrics[-1] if metrics else None}
    print(json.dumps({**row, "metrics": metrics} if every_step else row))


def loop(
    prompts: str | None = typer.Option(None, "--prompts", help="Name of an imported prompt set (a new loop)."),
    iterations: int = typer.Option(1, "--iterations", "-k", min=1, help="Adapters to train, one per iteration."),
    n: int = typer.Option(4, "-n", min=2, help="Candidates per prompt (two at least, to make a pair)."),
    limit: int | None = LimitOpt,
    resume_id: str | None = typer.Option(None, "--resume", help="Continue this loop where it stopped."),
    min_margin: float = MinMarginOpt,
    holdout: float = typer.Option(0.1, "--holdout", min=0.0, help="Fraction of the prompts kept out of training to measure each new policy."),
    eval_file: str | None = typer.Option(None, "--eval-file", help="A labelled pair file: policy 0 and each new policy are benchmarked on their accuracy as judges there (the judge task)."),
    eval_limit: int = typer.Option(64, "--eval-limit", min=1, help="A fixed sample of N pairs of --eval-file."),
    pairs_by: str = typer.Option("ipo", "--pairs-by", help="How chosen and rejected are picked among the candidates: ipo (the policy's own score), or a control: random, longer, self-reward (its 1-5 rating), judge:MODEL (another model's score)."),
    bench: str | None = typer.Option(None, "--bench", help="Benchmark policy 0 and every new policy: ifeval, gsm8k, judge (comma-separated; judge uses --eval-file, which implies it)."),
    bench_limit: int | None = typer.Option(None, "--bench-limit", min=1, help="A fixed sample of N items of each benchmark task (default: all)."),
    bench_max_tokens: int = typer.Option(512, "--bench-max-tokens", min=1, help="Greedy benchmark answers stop here."),
    temperature: float = TemperatureOpt, top_p: float = TopPOpt, max_tokens: int = MaxTokensOpt, seed: int = SeedOpt,
    backend: str = typer.Option("auto", "--backend", "-b", help="Engine that samples and judges: hf, llamacpp, server, or auto (server with --base-url, llamacpp for GGUF files)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for sampling and judging (default: all cores)."),
    base_url: str | None = BaseUrlOpt, concurrency: int = ConcurrencyOpt,
    served_model: str | None = typer.Option(None, "--served-model", help="server: the served model of the policy the loop needs (default: the one the server lists)."),
    model: str | None = typer.Option(None, "--model", "-m", help="The model to train: a GGUF file, an HF folder or id (default: the embedded SmolLM2-135M-Instruct). With a server, the local copy of the weights it serves."),
    config: Path | None = ConfigOpt, set_: list[str] | None = SetOpt, dtype: str | None = TrainDtypeOpt,
    router: str | None = RouterOpt, plain: bool = PlainOpt,
    workspace: Path | None = WorkspaceOpt,
) -> None:
    """Iterate: sample and judge with policy k, build pairs, train adapter k+1 (LoRA-DPO).

    With a server (--base-url), training runs here and each new adapter is handed to the server
    (vLLM loads it at runtime); other servers get a file to serve and the loop waits for a resume."""
    from ipo_tui.loop import iterations as loops

    store = open_store(workspace)
    moved = {"base_url": base_url, "served_model": served_model}  # a resumed server loop's new address or name
    if resume_id is None:
        if prompts is None:
            raise IpoError("give --prompts NAME to start a loop, or --resume LOOP to continue one (`ipo runs` lists them)")
        if backend == "auto" and base_url:
            backend = "server"
        if base_url and backend != "server":
            raise IpoError(f"--base-url goes with --backend server, not {backend}")
        resume_id = loops.start(store, prompts, iterations, n, backend, model,
                                sampling_settings(n, temperature, top_p, max_tokens, seed), min_margin, holdout,
                                overrides(set_, dtype), config, eval_file, eval_limit, limit, threads,
                                {**moved, "concurrency": concurrency}, {"router": router, "plain": plain}, pairs_by,
                                {"tasks": bench.split(",") if bench else [], "limit": bench_limit,
                                 "max_tokens": bench_max_tokens})
        moved = {}
        out.print(f"{resume_id}: {iterations} iteration(s) on {prompts!r}, folder {store.path.parent / 'runs' / resume_id}")
    store.run(resume_id)  # an unknown id fails here, before the progress bar shows
    bar, progress = progress_bar("working")

    def event(message: str) -> None:
        bar.update(bar.task_ids[0], description=message, completed=0, total=None)
        bar.console.print(message)

    def train_progress(state: dict, metrics: list[dict]) -> None:
        stats = f"  loss {metrics[-1]['loss']:.4f}" if metrics else ""
        bar.update(bar.task_ids[0], completed=state.get("step", 0), total=state.get("max_steps"),
                   description=f"training{stats}")

    stop = stopping.REQUEST  # a stop lost in a finalizer is raised again at the next step
    with says_when_stopped(resume_id, f"continue with `ipo loop --resume {resume_id}`"), bar:
        record = loops.run(store, resume_id, stop.checked(event), stop.checked(progress),
                           stop.checked(train_progress), **moved, on_stopping=_says_stopping(bar))
    show_loop(store, record)


def _says_stopping(bar):
    """The loop bar's line while a stop waits for the trainer's checkpoint (not stop-checked: it
    speaks during the stop)."""
    return lambda run: bar.update(bar.task_ids[0], description=f"stopping: {run.id} finishes its step and saves a checkpoint")


def show_loop(store, record: dict) -> None:
    """A loop's iterations (pairs, self-agreement, drift), then each policy's benchmark figures with
    the change against policy 0 and its McNemar p-value, and a bar per policy of the first figure."""
    from ipo_tui.loop.iterations import benchmarks

    table = Table("iteration", "pairs by", "pairs", "held-out agreement", "mean score prev → new", "sample tokens",
                  "logp chosen / rejected", title="iterations", title_justify="left")
    done = record.get("done") or []  # a loop record cut short (a damaged or hand-edited workspace)
    for it in done:
        e, d = it.get("eval") or {}, it.get("drift") or {}
        logps = f"{d['logps_chosen'][1]:.0f} / {d['logps_rejected'][1]:.0f}" if "logps_chosen" in d else ""
        table.add_row(str(it["iteration"]), it.get("pairs_by", "ipo"), str(it["pairs"]), cell(e.get("held_out_agreement"), ".3f"),
                      f"{cell(e.get('mean_score_previous_samples'), '+.2f')} → {cell(e.get('mean_score_new_samples'), '+.2f')}",
                      "" if d.get("sample_tokens") is None else f"{d['sample_tokens']:.0f}", logps)
    out.print(table)
    for it in done:
        out.print(f"iteration {it['iteration']}, seconds per stage: "
                  + ", ".join(f"{k} {v:.0f}" for k, v in (it.get("seconds") or {}).items()), highlight=False)
        if (it.get("drift") or {}).get("warning"):
            out.print(f"[yellow]iteration {it['iteration']}:[/] {it['drift']['warning']}", highlight=False)
    rows = benchmarks(store, record)
    if not rows:
        return
    names = list(rows[0]["figures"])
    bench = Table("policy", "bench", *names, title="benchmarks: figure (change against policy 0, McNemar p)",
                  title_justify="left")
    for row in rows:
        cells = []
        for name in names:
            value, change = row["figures"].get(name), row["change"].get(name)
            cells.append(cell(value, ".3f")
                         + (f" ({change['difference']:+.3f}, p={change['p_value']:.2g})" if change else ""))
        bench.add_row(str(row["policy"]), row["bench"], *cells)
    out.print(bench)
    first = names[0]
    out.print(f"{first} by policy")
    for row in rows:
        value = row["figures"].get(first) or 0.0
        out.print(f"  policy {row['policy']}  {'█' * round(40 * value):<40}  {value:.3f}", highlight=False)
