"""Benchmark generation (`ipo bench`): greedy answers to IFEval prompts, tokens per second of the
hf backend batched as `ipo bench` runs it (`generate_rows` prompts a call) against hf at batch 1,
with the llamacpp backend (one prompt at a time) beside them, on the embedded model.

    python benchmarks/bench.py [--prompts 16] [--max-tokens 256] [--threads N]

The contenders answer the same prompts in the same order; tokens are counted the same way for all
(the answers re-tokenized with the model's vocabulary). A batch runs until its longest answer
ends, so batching pays most when answers are of similar length. The last line printed is one JSON
object with the rates and the ratios.
"""

from __future__ import annotations

import argparse
import json
import time

from ipo_tui import backends
from ipo_tui.backends import llama_runtime, weights
from ipo_tui.backends.base import Sampling
from ipo_tui.errors import run_script
from ipo_tui.evaluation import ifeval
from ipo_tui.evaluation.stats import spread
from ipo_tui.hardware import describe_cpu


def rate(label: str, engine, prompts: list[str], rows: int, max_tokens: int, count) -> float:
    greedy = Sampling(n=1, temperature=0.0, top_p=1.0, max_tokens=max_tokens, seed=0)
    start = time.perf_counter()
    texts = []
    for at in range(0, len(prompts), rows):
        texts += [t for [t] in engine.generate_many([([{"role": "user", "content": p}], greedy)
                                                     for p in prompts[at:at + rows]])]
    elapsed = time.perf_counter() - start
    tokens = sum(count(t) for t in texts)
    print(f"{label:34s} {tokens:6d} tokens in {elapsed:6.1f}s = {tokens / elapsed:6.1f} tok/s", flush=True)
    return tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    prompts = [item["prompt"] for item in spread(ifeval.items(), args.prompts)]
    ref = weights.resolve(None)
    result: dict = {"machine": describe_cpu(), "prompts": len(prompts), "max_tokens": args.max_tokens}
    print(result["machine"], flush=True)
    vocab = llama_runtime.load(ref.path, vocab_only=True)

    def count(text: str) -> int:
        return len(vocab.tokenize(text.encode("utf-8"), add_bos=False))

    hf = backends.load("hf", ref, device="cpu", threads=args.threads)
    result["hf_rows"] = hf.generate_rows
    result["hf_batched_tok_s"] = rate(f"hf, {hf.generate_rows} prompts a call", hf, prompts, hf.generate_rows,
                                      args.max_tokens, count)
    result["hf_batch1_tok_s"] = rate("hf, 1 prompt a call", hf, prompts, 1, args.max_tokens, count)
    hf.close()
    llama = backends.load("llamacpp", ref, threads=args.threads)
    result["llamacpp_tok_s"] = rate("llamacpp, 1 prompt a call", llama, prompts, 1, args.max_tokens, count)
    llama.close()
    result["hf_batched_vs_batch1"] = result["hf_batched_tok_s"] / result["hf_batch1_tok_s"]
    result["hf_batched_vs_llamacpp"] = result["hf_batched_tok_s"] / result["llamacpp_tok_s"]
    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    run_script(main)
