"""Generation tokens per second on the embedded model: the llamacpp backend against llama-cpp-python's
own `create_completion` on the same GGUF, and hf batched generation (as `ipo generate` runs it:
several prompts' samples in one batch of `generate_rows`) against hf at batch 1.

    python benchmarks/generate.py [--prompts 8] [--n 4] [--max-tokens 64]

Also the cost of llama.cpp's weight-repacking remedy (see ipo_tui/backends/llama_runtime.py): the
llamacpp backend generating from the embedded Q4 file with repacking on and off, each in a child
process of its own, on one thread (where repacking crashes, on an AMX CPU, it does so only with
several threads), alternated twice. Tokens are counted the same way for every contender (the generated text re-tokenized). The last
line printed is one JSON object with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from ipo_tui import backends
from ipo_tui.backends import llama_runtime, weights
from ipo_tui.backends.base import Sampling
from ipo_tui.errors import run_script
from ipo_tui.hardware import describe_cpu

PROMPTS = [
    "Explain why the sky is blue.", "Write a short poem about autumn.", "Give three tips for learning a language.",
    "What is a prime number?", "Describe how a bicycle works.", "Summarize the water cycle.",
    "Suggest a name for a coffee shop.", "How do vaccines work?", "Write a limerick about a cat.",
    "What causes the seasons on Earth?", "Give a recipe idea with rice.", "Why do we dream?",
]


def run(label: str, fn, count) -> float:
    start = time.perf_counter()
    texts = fn()
    elapsed = time.perf_counter() - start
    tokens = sum(count(t) for t in texts)
    print(f"{label:32s} {tokens:5d} tokens in {elapsed:6.1f}s = {tokens / elapsed:6.1f} tok/s", flush=True)
    return tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repack-arm", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repack_arm:
        return repack_arm(args)
    prompts = PROMPTS[: args.prompts]
    ref = weights.resolve(None)
    result: dict = {"machine": describe_cpu(), "prompts": len(prompts), "n": args.n, "max_tokens": args.max_tokens}
    print(result["machine"], flush=True)
    vocab = llama_runtime.load(ref.path, vocab_only=True)

    def count(text: str) -> int:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=False))

    llama = backends.load("llamacpp", ref)
    raw = llama._generator  # the very engine the backend drives, used directly

    def raw_completion():
        texts = []
        for p in prompts:
            ids = llama.tokenize(llama.render_chat([{"role": "user", "content": p}]))
            for i in range(args.n):
                out = raw.create_completion(ids, max_tokens=args.max_tokens, temperature=0.8, top_p=0.95, seed=i)
                texts.append(out["choices"][0]["text"])
        return texts

    def backend_generate(engine, n, calls):
        return lambda: [t for p in prompts for _ in range(calls)
                        for t in engine.generate([{"role": "user", "content": p}],
                                                 Sampling(n=n, max_tokens=args.max_tokens, temperature=0.8, top_p=0.95))]

    result["llamacpp_raw_tok_s"] = run("llama-cpp-python create_completion", raw_completion, count)
    result["llamacpp_backend_tok_s"] = run("llamacpp backend", backend_generate(llama, args.n, 1), count)
    llama.close()

    hf = backends.load("hf", ref, device="cpu")
    per_call = max(1, hf.generate_rows // args.n)

    def batched():
        sampling = Sampling(n=args.n, max_tokens=args.max_tokens, temperature=0.8, top_p=0.95)
        return [t for start in range(0, len(prompts), per_call)
                for texts in hf.generate_many([([{"role": "user", "content": p}], sampling)
                                               for p in prompts[start:start + per_call]])
                for t in texts]

    result["hf_batched_tok_s"] = run(f"hf backend, {per_call} prompts x {args.n} a batch", batched, count)
    result["hf_batch1_tok_s"] = run("hf backend, batch 1", backend_generate(hf, 1, args.n), count)
    hf.close()

    rates = {"on": [], "off": []}
    for setting in ("on", "off", "on", "off"):
        command = [sys.executable, __file__, "--repack-arm", "--prompts", str(args.prompts), "--n", str(args.n),
                   "--max-tokens", str(args.max_tokens)]
        done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "IPO_LLAMA_REPACK": setting})
        if done.returncode:
            print(f"repacking {setting}: the child died with status {done.returncode}", flush=True)
            continue
        rates[setting].append(json.loads(done.stdout.strip().splitlines()[-1])["tok_s"])
        print(f"{'llamacpp 1 thread, repacking ' + setting:32s} {rates[setting][-1]:6.1f} tok/s", flush=True)
    if rates["on"] and rates["off"]:
        result["repack_on_1thread_tok_s"] = statistics.median(rates["on"])
        result["repack_off_1thread_tok_s"] = statistics.median(rates["off"])
        result["repack_off_vs_on"] = result["repack_off_1thread_tok_s"] / result["repack_on_1thread_tok_s"]
    result["repacking_here"] = llama_runtime.repack_decision()[1]

    result["llamacpp_vs_raw"] = result["llamacpp_backend_tok_s"] / result["llamacpp_raw_tok_s"]
    result["hf_batched_vs_batch1"] = result["hf_batched_tok_s"] / result["hf_batch1_tok_s"]
    result["goals_met"] = result["llamacpp_vs_raw"] >= 0.9 and result["hf_batched_vs_batch1"] >= 2
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


def repack_arm(args) -> None:
    """In a child process: the llamacpp backend's generation rate on one thread, as IPO_LLAMA_REPACK says."""
    ref = weights.resolve(None)
    llama = backends.load("llamacpp", ref, threads=1)
    sampling = Sampling(n=args.n, max_tokens=args.max_tokens, temperature=0.8, top_p=0.95)
    start = time.perf_counter()
    texts = [t for p in PROMPTS[: args.prompts] for t in llama.generate([{"role": "user", "content": p}], sampling)]
    elapsed = time.perf_counter() - start
    tokens = sum(len(llama.llm.tokenize(t.encode("utf-8"), add_bos=False)) for t in texts)
    print(json.dumps({"tok_s": tokens / elapsed}))


if __name__ == "__main__":
    run_script(main)
