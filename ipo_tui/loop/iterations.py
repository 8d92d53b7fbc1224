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

With the server backend, sampling and judging go through an OpenAI-compatible server and training
stays here, on `model` (the local copy of the weights the server serves). A trained adapter is
handed to the server (`server_handoff.hand_off`): vLLM loads it at runtime; for other servers the loop
writes what to serve, stops in status `waiting`, and goes on when resumed once it is served.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from ipo_tui import backends
from ipo_tui.backends import weights
from ipo_tui.backends.base import Sampling
from ipo_tui.errors import IpoError
from ipo_tui.judge.scoring import configured_judge
from ipo_tui.loop import server_handoff, stages
from ipo_tui.training import runner
from ipo_tui.training import settings as train_settings
from ipo_tui.workspace.store import Store

Events = Callable[[str], None]


def start(store: Store, prompts: str, iterations: int, n: int, backend: str, model: str | None,
          sampling: Sampling, min_margin: float = 0.0, holdout: float = 0.1, overrides: dict | None = None,
          config_file: Path | None = None, eval_file: str | None = None, eval_limit: int = 64,
          limit: int | None = None, threads: int | None = None, server: dict | None = None,
          judge_flags: dict | None = None) -> str:
    """Record a new loop (checked in full before anything runs); returns its id. `server` holds the
    server backend's base_url, concurrency and served_model (None: the one it lists); `judge_flags`
    the --judge-* flags every iteration's judge takes over the configured settings."""
    if iterations < 1 or n < 2:
        raise IpoError("a loop needs --iterations >= 1 and -n >= 2 (a pair needs two candidates)")
    if not 0 <= holdout < 1:
        raise IpoError(f"--holdout {holdout}: give a fraction in [0, 1)")
    rows = store.prompts(prompts, limit)
    if len(rows) < 2:
        raise IpoError(f"prompt set {prompts!r} has {len(rows)} prompt(s); a loop needs at least 2")
    settings = train_settings.load(config_file, overrides)
    ref = weights.resolve(model)
    backend = backend if backend != "auto" else ("llamacpp" if ref.kind == "gguf" else "hf")
    if backend not in backends.NAMES:
        raise IpoError(f"unknown backend {backend!r}: choose one of {', '.join(backends.NAMES)}")
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
            "judge_flags": judge_flags or {}, "done": [], "trained": None}
    store.add_run(loop_id, "loop", spec, folder, status="created")
    return loop_id


def run(store: Store, loop_id: str, on_event: Events = print, on_progress=lambda done, total: None,
        on_train=lambda progress, metrics: None, base_url: str | None = None, served_model: str | None = None) -> dict:
    """Run (or continue) a loop to its last iteration; returns its record. With the server backend,
    `base_url` moves the loop to another address and `served_model` names the model that serves
    the policy the loop needs next."""
    row = store.run(loop_id)
    if row["kind"] != "loop":
        raise IpoError(f"{loop_id} is a {row['kind']} run, not a loop")
    spec = runner.info(store, loop_id).config
    if (base_url or served_model) and not spec.get("server"):
        raise IpoError(f"--base-url/--served-model: {loop_id} runs on the {spec['backend']} backend, not a server")
    if base_url:
        spec["server"]["base_url"] = base_url
    if served_model:
        spec["server"]["served"][str(len(spec["done"]) + bool(spec.get("trained")))] = served_model
    store.set_run(loop_id, "running", config=spec)
    try:
        for k in range(len(spec["done"]), spec["iterations"]):
            record = _iteration(store, loop_id, spec, k, on_event, on_progress, on_train)
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


def _iteration(store: Store, loop_id: str, spec: dict, k: int, on_event: Events, on_progress, on_train) -> dict:
    prompts = store.prompts(spec["prompts"], spec["limit"])
    cut = len(prompts) - spec["held_out"]
    train_prompts, held_out = prompts[:cut], prompts[cut:]
    s = spec["sampling"]
    sampling = Sampling(spec["n"], s["temperature"], s["top_p"], s["max_tokens"], s["seed"])
    times: dict[str, float] = {}

    def stage(name: str, fn):
        on_event(f"iteration {k + 1}: {name}")
        start = time.perf_counter()
        result = fn()
        times[name] = round(time.perf_counter() - start, 1)
        return result

    trained = spec.get("trained")  # set once adapter k+1 is trained: a resume goes on from there
    if not trained:
        adapter = spec["done"][-1]["adapter"] if spec["done"] else ""
        engine = stage("load", lambda: _load(spec, k, adapter))
        policy = stages.policy_of(engine)
        judge = configured_judge(engine, spec.get("judge_flags"))
        try:
            stage("generate", lambda: stages.generate(store, engine, policy, prompts, spec["n"], sampling, on_progress))
            stage("judge", lambda: stages.judge(store, judge, policy, prompts, progress=on_progress))
        finally:
            engine.close()
        report = stage("pairs", lambda: stages.build_pairs(store, judge.id, policy, prompts, spec["min_margin"]))
        train_ids = {p["id"] for p in train_prompts}
        pairs = [r for r in store.pairs(("proposed", "accepted", "edited"), spec["prompts"], judge.id)
                 if r["prompt_id"] in train_ids]
        if not pairs:
            raise IpoError(f"iteration {k + 1}: no pairs to train on ({report.too_close} too close, {report.too_few} "
                           "with fewer than two judged candidates); lower --min-margin or raise -n")
        on_event(f"iteration {k + 1}: {len(pairs)} pairs ({report.too_close} too close)")
        train_run = stage("train", lambda: _train(store, loop_id, spec, k, pairs, adapter, on_train))
        trained = {"policy": [policy.model, policy.adapter], "judge": judge.id, "adapter": str(train_run.adapter),
                   "train_run": train_run.id, "pairs": len(pairs), "seconds": times}
        spec["trained"] = trained
        store.set_run(loop_id, config=spec)
    times = trained["seconds"]
    if spec.get("server"):
        stage("hand off", lambda: server_handoff.hand_off(spec["server"], k + 1, runner.info(store, trained["train_run"]),
                                                   weights.resolve(spec["model"] or None), on_event))
        store.set_run(loop_id, config=spec)  # the name that serves policy k+1

    engine = stage("load trained", lambda: _load(spec, k + 1, trained["adapter"]))
    try:
        previous = stages.Policy(*trained["policy"])
        new = stages.policy_of(engine)
        evaluation = stage("evaluate", lambda: _evaluate(store, engine, previous, trained.get("judge", previous.judge_id),
                                                         new, held_out, spec, sampling, on_progress))
    finally:
        engine.close()
    on_event(f"iteration {k + 1}: done")
    return {"iteration": k + 1, "policy": previous.judge_id, "adapter": trained["adapter"],
            "train_run": trained["train_run"], "pairs": trained["pairs"], "seconds": times, "eval": evaluation}


def _load(spec: dict, k: int, adapter: str):
    """Policy k's engine: the base plus adapter k here, or the model that serves policy k."""
    if spec.get("server"):
        return server_handoff.connect(spec["server"], spec["server"]["served"][str(k)], adapter)
    ref = weights.resolve(spec["model"] or None)
    return backends.load(spec["backend"], ref, adapter=adapter or None, threads=spec["threads"])


def _train(store: Store, loop_id: str, spec: dict, k: int, pairs: list, adapter: str, on_train):
    run_id = f"{loop_id}-iter{k + 1}"
    try:
        train_run = runner.info(store, run_id)
    except IpoError:
        from ipo_tui.workspace.records import pair_records

        rows = [{key: r[key] for key in ("prompt", "chosen", "rejected")}
                for r in pair_records(pairs, "trl", conversational=True)]
        train_run = runner.prepare("dpo", rows, spec["model"] or None, store, spec["settings"],
                                   init_adapter=adapter or None, run_id=run_id)
    if train_run.status != "completed":
        train_run = runner.follow(runner.launch(train_run, store), store, on_train)
        if train_run.status != "completed":
            raise IpoError(f"iteration {k + 1}: training {train_run.status}; `ipo loop --resume {loop_id}` continues")
    return train_run


def _evaluate(store: Store, engine, previous: stages.Policy, previous_judge: str, new: stages.Policy, held_out,
              spec: dict, sampling: Sampling, on_progress) -> dict:
    """The new policy on the held-out prompts (and the labelled file, if any), judged by the new
    policy under the loop's judge settings."""
    judge = configured_judge(engine, spec.get("judge_flags"))
    result: dict = {"held_out_prompts": len(held_out)}
    held_ids = {p["id"] for p in held_out}
    agree = total = 0
    for pair in store.pairs(("proposed", "accepted", "edited"), spec["prompts"], previous_judge):
        if pair["prompt_id"] in held_ids:
            chosen, rejected = judge.score(pair["prompt"], [pair["chosen"], pair["rejected"]])
            agree, total = agree + (chosen.p_yes > rejected.p_yes), total + 1
    result["held_out_agreement"] = round(agree / total, 4) if total else None
    if held_out:
        # the new policy's samples here are the ones the next iteration would draw, so nothing is wasted
        stages.generate(store, engine, new, held_out, spec["n"], sampling, on_progress)
        means = {}
        for name, policy in (("previous", previous), ("new", new)):
            stages.judge(store, judge, policy, held_out)
            scores = [r["p_yes"] for p in held_out for r in store.judgements(p["id"], judge.id, policy.model, policy.adapter)
                      if r["p_yes"] is not None]
            means[name] = round(sum(scores) / len(scores), 4) if scores else None
        result["mean_p_yes_previous_samples"], result["mean_p_yes_new_samples"] = means["previous"], means["new"]
    if spec["eval_file"]:
        from ipo_tui.evaluation.pairwise import evaluate, load_pairs

        labelled = evaluate(load_pairs(spec["eval_file"], spec["eval_limit"]), "ipo", judge, engine, on_progress)
        result["eval_file_accuracy"] = round(labelled.as_dict()["accuracy"], 4)
    return result
