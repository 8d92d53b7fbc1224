"""Candidates judged per second through an OpenAI-compatible server, at several concurrencies,
against the local llamacpp backend, in one run on the embedded model.

The script starts llama-cpp-python's server (`python -m llama_cpp.server`, needs
`llama-cpp-python[server]`) on the F32 copy of the embedded model, the weights the local backend
scores with by default, so the two must also agree on p'yes (reported as max_abs_diff). Both
sides get the same number of threads (--threads, default 1). Candidates are those of
benchmarks/score.py (the pairs of rewardbench-dev). The server side sends every candidate's
judging request through one `first_token_logprobs` call, so up to --concurrency are in flight;
the local side runs `Judge.score` prompt by prompt (its fast path: the prompt's prefix once).

    python benchmarks/server.py [--prompts 16] [--concurrency 1,4,16] [--threads 1] [--base-url URL]

With --base-url the script judges through that server instead of starting one (then the local
figures compare with whatever it serves). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score import DEFAULT_DATA, load_groups  # the candidates of the scoring benchmark

from ipo_tui import backends
from ipo_tui.backends import weights
from ipo_tui.backends.server import spawn_llama_cpp_server
from ipo_tui.errors import run_script
from ipo_tui.judge.routing import route
from ipo_tui.judge.scoring import Judge, from_top_logprobs


def through_server(remote, judge: Judge, groups) -> tuple[float, list[float], int]:
    conversations = [judge.template_for(route(p)).messages(p, c) for p, cands in groups for c in cands]
    start = time.perf_counter()
    tops = remote.first_token_logprobs(conversations)
    elapsed = time.perf_counter() - start
    margins = [from_top_logprobs(top)[0] for top in tops]
    missing = sum(bool(np.isnan(m)) for m in margins)
    return elapsed, [float(1 / (1 + np.exp(-m))) for m in margins], missing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--chars", type=int, default=240, help="cut each candidate to its first N characters (0: whole)")
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated requests in flight")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the server and of the local backend")
    parser.add_argument("--base-url", default=None, help="judge through this server instead of starting one")
    args = parser.parse_args()
    if not args.data.is_file():
        sys.exit(f"{args.data} is absent: pass --data with a RewardBench-format JSONL file")
    groups = load_groups(args.data, args.prompts, args.chars)
    n = sum(len(c) for _, c in groups)
    ref = weights.resolve(None)
    result: dict = {"prompts": len(groups), "candidates": n, "threads_local": args.threads}

    local = backends.load("llamacpp", ref, threads=args.threads)
    judge = Judge(local)
    judge.score(*groups[0])  # warm-up
    start = time.perf_counter()
    local_scores = [j.p_yes for prompt, cands in groups for j in judge.score(prompt, cands)]
    t_local = time.perf_counter() - start
    result["local_per_s"] = n / t_local
    result["local_dtype"] = local.capabilities.dtype
    local.close()
    print(f"local llamacpp ({local.capabilities.dtype}, {args.threads} thread(s)): {n / t_local:6.2f} candidates/s", flush=True)

    process = None
    url = args.base_url
    if url is None:
        served = weights.dequantized_gguf(ref.path)
        process, url = spawn_llama_cpp_server(served, threads=args.threads, alias="bench")
        result["threads_server"] = args.threads
        result["served"] = served.name
    try:
        for concurrency in [int(c) for c in args.concurrency.split(",")]:
            remote = backends.load("server", None, base_url=url, concurrency=concurrency)
            remote.first_token_logprobs([judge.template_for("chat").messages("Hi", "Hello")])  # warm-up
            elapsed, scores, missing = through_server(remote, judge, groups)
            remote.close()
            gaps = [abs(a - b) for a, b in zip(local_scores, scores) if not np.isnan(b)]
            result[f"server_c{concurrency}_per_s"] = n / elapsed
            result[f"server_c{concurrency}_vs_local"] = t_local / elapsed
            result[f"server_c{concurrency}_missing"] = missing
            result["max_abs_diff"] = max(result.get("max_abs_diff", 0.0), max(gaps, default=0.0))
            print(f"server, concurrency {concurrency:2d}: {n / elapsed:6.2f} candidates/s "
                  f"({t_local / elapsed:.2f}x local), {missing} missing, max |p'yes - local| {max(gaps, default=0):.4f}",
                  flush=True)
    finally:
        if process is not None:
            process.kill()
            process.wait()
    print(json.dumps(result))


if __name__ == "__main__":
    run_script(main)
