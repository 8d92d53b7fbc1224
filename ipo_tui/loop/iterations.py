"""The self-improvement loop: iteration k samples and judges with policy k (the base model plus
adapter k; iteration 0 uses the base alone), proposes pairs, and trains adapter k+1 with LoRA-DPO.

Every stage is resumable: candidates, judgements and pairs live in the workspace keyed by the
policy that made them, training runs resume from their checkpoints, and the loop's own record
(a `loop` run whose config lists the iterations) says which stages are done. A loop that stopped
for any reason continues where it stopped.

How chosen and rejected are picked is the loop's `pairs_by` (loop/controls.py): the policy's own
p'yes (the method), or a control (random, longer, self-reward, another model's p'yes) on the same
candidates, so that arms differ only in the pairing.

A fixed slice of the prompts is held out of training. After each iteration the new policy is
measured on it: how often its p'yes agrees with the pairs policy k proposed there, and the mean
p'yes (by the new policy) of its own samples against those of policy k. With `bench`, policy 0
and every new policy are benchmarked on tasks they never judged (evaluation/bench.py: IFEval,
GSM8K); with `eval_file`, the benchmark includes the policy's p'yes accuracy on that labelled
pair file (the judge task). Each iteration also records what DPO drifts on: the mean length of
the policy's samples, the chosen and rejected log-probabilities through training, and whether
the reward accuracy saturated early.

A running loop says what it does in its folder, for whoever follows it from elsewhere (the app,
`ipo runs`): progress.json (iteration, stage, the stage's count, the train run) and loop.log (its
events). `launch` runs a loop in a process of its own (`python -m ipo_tui.loop.iterations`), as
the app does, so that it goes on when the app closes.

With the server backend, sampling and judging go through an OpenAI-compatible server and training
stays here, on `model` (the local copy of the weights the server serves). A trained adapter is
handed to the server (`server_handoff.hand_off`): vLLM loads it at runtime; for other servers the loop
writes what to serve, stops in status `waiting`, and goes on when resumed once it is served.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from ipo_tui import backends, stopping
from ipo_tui.backends import weights
from ipo_tui.backends.base import Sampling
from ipo_tui.errors import IpoError
from ipo_tui.judge.scoring import configured_judge, prefers
from ipo_tui.loop import controls, server_handoff, stages
from ipo_tui.training import runner
from ipo_tui.training import settings as train_settings
from ipo_tui.workspace import locks
from ipo_tui.workspace.store import LOOP_STATUSES, Store

Events = Callable[[str], None]


class Reports:
    """Where a running loop says what it does: the caller's callbacks (`event`: a line; `progress`:
    a stage's done and total; `train`: the trainer's progress and new metrics; `stopping`: the train
    run a stop waits for), and the loop folder's progress.json and loop.log for whoever follows the
    loop from another process."""

    def __init__(self, folder: Path, iterations: int, on_event: Events, on_progress, on_train, on_stopping) -> None:
        self.folder, self.iterations = folder, iterations
        self.on_event, self.on_progress, self.on_train, self.on_stopping = on_event, on_progress, on_train, on_stopping
        self.state: dict = {"iterations": iterations}

    def stage(self, iteration: int, name: str) -> None:
        last_training = {key: self.state[key] for key in ("train_run", "train_folder") if key in self.state}
        self.state = {"iterations": self.iterations, "iteration": iteration, "stage": name, **last_training}
        self._write()
        self.event(f"iteration {iteration}: {name}")

    def event(self, message: str) -> None:
        self.log(message)
        self.on_event(message)

    def log(self, message: str) -> None:
        """A line in loop.log only (where the caller's callbacks may raise: after a stop)."""
        with open(self.folder / "loop.log", "a") as log:
            log.write(message + "\n")

    def progress(self, done: int, total: int) -> None:
        self._update(done=done, total=total)
        self.on_progress(done, total)

    def train(self, run: runner.RunInfo, progress: dict, metrics: list[dict]) -> None:
        self._update(done=progress.get("step", 0), total=progress.get("max_steps"), train_run=run.id,
                     train_folder=str(run.folder))
        self.on_train(progress, metrics)

    def stopping(self, run: runner.RunInfo) -> None:
        self.log(f"stopping: {run.id} saves a checkpoint first")
        self.on_stopping(run)

    def _update(self, **values) -> None:
        if any(self.state.get(key) != value for key, value in values.items()):
            self.state.update(values)
            self._write()

    def _write(self) -> None:
        staged = self.folder / "progress.tmp"
        staged.write_text(json.dumps(self.state))
        staged.replace(self.folder / "progress.json")  # a reader never sees half of it


def start(store: Store, prompts: str, iterations: int, n: int, backend: str, model: str | None,
          sampling: Sampling, min_margin: float = 0.0, holdout: float = 0.1, overrides: dict | None = None,
          config_file: Path | None = None, eval_file: str | None = None, eval_limit: int = 64,
          limit: int | None = None, threads: int | None = None, server: dict | None = None,
          judge_flags: dict | None = None, pairs_by: str = "ipo", bench: dict | None = None) -> str:
    """Record a new loop (checked in full before anything runs); returns its id. `server` holds the
    server backend's base_url, concurrency and served_model (None: the one it lists); `judge_flags`
    the --judge-* flags every iteration's judge takes over the configured settings; `bench` the
    benchmark every policy gets: {"tasks": [...], "limit": N or None, "max_tokens": M}."""
    if iterations < 1 or n < 2:
        raise IpoError("a loop needs --iterations >= 1 and -n >= 2 (a pair needs two candidates)")
    pairs_by = controls.parse(pairs_by)
    if pairs_by.startswith("judge:"):
        weights.resolve(pairs_by.removeprefix("judge:"))  # an unknown judge model fails now
    bench = _bench_spec(bench, eval_file, eval_limit)
    if not 0 <= holdout < 1:
        raise IpoError(f"--holdout {holdout}: give a fraction in [0, 1)")
    rows = store.prompts(prompts, limit)
    if len(rows) < 2:
        raise IpoError(f"prompt set {prompts!r} has {len(rows)} prompt(s); a loop needs at least 2")
    settings = train_settings.load(config_file, overrides)
    ref = weights.resolve(model)
    backend = backends.choose(backend, ref)
    if backend == "server":
        server = {"base_url": "", "concurrency": 4, "served_model": None, **(server or {})}
        with server_handoff.connect(server, server.pop("served_model")) as engine:  # is it there, and what does it serve?
            server["base_url"], server["served"] = engine.base_url, {"0": engine.model_name}
    loop_id = f"loop-{len(store.runs('loop')) + 1:03d}"
    folder = store.path.parent / "runs" / loop_id
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"prompts": prompts, "limit": limit, "iterations": iterations, "n": n, "backend": backend, "threads": threads, "model": model or "",
            "sampling": sampling.__dict__, "min_margin": min_margin, "holdout": holdout,
            "held_out": max(1, round(len(rows) * holdout)) if holdout else 0, "settings": settings,
            "eval_file": eval_file or "", "eval_limit": eval_limit, "server": server if backend == "server" else None,
            "judge_flags": judge_flags or {}, "pairs_by": pairs_by, "bench": bench, "bench0": None,
            "done": [], "trained": None}
    store.add_run(loop_id, "loop", spec, folder, status="created")
    return loop_id


def run(store: Store, loop_id: str, on_event: Events = print, on_progress=lambda done, total: None,
        on_train=lambda progress, metrics: None, base_url: str | None = None, served_model: str | None = None,
        on_stopping=lambda run: None) -> dict:
    """Run (or continue) a loop to its last iteration; returns its record. With the server backend,
    `base_url` moves the loop to another address and `served_model` names the model that serves
    the policy the loop needs next. One process at a time runs a loop: a second is refused.
    `on_stopping` hears of a stop that waits for the trainer's checkpoint (the run)."""
    loop = _loop(store, loop_id)
    with locks.held(locks.run_lock(loop.folder), loop_id):
        reports = Reports(loop.folder, loop.config["iterations"], on_event, on_progress, on_train, on_stopping)
        return _continue(store, loop, reports, base_url, served_model)


def _loop(store: Store, loop_id: str) -> runner.RunInfo:
    loop = runner.info(store, loop_id)
    if loop.kind != "loop":
        raise IpoError(f"{loop_id} is a {loop.kind} run, not a loop")
    return loop


def launch(store: Store, loop_id: str) -> runner.RunInfo:
    """Start (or resume) a loop in a process of its own and return at once; it goes on when this
    process ends. runner.stop stops it as Ctrl-C does, and launching it again resumes it."""
    loop = _loop(store, loop_id)
    if loop.status in ("running", "completed"):
        raise IpoError(f"{loop_id} is {loop.status}; only a stopped, waiting or new loop starts")
    (loop.folder / "error.txt").unlink(missing_ok=True)
    return runner.spawn(loop, store, ["-m", "ipo_tui.loop.iterations", str(store.path.resolve()), loop_id], "loop.log",
                        stopping.owned_env(False))


def main(argv: list[str]) -> int:
    """A loop `launch` started: `python -m ipo_tui.loop.iterations WORKSPACE LOOP_ID`, holding the
    loop's lock from there. Its events and any traceback go to loop.log; a failure also to error.txt."""
    stop = stopping.REQUEST.install()  # runner.stop sends what Ctrl-C sends
    store = Store(Path(argv[0]))
    loop = _loop(store, argv[1])
    reports = Reports(loop.folder, loop.config["iterations"], stop.checked(lambda message: None),
                      stop.checked(lambda done, total: None), stop.checked(lambda progress, metrics: None),
                      lambda run: None)
    try:
        _continue(store, loop, reports, None, None)
    except KeyboardInterrupt:
        reports.log(f"{loop.id} stopped; resuming it continues where it stopped")
        return stop.exit_status
    except Exception as exc:  # noqa: BLE001 - every failure is recorded with the loop
        traceback.print_exc()
        (loop.folder / "error.txt").write_text(f"{exc if isinstance(exc, IpoError) else f'{type(exc).__name__}: {exc}'}\n")
        return 1
    finally:
        store.close()
    return 0


def _continue(store: Store, loop: runner.RunInfo, reports: Reports, base_url: str | None, served_model: str | None) -> dict:
    loop_id, spec = loop.id, loop.config
    if 0 < len(spec["done"]) < spec["iterations"] and not runner.info(store, spec["done"][-1]["train_run"]).adapter:
        k = len(spec["done"])
        raise IpoError(f"{loop_id}: policy {k}'s adapter {spec['done'][-1]['adapter']} is gone, and what policy {k} "
                       "generated and scored came from it; put it back, or start a new loop")
    if (base_url or served_model) and not spec.get("server"):
        raise IpoError(f"--base-url/--served-model: {loop_id} runs on the {spec['backend']} backend, not a server")
    if base_url:
        spec["server"]["base_url"] = base_url
    if served_model:
        spec["server"]["served"][str(len(spec["done"]) + bool(spec.get("trained")))] = served_model
    (loop.folder / "pid").write_text(str(os.getpid()))  # so that `ipo runs` and the app can tell it is running
    store.set_run(loop_id, "running", config=spec)
    try:
        for k in range(len(spec["done"]), spec["iterations"]):
            record = _iteration(store, loop_id, spec, k, reports)
            spec["done"].append(record)
            spec["trained"] = None
            store.set_run(loop_id, config=spec)
    except server_handoff.ServeNeeded:
        store.set_run(loop_id, "waiting", config=spec)
        raise
    except BaseException:
        store.set_run(loop_id, "stopped", config=spec)
        raise
    store.set_run(loop_id, "completed")
    return spec


def _iteration(store: Store, loop_id: str, spec: dict, k: int, reports: Reports) -> dict:
    prompts = store.prompts(spec["prompts"], spec["limit"])
    cut = len(prompts) - spec["held_out"]
    train_prompts, held_out = prompts[:cut], prompts[cut:]
    s = spec["sampling"]
    sampling = Sampling(spec["n"], s["temperature"], s["top_p"], s["max_tokens"], s["seed"])
    times: dict[str, float] = {}

    def stage(name: str, fn):
        reports.stage(k + 1, name)
        start = time.perf_counter()
        result = fn()
        times[name] = round(time.perf_counter() - start, 1)
        return result

    trained = spec.get("trained")  # set once adapter k+1 is trained: a resume goes on from there
    lost = trained if trained and not runner.info(store, trained["train_run"]).adapter else None
    if lost:  # the workspace moved without its run folders; nothing was made with adapter k+1 yet
        reports.event(f"iteration {k + 1}: adapter {lost['adapter']} is gone; training it again on the same pairs")
        trained = None
    if not trained:
        trained = _sample_pair_train(store, loop_id, spec, k, prompts, train_prompts, sampling, stage, times, reports)
    if lost:  # the stages that found their work stored keep the times they took
        trained["seconds"] = {**lost["seconds"], "train again": trained["seconds"]["train"]}
        store.set_run(loop_id, config=spec)
        if lost.get("adapter_sha256"):
            same = trained["adapter_sha256"] == lost["adapter_sha256"]
            reports.event(f"iteration {k + 1}: trained again, {'the same weights' if same else 'different weights'} "
                          f"(sha256 {trained['adapter_sha256'][:12]}, before {lost['adapter_sha256'][:12]})")
    times = trained["seconds"]
    if spec.get("server"):
        stage("hand off", lambda: server_handoff.hand_off(spec["server"], k + 1, runner.info(store, trained["train_run"]),
                                                   weights.resolve(spec["model"] or None), reports.event))
        store.set_run(loop_id, config=spec)  # the name that serves policy k+1

    engine = stage("load trained", lambda: _load(spec, k + 1, trained["adapter"]))
    try:
        previous = stages.Policy(*trained["policy"])
        new = stages.policy_of(engine)
        evaluation = stage("evaluate", lambda: _evaluate(store, engine, previous, trained.get("judge", previous.judge_id),
                                                         new, held_out, spec, sampling, reports.progress))
        bench = stage("benchmark", lambda: _bench(store, engine, spec, reports.progress)) if spec.get("bench") else None
    finally:
        engine.close()
    reports.stage(k + 1, "done")
    return {"iteration": k + 1, "policy": previous.judge_id, "pairs_by": spec.get("pairs_by", "ipo"),
            "adapter": trained["adapter"], "train_run": trained["train_run"], "pairs": trained["pairs"],
            "seconds": times, "eval": evaluation, "bench": bench, "drift": trained.get("drift")}


def _sample_pair_train(store: Store, loop_id: str, spec: dict, k: int, prompts, train_prompts, sampling: Sampling,
                       stage, times: dict, reports: Reports) -> dict:
    """Policy k samples (and, for the p'yes and self-reward arms, judges), the loop's pairer picks
    the pairs, adapter k+1 is trained on those of the training prompts; returns the `trained` record."""
    pairs_by = spec.get("pairs_by", "ipo")
    adapter = spec["done"][-1]["adapter"] if spec["done"] else ""
    engine = stage("load", lambda: _load(spec, k, adapter))
    policy = stages.policy_of(engine)
    pairer = controls.pairer_id(pairs_by, policy, sampling.seed)
    try:
        if spec.get("bench") and spec.get("bench0") is None:  # policy 0, once, before it changes
            spec["bench0"] = stage("benchmark policy 0", lambda: _bench(store, engine, spec, reports.progress))
            store.set_run(loop_id, config=spec)
        stage("generate", lambda: stages.generate(store, engine, policy, prompts, spec["n"], sampling, reports.progress))
        sample_tokens = _mean_tokens(store, engine, policy, train_prompts)
        if pairs_by == "ipo":
            judge = configured_judge(engine, spec.get("judge_flags"))
            pairer = judge.id
            stage("judge", lambda: stages.judge(store, judge, policy, prompts, progress=reports.progress))
        elif pairs_by == "self-reward":
            stage("judge", lambda: controls.rate(store, engine, pairer, policy, prompts, reports.progress))
    finally:
        engine.close()
    if pairs_by.startswith("judge:"):
        external = stage("load judge", lambda: _load_judge(spec, pairs_by.removeprefix("judge:")))
        try:
            judge = configured_judge(external, spec.get("judge_flags"))
            # the same judge every iteration: recorded per policy it judged, so that one iteration's
            # pairs never replace another's (a pair is kept per prompt and judge)
            pairer = f"{judge.id}@{policy.judge_id}"
            stage("judge", lambda: stages.judge(store, judge, policy, prompts, progress=reports.progress, as_judge=pairer))
        finally:
            external.close()
    if pairs_by in controls.RULES:
        report = stage("pairs", lambda: controls.by_rule(store, pairs_by, pairer, policy, prompts, sampling.seed))
    else:
        min_margin = spec["min_margin"] if pairs_by != "self-reward" else 0.0  # a 1-5 rating has its own scale
        report = stage("pairs", lambda: stages.build_pairs(store, pairer, policy, prompts, min_margin))
    train_ids = {p["id"] for p in train_prompts}
    pairs = [r for r in store.pairs(LOOP_STATUSES, spec["prompts"], pairer)
             if r["prompt_id"] in train_ids]
    if not pairs:
        raise IpoError(f"iteration {k + 1}: no pairs to train on by {pairs_by} ({report.too_close} too close, "
                       f"{report.too_few} with fewer than two judged candidates); lower --min-margin or raise -n")
    reports.event(f"iteration {k + 1}: {len(pairs)} pairs by {pairs_by} ({report.too_close} too close)")
    train_run = stage("train", lambda: _train(store, loop_id, spec, k, pairs, adapter, reports))
    trained = {"policy": [policy.model, policy.adapter], "judge": pairer, "adapter": str(train_run.adapter),
               "adapter_sha256": train_run.adapter_digest(), "train_run": train_run.id, "pairs": len(pairs), "seconds": times,
               "drift": {"sample_tokens": sample_tokens, **training_drift(runner.read_metrics(train_run.folder))}}
    spec["trained"] = trained
    store.set_run(loop_id, config=spec)
    return trained


def _load(spec: dict, k: int, adapter: str):
    """Policy k's engine: the base plus adapter k here, or the model that serves policy k."""
    if spec.get("server"):
        return server_handoff.connect(spec["server"], spec["server"]["served"][str(k)], adapter)
    ref = weights.resolve(spec["model"] or None)
    return backends.load(spec["backend"], ref, adapter=adapter or None, threads=spec["threads"])


def _load_judge(spec: dict, model: str):
    """The external judge of a judge:MODEL arm, on the loop's backend where it can load the model."""
    ref = weights.resolve(model)
    backend = "hf" if spec["backend"] == "hf" else backends.choose("auto", ref)
    return backends.load(backend, ref, threads=spec["threads"])


def _bench_spec(bench: dict | None, eval_file: str | None, eval_limit: int) -> dict | None:
    """What every policy of the loop is benchmarked on (checked now): the tasks asked, and the
    judge task on `eval_file` whenever one is given."""
    from ipo_tui.evaluation.bench import MAX_TOKENS, check, parse_tasks

    bench = dict(bench or {})
    check(bench.get("limit"), bench.get("max_tokens") or MAX_TOKENS)
    tasks = parse_tasks(",".join(bench["tasks"]), "--bench") if bench.get("tasks") else []
    if "judge" in tasks and not eval_file:
        raise IpoError("--bench judge measures the policy as a judge on a labelled pair file: give --eval-file FILE")
    if eval_file:
        from ipo_tui.evaluation.pairwise import load_pairs

        load_pairs(eval_file, 1)  # a bad file fails before the loop starts
        tasks = list(dict.fromkeys([*tasks, "judge"]))
    if not tasks:
        return None
    return {"tasks": tasks, "limit": bench.get("limit"), "max_tokens": bench.get("max_tokens") or MAX_TOKENS}


def _bench(store: Store, engine, spec: dict, on_progress) -> dict:
    """The engine's policy on the loop's benchmark: its id and each task's figures."""
    from ipo_tui.evaluation import bench

    b = spec["bench"]
    pairs = bench.PairFile(spec["eval_file"], spec["eval_limit"]) if spec["eval_file"] else None
    judge = configured_judge(engine, spec.get("judge_flags")) if "judge" in b["tasks"] else None
    bench_id, figures = bench.run(store, engine, b["tasks"], b["limit"], b["max_tokens"], judge, pairs,
                                  lambda task, done, total: on_progress(done, total))
    return {"id": bench_id, **figures}


def _mean_tokens(store: Store, engine, policy: stages.Policy, prompts) -> float | None:
    """The mean length, in the policy's tokens, of its samples on `prompts` (None without a local tokenizer)."""
    from ipo_tui.evaluation.bench import answer_tokens

    lengths = [answer_tokens(engine, r["text"]) for p in prompts
               for r in store.candidates(p["id"], policy.model, policy.adapter)]
    lengths = [n for n in lengths if n is not None]
    return round(sum(lengths) / len(lengths), 1) if lengths else None


SATURATED = 0.95  # reward accuracy this high over the last three logged steps ...
EARLY = 0.25  # ... within this fraction of the steps: the pairs were too easy to teach anything


def training_drift(metrics: list[dict]) -> dict:
    """What DPO moves besides the loss: the mean chosen and rejected log-probabilities under the
    policy being trained over the first and the last quarter of the steps (batch means, so they
    carry the batches' noise), and the step where reward accuracy saturated, if early."""
    dpo = [m for m in metrics if "logps/chosen" in m]
    drift: dict = {}
    if dpo:
        quarter = max(1, len(dpo) // 4)
        for key in ("chosen", "rejected"):
            values = [m[f"logps/{key}"] for m in dpo]
            drift[f"logps_{key}"] = [round(sum(values[:quarter]) / quarter, 2), round(sum(values[-quarter:]) / quarter, 2)]
    accuracies = [(m["step"], m["max_steps"], m["rewards/accuracies"]) for m in metrics if "rewards/accuracies" in m]
    for i in range(2, len(accuracies)):
        step, max_steps, _ = accuracies[i]
        if sum(a for _, _, a in accuracies[i - 2:i + 1]) / 3 >= SATURATED:
            if step <= EARLY * max_steps:
                drift["warning"] = (f"reward accuracy reached {SATURATED:.0%} by step {step} of {max_steps}: "
                                    "the pairs may be too easy to teach anything")
            break
    return drift


def _train(store: Store, loop_id: str, spec: dict, k: int, pairs: list, adapter: str, reports: Reports):
    run_id = f"{loop_id}-iter{k + 1}"
    try:
        train_run = runner.info(store, run_id)
    except IpoError:  # not prepared yet
        train_run = None
    if train_run and train_run.status == "completed" and not train_run.adapter:
        runner.forget(train_run, store)  # its adapter is gone: trained again
        train_run = None
    if train_run is None:
        from ipo_tui.workspace.records import pair_records

        rows = [{key: r[key] for key in ("prompt", "chosen", "rejected")}
                for r in pair_records(pairs, "trl", conversational=True)]
        train_run = runner.prepare("dpo", rows, spec["model"] or None, store, spec["settings"],
                                   init_adapter=adapter or None, run_id=run_id)
    if train_run.status != "completed":
        train_run = runner.launch(train_run, store, owned=True)
        train_run = runner.follow(train_run, store, lambda progress, metrics: reports.train(train_run, progress, metrics),
                                  on_stopping=reports.stopping)
        if train_run.status != "completed":
            raise IpoError(f"iteration {k + 1}: training {train_run.status}; `ipo loop --resume {loop_id}` continues")
    return train_run


def _evaluate(store: Store, engine, previous: stages.Policy, previous_judge: str, new: stages.Policy, held_out,
              spec: dict, sampling: Sampling, on_progress) -> dict:
    """The new policy on the held-out prompts, judged by the new policy under the loop's judge
    settings, and the length of its samples there."""
    judge = configured_judge(engine, spec.get("judge_flags"))
    result: dict = {"held_out_prompts": len(held_out)}
    held_ids = {p["id"] for p in held_out}
    agree = total = 0
    for pair in store.pairs(LOOP_STATUSES, spec["prompts"], previous_judge):
        if pair["prompt_id"] in held_ids:
            chosen, rejected = judge.score(pair["prompt"], [pair["chosen"], pair["rejected"]])
            agree, total = agree + prefers(chosen.score, rejected.score), total + 1
    result["held_out_agreement"] = round(agree / total, 4) if total else None
    if held_out:
        # the new policy's samples here are the ones the next iteration would draw, so nothing is wasted
        stages.generate(store, engine, new, held_out, spec["n"], sampling, on_progress)
        result["mean_tokens_previous_samples"] = _mean_tokens(store, engine, previous, held_out)
        result["mean_tokens_new_samples"] = _mean_tokens(store, engine, new, held_out)
        means = {}
        for name, policy in (("previous", previous), ("new", new)):
            stages.judge(store, judge, policy, held_out)
            scores = [r["score"] for p in held_out for r in store.judgements(p["id"], judge.id, policy.model, policy.adapter)
                      if r["score"] is not None]
            means[name] = round(sum(scores) / len(scores), 4) if scores else None
        result["mean_score_previous_samples"], result["mean_score_new_samples"] = means["previous"], means["new"]
    return result


def benchmarks(store: Store, record: dict) -> list[dict]:
    """Policy 0 and each trained policy of a loop record with a benchmark: {"policy", "bench",
    "figures" (name -> value), "change" (name -> evaluation.bench.compare's row against policy 0)}."""
    from ipo_tui.evaluation.bench import compare

    entries = [(0, record.get("bench0"))] + [(it["iteration"], it.get("bench")) for it in record.get("done") or []]
    entries = [(k, b) for k, b in entries if b]
    base = entries[0][1] if entries and entries[0][0] == 0 else None
    rows = []
    for k, b in entries:
        figures = {}
        if "ifeval" in b:
            for level in ("prompt_strict", "prompt_loose", "inst_strict", "inst_loose"):
                figures[f"ifeval {level.replace('_', ' ')}"] = b["ifeval"][level]
        for task in ("gsm8k", "judge"):
            if task in b:
                figures[task] = b[task]["accuracy"]
        change = {}
        if base and k and base["id"] != b["id"]:
            with contextlib.suppress(IpoError):  # no items in common (another --bench-limit): no test
                change = compare(store, base["id"], b["id"])
        rows.append({"policy": k, "bench": b["id"], "figures": figures, "change": change})
    return rows


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
