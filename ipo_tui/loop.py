"""The self-improvement loop: iteration k samples and judges with policy k (the base model plus
adapter k; iteration 0 uses the base alone), proposes pairs, and trains adapter k+1 with LoRA-DPO.

Every stage is resumable: candidates, judgements and pairs live in the workspace keyed by the
policy that made them, training runs resume from their checkpoints, and the loop's own record
(a `loop` run whose config lists the iterations) says which stages are done. A loop that stopped
for any reason continues where it stopped.

A fixed slice of the prompts is held out of training. After each iteration the new policy is
measured on it: how often its p'yes agrees with the pairs policy k proposed there, and the mean
p'yes (by the new policy) of its own samples against those of policy k. With `eval_file`, the
new policy's p'yes accuracy on a labelled pair file is measured too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ipo_tui import backends, models, pipeline
from ipo_tui.backends.base import Sampling
from ipo_tui.errors import IpoError
from ipo_tui.judge import Judge
from ipo_tui.store import Store
from ipo_tui.train import runner
from ipo_tui.train import settings as train_settings

Events = Callable[[str], None]


def start(store: Store, prompts: str, iterations: int, n: int, backend: str, model: str | None,
          sampling: Sampling, min_margin: float = 0.0, holdout: float = 0.1, overrides: dict | None = None,
          config_file: Path | None = None, eval_file: str | None = None, eval_limit: int = 64,
          limit: int | None = None, threads: int | None = None) -> str:
    """Record a new loop (checked in full before anything runs); returns its id."""
    if iterations < 1 or n < 2:
        raise IpoError("a loop needs --iterations >= 1 and -n >= 2 (a pair needs two candidates)")
    if not 0 <= holdout < 1:
        raise IpoError(f"--holdout {holdout}: give a fraction in [0, 1)")
    rows = store.prompts(prompts, limit)
    if len(rows) < 2:
        raise IpoError(f"prompt set {prompts!r} has {len(rows)} prompt(s); a loop needs at least 2")
    settings = train_settings.load(config_file, overrides)
    ref = models.resolve(model)
    backend = backend if backend != "auto" else ("llamacpp" if ref.kind == "gguf" else "hf")
    if backend == "server":
        raise IpoError("the loop samples and judges with the adapters it trains here; a server cannot load them "
                       "(use --backend llamacpp or hf; for a served model, train with `ipo train dpo` and serve the "
                       "`ipo export merge` result)")
    if backend not in backends.NAMES:
        raise IpoError(f"unknown backend {backend!r}: choose one of {', '.join(backends.NAMES)}")
    loop_id = f"loop-{len(store.runs('loop')) + 1:03d}"
    folder = store.path.parent / "runs" / loop_id
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"prompts": prompts, "limit": limit, "iterations": iterations, "n": n, "backend": backend, "threads": threads, "model": model or "",
            "sampling": sampling.__dict__, "min_margin": min_margin, "holdout": holdout,
            "held_out": max(1, round(len(rows) * holdout)) if holdout else 0, "settings": settings,
            "eval_file": eval_file or "", "eval_limit": eval_limit, "done": []}
    store.add_run(loop_id, "loop", spec, folder, status="created")
    return loop_id


def run(store: Store, loop_id: str, on_event: Events = print, on_progress=lambda done, total: None,
        on_train=lambda progress, metrics: None) -> dict:
    """Run (or continue) a loop to its last iteration; returns its record."""
    row = store.run(loop_id)
    if row["kind"] != "loop":
        raise IpoError(f"{loop_id} is a {row['kind']} run, not a loop")
    spec = runner.info(store, loop_id).config
    store.set_run(loop_id, "running")
    try:
        for k in range(len(spec["done"]), spec["iterations"]):
            record = _iteration(store, loop_id, spec, k, on_event, on_progress, on_train)
            spec["done"].append(record)
            store.set_run(loop_id, config=spec)
    except BaseException:
        store.set_run(loop_id, "stopped")
        raise
    store.set_run(loop_id, "completed")
    return spec


def _iteration(store: Store, loop_id: str, spec: dict, k: int, on_event: Events, on_progress, on_train) -> dict:
    prompts = store.prompts(spec["prompts"], spec["limit"])
    cut = len(prompts) - spec["held_out"]
    train_prompts, held_out = prompts[:cut], prompts[cut:]
    adapter = spec["done"][-1]["adapter"] if spec["done"] else ""
    ref = models.resolve(spec["model"] or None)
    s = spec["sampling"]
    sampling = Sampling(spec["n"], s["temperature"], s["top_p"], s["max_tokens"], s["seed"])
    times: dict[str, float] = {}

    def stage(name: str, fn):
        on_event(f"iteration {k + 1}: {name}")
        start = time.perf_counter()
        result = fn()
        times[name] = round(time.perf_counter() - start, 1)
        return result

    engine = stage("load", lambda: backends.load(spec["backend"], ref, adapter=adapter or None, threads=spec["threads"]))
    policy = pipeline.policy_of(engine)
    judge = Judge(engine)
    stage("generate", lambda: pipeline.generate(store, engine, policy, prompts, spec["n"], sampling, on_progress))
    stage("judge", lambda: pipeline.judge(store, judge, policy, prompts, progress=on_progress))
    report = stage("pairs", lambda: pipeline.build_pairs(store, policy.judge_id, policy, prompts, spec["min_margin"]))
    engine.close()
    train_ids = {p["id"] for p in train_prompts}
    pairs = [r for r in store.pairs(("proposed", "accepted", "edited"), spec["prompts"], policy.judge_id)
             if r["prompt_id"] in train_ids]
    if not pairs:
        raise IpoError(f"iteration {k + 1}: no pairs to train on ({report.too_close} too close, {report.too_few} with "
                       "fewer than two judged candidates); lower --min-margin or raise -n")
    on_event(f"iteration {k + 1}: {len(pairs)} pairs ({report.too_close} too close)")

    run_id = f"{loop_id}-iter{k + 1}"
    try:
        train_run = runner.info(store, run_id)
    except IpoError:
        from ipo_tui.datasets import pair_records

        rows = [{key: r[key] for key in ("prompt", "chosen", "rejected")}
                for r in pair_records(pairs, "trl", conversational=True)]
        train_run = runner.prepare("dpo", rows, spec["model"] or None, store, spec["settings"],
                                   init_adapter=adapter or None, run_id=run_id)
    if train_run.status != "completed":
        train_run = stage("train", lambda: runner.follow(runner.launch(train_run, store), store, on_train))
        if train_run.status != "completed":
            raise IpoError(f"iteration {k + 1}: training {train_run.status}; `ipo loop --resume {loop_id}` continues")
    new_adapter = str(train_run.adapter)

    engine = stage("load trained", lambda: backends.load(spec["backend"], ref, adapter=new_adapter, threads=spec["threads"]))
    try:
        evaluation = stage("evaluate", lambda: _evaluate(store, engine, policy, held_out, spec, sampling, on_progress))
    finally:
        engine.close()
    on_event(f"iteration {k + 1}: done")
    return {"iteration": k + 1, "policy": policy.judge_id, "adapter": new_adapter, "train_run": run_id,
            "pairs": len(pairs), "seconds": times, "eval": evaluation}


def _evaluate(store: Store, engine, previous: pipeline.Policy, held_out, spec: dict, sampling: Sampling,
              on_progress) -> dict:
    """The new policy on the held-out prompts (and the labelled file, if any)."""
    new = pipeline.policy_of(engine)
    judge = Judge(engine)
    result: dict = {"held_out_prompts": len(held_out)}
    held_ids = {p["id"] for p in held_out}
    agree = total = 0
    for pair in store.pairs(("proposed", "accepted", "edited"), spec["prompts"], previous.judge_id):
        if pair["prompt_id"] in held_ids:
            chosen, rejected = judge.score(pair["prompt"], [pair["chosen"], pair["rejected"]])
            agree, total = agree + (chosen.p_yes > rejected.p_yes), total + 1
    result["held_out_agreement"] = round(agree / total, 4) if total else None
    if held_out:
        # the new policy's samples here are the ones the next iteration would draw, so nothing is wasted
        pipeline.generate(store, engine, new, held_out, spec["n"], sampling, on_progress)
        means = {}
        for name, policy in (("previous", previous), ("new", new)):
            pipeline.judge(store, judge, policy, held_out)
            scores = [r["p_yes"] for p in held_out for r in store.judgements(p["id"], new.judge_id, policy.model, policy.adapter)
                      if r["p_yes"] is not None]
            means[name] = round(sum(scores) / len(scores), 4) if scores else None
        result["mean_p_yes_previous_samples"], result["mean_p_yes_new_samples"] = means["previous"], means["new"]
    if spec["eval_file"]:
        from ipo_tui.evaluate import evaluate, load_pairs

        labelled = evaluate(load_pairs(spec["eval_file"], spec["eval_limit"]), "ipo", judge, engine, on_progress)
        result["eval_file_accuracy"] = round(labelled.as_dict()["accuracy"], 4)
    return result
