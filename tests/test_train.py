"""LoRA-DPO/SFT runs in a child process: learning, stop, kill -9 and resume, the loop, bad settings.

A tiny randomly initialised llama with the embedded model's tokenizer keeps each run to seconds;
the trainer is the real one (TRL + PEFT in a child process).
"""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ipo_tui.backends.base import Sampling
from ipo_tui.errors import IpoError
from ipo_tui.training import runner, settings
from ipo_tui.workspace.store import Store

PAIRS = [
    {"prompt": "What is 2+2?", "chosen": "4.", "rejected": "Banana bread is tasty and I like it a lot."},
    {"prompt": "Name a color.", "chosen": "Blue.", "rejected": "The weather is nice today, maybe later."},
    {"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "I do not know anything about it at all."},
    {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Goodbye forever and ever, my old friend."},
]
FAST = {"learning_rate": 5e-3, "batch_size": 2, "lora_r": 8, "lora_alpha": 16}


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "ws" / "workspace.sqlite")
    yield s
    s.close()


@pytest.fixture
def pair_file(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    return str(path)


def _wait_for(condition, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_training_learns(store, pair_file, tiny_model):
    run = runner.start("dpo", pair_file, tiny_model, dict(FAST, epochs=6), store)
    run = runner.follow(run, store)
    assert run.status == "completed", runner.log_tail(run.folder)
    metrics = runner.read_metrics(run.folder)
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert metrics[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # the adapter starts as the reference
    assert min(m["loss"] for m in metrics[-3:]) < math.log(2) - 0.1
    assert metrics[-1]["rewards/accuracies"] > metrics[0]["rewards/accuracies"]
    assert metrics[-1]["rewards/margins"] > 0
    for key in ("epoch", "rewards/chosen", "rewards/rejected", "learning_rate", "grad_norm", "elapsed_s", "eta_s"):
        assert key in metrics[-1]
    assert (run.adapter / "adapter_model.safetensors").exists()
    assert (run.folder / "config.yaml").exists() and run.config["settings"]["learning_rate"] == 5e-3
    from ipo_tui import hardware

    assert run.config["precision"] == dict(zip(("dtype", "why"), hardware.training_dtype(None, False, False)))


def test_dtype_override_is_recorded(store, pair_file, tiny_model):
    run = runner.prepare("dpo", pair_file, tiny_model, store, {"dtype": "fp32"})
    assert run.config["precision"] == {"dtype": "fp32", "why": "asked for with --dtype"}
    with pytest.raises(IpoError, match="dtype must be one of auto, fp32, bf16, fp16"):
        runner.prepare("dpo", pair_file, tiny_model, store, {"dtype": "fp8"})


def test_dpo_on_cpu_projects_only_completion_tokens():
    # the switch ipo turns is TRL's own device check, and it still decides what its fused head projects
    import inspect

    import torch
    from trl.trainer import utils

    from ipo_tui.training import trainer

    assert "compact = _use_triton(hidden_states.device)" in inspect.getsource(utils.add_fused_lm_head)
    trainer._score_completions_only()
    assert utils._use_triton(torch.device("cpu"))


def test_a_model_without_a_chat_template_trains_on_text(store, pair_file, tiny_model, tmp_path):
    # a base model (Gemma 270M base, say) has no chat template: its pairs are trained as the text
    # its generation used (plain_chat), not refused by the tokenizer
    from transformers import AutoTokenizer

    base = tmp_path / "tiny-base"
    shutil.copytree(tiny_model, base)
    (base / "chat_template.jinja").unlink(missing_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(base)
    assert not runner._has_chat_template(base) and runner._has_chat_template(Path(tiny_model))
    run = runner.follow(runner.start("dpo", pair_file, str(base), dict(FAST, epochs=1), store), store)
    assert run.status == "completed", runner.log_tail(run.folder)
    first = json.loads((run.folder / "data.jsonl").read_text().splitlines()[0])
    assert first["prompt"] == "User: What is 2+2?\n\nAssistant:" and first["chosen"] == "4."


def test_stop_then_kill_then_resume(store, pair_file, tiny_model):
    run = runner.start("dpo", pair_file, tiny_model, dict(FAST, epochs=10, save_steps=3), store)
    _wait_for(lambda: runner.progress(run.folder).get("step", 0) >= 2)
    runner.stop(run.id, store)  # what Ctrl-C and the app's stop key do
    run = runner.follow(run, store)
    assert run.status == "stopped"
    stopped_at = runner.last_checkpoint_step(run)
    assert stopped_at >= 2 and runner.read_metrics(run.folder)[-1]["step"] == stopped_at

    run = runner.resume(run.id, store)
    _wait_for(lambda: runner.last_checkpoint_step(run) >= 6)
    os.kill(int((run.folder / "pid").read_text()), signal.SIGKILL)
    _wait_for(lambda: runner.info(store, run.id).status != "running", 30)
    run = runner.info(store, run.id)
    assert run.status == "interrupted" and run.adapter is None
    checkpoint = runner.last_checkpoint_step(run)

    run = runner.follow(runner.resume(run.id, store), store)
    assert run.status == "completed" and run.adapter is not None
    steps = [m["step"] for m in runner.read_metrics(run.folder)]
    assert steps == list(range(1, 21))  # no step lost, none logged twice across the restarts
    assert f"resuming from checkpoint-{checkpoint}" in "\n".join(runner.log_tail(run.folder, 400))
    with pytest.raises(IpoError, match="completed"):
        runner.resume(run.id, store)


def test_a_run_stopped_before_its_first_step_ends_at_once(store, pair_file, tiny_model):
    """A trainer that has finished no step since its last checkpoint has nothing to save: a stop ends
    it at once instead of waiting for its model to load and a whole step to end."""
    run = runner.start("dpo", pair_file, tiny_model, dict(FAST, epochs=1), store)
    assert runner.stop(run.id, store) is True  # it is loading
    run = runner.info(store, run.id)
    assert run.status == "stopped" and not runner._alive(run) and runner.unsaved_steps(run) == 0
    run = runner.follow(runner.resume(run.id, store), store)
    assert run.status == "completed" and [m["step"] for m in runner.read_metrics(run.folder)] == [1, 2]


def test_a_prepare_stopped_before_it_recorded_the_run_is_done_again(store, pair_file, tiny_model):
    """A loop stopped at the start of its train stage left the run's folder with its data but no
    record; its resume prepares the same run id again (it was refused: the folder exists)."""
    folder = store.path.parent / "runs" / "loop-001-iter1"
    folder.mkdir(parents=True)
    (folder / "data.jsonl").write_text("{}\n")
    run = runner.prepare("dpo", pair_file, tiny_model, store, run_id="loop-001-iter1")
    assert run.config["examples"] == len(PAIRS) and len((folder / "data.jsonl").read_text().splitlines()) == len(PAIRS)
    (store.path.parent / "runs" / "dpo-009").mkdir()
    (store.path.parent / "runs" / "dpo-009" / "notes.txt").write_text("someone's")
    with pytest.raises(IpoError, match="exists already"):
        runner.prepare("dpo", pair_file, tiny_model, store, run_id="dpo-009")


def test_sft_run(store, tmp_path, tiny_model):
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": p["prompt"], "response": p["chosen"]}) + "\n" for p in PAIRS))
    run = runner.follow(runner.start("sft", str(data), tiny_model, dict(FAST, epochs=2), store), store)
    assert run.status == "completed", runner.log_tail(run.folder)
    metrics = runner.read_metrics(run.folder)
    assert len(metrics) == 4 and metrics[-1]["loss"] < metrics[0]["loss"]
    assert run.adapter is not None


def test_one_loop_iteration(store, tmp_path, tiny_model):
    from ipo_tui import backends
    from ipo_tui.backends import weights
    from ipo_tui.loop import iterations, stages

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in PAIRS + PAIRS[:1]))
    from ipo_tui.workspace.records import load_prompts

    store.add_prompt_set("tiny", str(prompts), load_prompts(str(prompts)))
    loop_id = iterations.start(store, "tiny", 1, 2, "hf", tiny_model, Sampling(2, 1.0, 1.0, 6, 0), holdout=0.2,
                         overrides=dict(FAST, epochs=1))
    record = iterations.run(store, loop_id, on_event=lambda message: None)
    [iteration] = record["done"]
    assert iteration["pairs"] == 4 and set(iteration["seconds"]) >= {"generate", "judge", "pairs", "train", "evaluate"}
    assert iteration["eval"]["held_out_prompts"] == 1 and iteration["eval"]["held_out_agreement"] in (0.0, 1.0)
    assert runner.info(store, loop_id).status == "completed"
    assert runner.info(store, iteration["train_run"]).status == "completed"

    # the trained policy's candidates are stored under its adapter, apart from the base's
    base = weights.resolve(tiny_model).identity
    prompt = store.prompts("tiny")[-1]
    by_adapter = {c["adapter"] for c in store.candidates(prompt["id"], base, iteration["adapter"])}
    assert by_adapter == {iteration["adapter"]}
    engine = backends.load("hf", weights.resolve(tiny_model), adapter=iteration["adapter"])
    assert stages.policy_of(engine).adapter == iteration["adapter"]
    engine.close()
    assert iterations.run(store, loop_id, on_event=lambda m: None)["done"] == record["done"]  # nothing left to do
    shutil.rmtree(runner.info(store, iteration["train_run"]).folder)  # a finished loop needs no adapter to say so
    assert iterations.run(store, loop_id, on_event=lambda m: None)["done"] == record["done"]


def test_a_loop_resumed_without_its_run_folders(store, tmp_path, tiny_model):
    """A workspace that moved without runs/: an adapter trained but not yet used is trained again
    on the same pairs; one that policy k already generated with cannot be, and the resume says so."""
    from ipo_tui.loop import iterations
    from ipo_tui.workspace.records import load_prompts

    class Stop(Exception):
        pass

    def stop_at(where: str, events: list):
        def on_event(message):
            events.append(message)
            if message == where:
                raise Stop

        return on_event

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in PAIRS))
    store.add_prompt_set("tiny", str(prompts), load_prompts(str(prompts)))
    loop_id = iterations.start(store, "tiny", 2, 2, "hf", tiny_model, Sampling(2, 1.0, 1.0, 6, 0), holdout=0.0,
                               overrides=dict(FAST, epochs=1), pairs_by="random")
    with pytest.raises(Stop):
        iterations.run(store, loop_id, on_event=stop_at("iteration 1: load trained", []))
    trained = runner.info(store, loop_id).config["trained"]
    shutil.rmtree(runner.info(store, trained["train_run"]).folder)

    events = []
    with pytest.raises(Stop):
        iterations.run(store, loop_id, on_event=stop_at("iteration 2: load", events))
    assert f"iteration 1: adapter {trained['adapter']} is gone; training it again on the same pairs" in events
    [first] = runner.info(store, loop_id).config["done"]
    assert first["pairs"] == trained["pairs"] and runner.info(store, first["train_run"]).adapter is not None
    assert first["seconds"]["generate"] == trained["seconds"]["generate"] and first["seconds"]["train again"] > 0
    # seeded training on one machine gives the same weights: what makes training again sound
    assert f"iteration 1: trained again, the same weights (sha256 {trained['adapter_sha256'][:12]}" in " ".join(events)

    shutil.rmtree(runner.info(store, first["train_run"]).folder)
    with pytest.raises(IpoError, match=r"policy 1's adapter .* is gone") as info:
        iterations.run(store, loop_id, on_event=lambda m: None)
    assert "\n" not in str(info.value) and runner.info(store, loop_id).config["done"] == [first]


def test_loop_with_random_pairs_and_a_benchmark(store, tmp_path, tiny_model):
    """The control arm trains on random pairs of the same candidates; policy 0 and each new policy
    are benchmarked, the figures stored per iteration and compared with policy 0."""
    from ipo_tui.loop import controls, iterations, stages
    from ipo_tui.workspace.records import load_prompts

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in PAIRS + PAIRS[:1]))
    store.add_prompt_set("tiny", str(prompts), load_prompts(str(prompts)))
    bench = {"tasks": ["ifeval", "gsm8k"], "limit": 2, "max_tokens": 4}
    loop_id = iterations.start(store, "tiny", 2, 2, "hf", tiny_model, Sampling(2, 1.0, 1.0, 6, 0), holdout=0.2,
                               overrides=dict(FAST, epochs=1), pairs_by="random", bench=bench)
    record = iterations.run(store, loop_id, on_event=lambda message: None)
    assert [it["pairs_by"] for it in record["done"]] == ["random", "random"]
    assert "judge" not in record["done"][0]["seconds"]  # a rule pairs without judging
    policy0 = stages.Policy(record["done"][0]["policy"])  # the base: no adapter
    assert len(store.pairs(judge=controls.pairer_id("random", policy0, 0))) >= 4  # unless a prompt drew one text twice
    ids = [record["bench0"]["id"]] + [it["bench"]["id"] for it in record["done"]]
    assert len(set(ids)) == 3  # one benchmark per policy
    for bench_id in ids:
        assert len(store.bench_items(bench_id, "ifeval")) == 2 and len(store.bench_items(bench_id, "gsm8k")) == 2
    rows = iterations.benchmarks(store, record)
    assert [r["policy"] for r in rows] == [0, 1, 2]
    assert rows[0]["change"] == {} and rows[2]["change"]["ifeval prompt strict"]["n"] == 2
    assert record["done"][0]["drift"]["sample_tokens"] > 0 and "logps_chosen" in record["done"][0]["drift"]
    with pytest.raises(IpoError, match="--eval-file"):
        iterations.start(store, "tiny", 1, 2, "hf", tiny_model, Sampling(2, 1.0, 1.0, 6, 0), bench={"tasks": ["judge"]})
    with pytest.raises(IpoError, match="--pairs-by"):
        iterations.start(store, "tiny", 1, 2, "hf", tiny_model, Sampling(2, 1.0, 1.0, 6, 0), pairs_by="best")


def test_an_external_judges_pairs_of_each_policy_are_kept_apart(store, tmp_path, tiny_model):
    """judge:MODEL judges every iteration with the same model: iteration 2's pairs (of policy 1's
    candidates) join iteration 1's in the workspace instead of replacing them."""
    from ipo_tui.loop import iterations
    from ipo_tui.workspace.records import load_prompts

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p["prompt"]}) + "\n" for p in PAIRS))
    store.add_prompt_set("tiny", str(prompts), load_prompts(str(prompts)))
    loop_id = iterations.start(store, "tiny", 2, 2, "hf", tiny_model, Sampling(2, 1.0, 1.0, 6, 0), holdout=0.0,
                               overrides=dict(FAST, epochs=1), pairs_by=f"judge:{tiny_model}")
    record = iterations.run(store, loop_id, on_event=lambda message: None)
    kept = store.pairs()
    judges = sorted({p["judge"] for p in kept}, key=len)  # policy 0's (the base) first, then policy 1's
    assert [j.split("@", 1)[1] for j in judges] == [it["policy"] for it in record["done"]]
    assert [sum(p["judge"] == j for p in kept) for j in judges] == [it["pairs"] for it in record["done"]]
    assert all(p["score_chosen"] >= p["score_rejected"] for p in kept)  # each judge's scores join its pairs


def test_a_running_loop_is_seen_running_and_stops_like_ctrl_c(store, tmp_path):
    """A loop process writes its pid: `ipo runs` and the app see it running (not interrupted), and
    stopping it sends what Ctrl-C sends."""
    code = "import signal, sys, time; signal.signal(signal.SIGINT, lambda *a: sys.exit(3)); print(1, flush=True); time.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code, "ipo_tui", "loop"], stdout=subprocess.PIPE)
    child.stdout.readline()  # the handler is in place
    folder = tmp_path / "runs" / "loop-001"
    folder.mkdir(parents=True)
    (folder / "pid").write_text(str(child.pid))
    store.add_run("loop-001", "loop", {"done": []}, folder, status="running")
    assert runner.info(store, "loop-001").status == "running"
    runner.stop("loop-001", store)
    assert child.wait(timeout=10) == 3
    assert runner.info(store, "loop-001").status == "interrupted"  # it died without recording why


def test_a_run_of_another_workspace_with_the_same_id_is_seen_running(store, pair_file, tiny_model, tmp_path):
    """This process's finished dpo-001 says nothing of another workspace's dpo-001, still training
    (the full suite once saw that one as interrupted, and a Ctrl-C then could not stop it)."""
    finished = runner.follow(runner.start("dpo", pair_file, tiny_model, dict(FAST, epochs=1), store), store)
    assert finished.id == "dpo-001" and finished.status == "completed"
    other = Store(tmp_path / "other" / "workspace.sqlite")
    trainer = subprocess.Popen([sys.executable, "-c", "import sys; print(1, flush=True); sys.stdin.read()",
                                "ipo_tui.training.trainer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    trainer.stdout.readline()  # running as itself (right after the fork its command line reads empty)
    folder = tmp_path / "other" / "runs" / "dpo-001"
    folder.mkdir(parents=True)
    (folder / "pid").write_text(str(trainer.pid))
    other.add_run("dpo-001", "dpo", {"examples": 4}, folder, status="running")
    try:
        assert runner.info(other, "dpo-001").status == "running"
    finally:
        trainer.stdin.close()
        trainer.wait(timeout=30)
        other.close()


def test_settings_are_checked(tmp_path):
    assert settings.load()["beta"] == 0.1
    assert settings.load(overrides={"learning_rate": "1e-4"})["learning_rate"] == 1e-4
    with pytest.raises(IpoError, match="unknown training setting 'lr'"):
        settings.load(overrides={"lr": 1e-4})
    with pytest.raises(IpoError, match="epochs should be int"):
        settings.load(overrides={"epochs": "two"})
    bad = tmp_path / "train.yaml"
    bad.write_text("beta: [0.1\n")
    with pytest.raises(IpoError, match="not valid YAML"):
        settings.load(bad)
    with pytest.raises(IpoError, match="reference must be"):
        settings.load(overrides={"reference": "teacher"})


def test_cli_bad_input_is_one_line(tmp_path, tiny_model):
    env = dict(os.environ, IPO_CONFIG_DIR=str(tmp_path / "c"), IPO_DATA_DIR=str(tmp_path / "d"))

    def ipo(*args):
        return subprocess.run([sys.executable, "-m", "ipo_tui", *args], capture_output=True, text=True, env=env, timeout=120)

    result = ipo("train", "dpo", "--model", tiny_model)
    assert result.returncode == 1 and "no accepted/edited pairs" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    result = ipo("train", "dpo", "--pairs", "nothere.jsonl", "--model", tiny_model)
    assert result.returncode == 1 and "nothere.jsonl does not exist" in result.stderr
    result = ipo("train", "dpo", "--pairs", "accepted", "--set", "lr=1")
    assert result.returncode == 1 and "unknown training setting" in result.stderr
    result = ipo("train", "resume", "dpo-404")
    assert result.returncode == 1 and "no run 'dpo-404'" in result.stderr
    defaults = ipo("train", "defaults")
    assert defaults.returncode == 0 and "lora_r: 16" in defaults.stdout


def test_accelerate_launch_with_two_cpu_processes(store, pair_file, tiny_model):
    run = runner.prepare("dpo", pair_file, tiny_model, store, dict(FAST, epochs=2, batch_size=1),
                         launcher="accelerate", processes=2)
    assert (run.folder / "accelerate.yaml").exists() and run.config["accelerate"]["num_processes"] == 2
    # owned, as a foreground `ipo train` launches it: its trainers are the launcher's children, not
    # this process's, and must watch this one rather than stop at once
    run = runner.follow(runner.launch(run, store, owned=True), store)
    assert run.status == "completed", runner.log_tail(run.folder)
    # each process takes half of the 4 pairs: 2 steps per epoch instead of 4; only the first one logs
    assert [m["step"] for m in runner.read_metrics(run.folder)] == [1, 2, 3, 4]
    assert runner.log_tail(run.folder, 400).count("completed") == 2 and run.adapter is not None
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(IpoError, match="needs GPUs"):
            runner.accelerate_config(2, "fsdp")
