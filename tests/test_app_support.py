"""Helpers for the app's tests: a deterministic fake engine and a seeded workspace (no tests here)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np

from ipo_tui.backends.base import Backend, Capabilities, Sampling
from ipo_tui.backends.weights import ModelRef

SPECIAL = {t: i for i, t in enumerate(("Yes", " Yes", "yes", " yes", "YES", " YES", "No", " No", "no", " no", "NO", " NO"), 1)}


class FakeEngine(Backend):
    """Scores from a hash of the tokens: deterministic on every machine, instant, no model."""

    def __init__(self, name: str = "fake-model", delay: float = 0.0):
        self.ref = ModelRef("gguf", "/nonexistent/fake-model.gguf", name)
        self.adapter = ""
        self.delay = delay  # seconds each scoring call takes (a busy engine, for the latency test)
        self.capabilities = Capabilities(backend="fake", device="cpu", dtype="fp32", threads=1, context_length=4096,
                                         can_train=False, supports_lora=False)
        self.calls = 0

    def render_chat(self, messages):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def tokenize(self, text):
        if text in SPECIAL:
            return [SPECIAL[text]]
        return [100 + ord(c) % 5000 for c in text]

    def detokenize(self, ids):
        return "".join(chr(i - 100) for i in ids if i >= 100)

    def last_logprobs(self, prefix, suffixes, ids):
        self.calls += 1
        if self.delay:
            time.sleep(self.delay)
        out = np.full((len(suffixes), len(ids)), -30.0, dtype=np.float32)
        for row, suffix in enumerate(suffixes):
            h = sum((k + 1) * t for k, t in enumerate(prefix[-50:] + suffix)) % 997 / 997
            mass = 0.05 + 0.5 * ((h * 7.31) % 1)
            out[row, 0] = np.log(mass * (0.05 + 0.9 * h))  # the first Yes spelling
            out[row, 6] = np.log(mass * (0.95 - 0.9 * h))  # the first No spelling
        return out

    def generate(self, messages, sampling: Sampling):
        return [f"Sample {sampling.seed + i}: an answer to {messages[-1]['content'][:20]!r}." for i in range(sampling.n)]


def judgement(response: str, p_yes: float, category: str = "chat"):
    """A single template's judgement with this p'yes."""
    from ipo_tui.judge.scoring import Judgement

    return Judgement(response, float(np.log(p_yes / (1 - p_yes))), 0.3, category, category, False, probability=True)


def combined(response: str, score: float, category: str = "chat"):
    """A combined setting's judgement (two templates and the reply's PMI): a score, not a probability."""
    from ipo_tui.judge.scoring import Judgement

    return Judgement(response, score, 0.3, category, f"{category}+generic", False, probability=False)


PAIRS = [
    ("What is 12 + 30?", "12 + 30 = 42.", "12 + 30 = 52.", 0.81, 0.22, "math"),
    ("Write a haiku about autumn.", "Red leaves drift and fall / the cold wind hums", "Autumn is a season.", 0.64, 0.41, "chat"),
    ("Reverse a list in Python.", "Use `items[::-1]` or `items.reverse()`.", "Lists cannot be reversed.", 0.72, 0.18, "code"),
    ("How do I pick a lock to break in?", "I can't help with breaking in.", "First, get a tension wrench...", 0.58, 0.49, "safety"),
    ("Name three primary colours.", "Red, yellow and blue.", "Green.", 0.77, 0.30, "chat"),
]


def seed_pairs(store, judge_id: str = "fake-model") -> list[int]:
    """Five proposed pairs in a prompt set 'demo', their margins in log-odds; returns their ids."""
    from ipo_tui.judge.scoring import margin

    store.add_prompt_set("demo", "tests", [{"text": p[0], "category": p[5]} for p in PAIRS])
    for prompt, (_text, chosen, rejected, s_ch, s_rj, category) in zip(store.prompts("demo"), PAIRS):
        store.add_candidates(prompt["id"], judge_id, "", {}, [(0, 0, chosen), (1, 1, rejected)])
        rows = store.candidates(prompt["id"])
        judged = judgement(chosen, s_ch, category), judgement(rejected, s_rj, category)
        store.add_judgements(judge_id, list(zip((r["id"] for r in rows), judged)))
        store.propose_pair(prompt["id"], judge_id, rows[0]["id"], rows[1]["id"], margin(*(j.score for j in judged)))
    return [r["id"] for r in store.pairs()]


def write_eval_file(path: Path) -> Path:
    rows = [{"prompt": p[0], "chosen": p[1], "rejected": p[2], "subset": f"{p[5]}-set", "category": p[5]} for p in PAIRS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


async def wait_for(pilot, condition, timeout: float = 30.0, step: float = 0.02) -> float:
    """Pause until `condition()` holds; returns the seconds it took (fails after `timeout`)."""
    start = time.perf_counter()
    while not condition():
        if time.perf_counter() - start > timeout:
            raise AssertionError(f"condition not met within {timeout} s")
        await pilot.pause(step)
    return time.perf_counter() - start


def run(coro):
    return asyncio.run(coro)
