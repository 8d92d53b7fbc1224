"""generate -> judge -> pairs -> export on the embedded model, a kill -9 mid-run, and TRL reading it."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

PROMPTS = ["Name three primary colors.", "What is 7 times 6?", "Write a haiku about rain.",
           "Give one tip for sleeping better.", "What is the boiling point of water in Celsius?", "Say hello in French."]


def ipo(*args, env_dirs, check=True, **kw):
    env = dict(os.environ, IPO_CONFIG_DIR=str(env_dirs / "config"), IPO_DATA_DIR=str(env_dirs / "data"))
    cmd = [sys.executable, "-m", "ipo_tui", *args]
    if kw.pop("background", False):
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def prompt_set(user_dirs, tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    ipo("prompts", "import", str(path), "--name", "mine", env_dirs=user_dirs)
    return user_dirs / "data" / "workspace.sqlite"


def _candidates(db_path):
    with sqlite3.connect(db_path) as db:
        return db.execute("SELECT prompt_id, sample_index, id, text FROM candidates ORDER BY prompt_id, sample_index").fetchall()


def test_kill_during_generate_loses_and_duplicates_nothing(user_dirs, prompt_set):
    args = ("generate", "--prompts", "mine", "-n", "3", "--max-tokens", "24", "-b", "llamacpp")
    proc = ipo(*args, env_dirs=user_dirs, background=True)
    deadline = time.time() + 300
    while time.time() < deadline and len({row[0] for row in _candidates(prompt_set)}) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _candidates(prompt_set)
    assert 0 < len(before) < 3 * len(PROMPTS), "the kill should land mid-run"
    result = ipo(*args, env_dirs=user_dirs)
    after = _candidates(prompt_set)
    assert len(after) == 3 * len(PROMPTS)
    assert len({(p, i) for p, i, _, _ in after}) == len(after)  # no duplicates
    assert set(before) <= set(after)  # what was stored stays as it was
    assert f"{3 * len(PROMPTS) - len(before)} new candidates" in result.stdout


def test_build_export_and_trl_accepts(user_dirs, prompt_set, tmp_path):
    result = ipo("pairs", "build", "--prompts", "mine", "-n", "3", "--max-tokens", "32", "-b", "llamacpp", env_dirs=user_dirs)
    assert "pairs proposed" in result.stdout
    with sqlite3.connect(prompt_set) as db:
        assert db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0] == db.execute("SELECT COUNT(*) FROM candidates WHERE trim(text) != ''").fetchone()[0]
        n_pairs = db.execute("SELECT COUNT(*) FROM pairs").fetchone()[0]
    assert n_pairs >= 4
    out = tmp_path / "pairs.jsonl"
    ipo("pairs", "export", "--format", "trl", "--status", "proposed", "--out", str(out), env_dirs=user_dirs)

    from datasets import load_dataset

    data = load_dataset("json", data_files=str(out), split="train")
    assert len(data) == n_pairs and {"prompt", "chosen", "rejected", "score_chosen", "score_rejected", "category"} <= set(data.column_names)
    assert all(c > r for c, r in zip(data["score_chosen"], data["score_rejected"]))
    _one_dpo_step(data, tmp_path)

    bad = ipo("pairs", "reject", "1", "99999", env_dirs=user_dirs, check=False)
    assert bad.returncode == 1 and "no pair with id 99999; nothing was changed" in bad.stderr
    assert f"accepted {n_pairs} pairs" in ipo("pairs", "accept", "--min-margin", "0", env_dirs=user_dirs).stdout
    with sqlite3.connect(prompt_set) as db:
        assert db.execute("SELECT DISTINCT status FROM pairs").fetchall() == [("accepted",)]


def _one_dpo_step(data, tmp_path):
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from ipo_tui.backends.weights import embedded_gguf, materialize_gguf

    folder = materialize_gguf(embedded_gguf())
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder),
        args=DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2,
                       bf16=False, report_to=[], max_length=256, logging_steps=1),
        train_dataset=data.select_columns(["prompt", "chosen", "rejected"]),
        processing_class=AutoTokenizer.from_pretrained(folder),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    trainer.train()
    assert trainer.state.global_step == 1 and "loss" in trainer.state.log_history[0]
