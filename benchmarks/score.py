"""Candidates scored per second on the embedded model, each backend, against a naive baseline.

64 prompts from rewardbench-dev x 4 candidates (the pair's chosen and rejected, plus those of the
next pair of the same category). The fast path is `Judge.score` (prefix KV reuse, packed candidates, logits
for the last position only). The naive baseline is what the original research code did: one
candidate at a time, a full forward pass from scratch with logits at every position.

    python benchmarks/score.py [--prompts 64] [--data ../shared/data/rewardbench-dev.jsonl]

Also measured, in the same run:
  - the tokens per second the fast path actually computes (what its KV cache does not already hold)
    as a fraction of the engine's raw prefill rate on one long sequence, the limit for scoring: the
    faster of 512 and 2048 tokens (attention makes a token of a longer sequence dearer);
  - the hf backend in bf16 against fp32: rate, and the largest p'yes gap over the same candidates
    (bf16 becomes the CPU default only where that gap stays within 0.01).

The last line printed is one JSON object with the figures and the ratios, and the machine.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ipo_tui import backends
from ipo_tui.backends import llama_runtime, weights
from ipo_tui.backends.base import common_length, split_common_prefix
from ipo_tui.errors import run_script
from ipo_tui.hardware import describe_cpu
from ipo_tui.judge.routing import route
from ipo_tui.judge.scoring import Judge

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rewardbench-dev.jsonl"


def load_groups(path: Path, n_prompts: int, chars: int) -> list[tuple[str, list[str]]]:
    rows = [json.loads(line) for line in path.open()]
    step = len(rows) // n_prompts
    groups = []
    for i in range(0, step * n_prompts, step):
        row = rows[i]
        other = next(r for r in rows[i + 1:] + rows if r["category"] == row["category"] and r["prompt"] != row["prompt"])
        cands = [row["chosen"], row["rejected"], other["chosen"], other["rejected"]]
        groups.append((row["prompt"], [c[:chars] if chars else c for c in cands]))
    return groups


def fast(judge: Judge, groups) -> tuple[float, list[float]]:
    start = time.perf_counter()
    scores = [j.p_yes for prompt, cands in groups for j in judge.score(prompt, cands)]
    return time.perf_counter() - start, scores


def rendered(judge: Judge, groups) -> list[list[list[int]]]:
    """Each group's evaluation prompts as token ids, as Judge.score renders them."""
    return [[judge.render(judge.template_for(route(p)), p, c)[0] for c in cands] for p, cands in groups]


def computed_tokens(token_groups) -> int:
    """Tokens the fast path evaluates: per prompt, the prefix part the kept cache lacks, and every suffix."""
    kept, total = [], 0
    for tokens in token_groups:
        prefix, suffixes = split_common_prefix(tokens)
        total += len(prefix) - common_length(kept, prefix) + sum(map(len, suffixes))
        kept = prefix
    return total


def long_sequence(token_groups, length: int) -> list[int]:
    return [t for tokens in token_groups for seq in tokens for t in seq][:length]


def prefill_hf(backend, ids: list[int]) -> float:
    """Tokens per second of one forward pass over `ids` (the last position's logits only); best of 3."""
    import torch

    times = []
    with torch.inference_mode():
        for _ in range(3):
            start = time.perf_counter()
            backend.model(torch.tensor([ids]), logits_to_keep=1)
            times.append(time.perf_counter() - start)
    return len(ids) / min(times)


def prefill_llama(llm, ids: list[int]) -> float:
    times = []
    for _ in range(3):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids)
        times.append(time.perf_counter() - start)
    llm.reset()
    return len(ids) / min(times)


def naive_hf(backend, judge: Judge, tokens) -> tuple[float, list[float]]:
    import torch

    scores = []
    start = time.perf_counter()
    with torch.inference_mode():
        for ids in tokens:
            logits = backend.model(torch.tensor([ids])).logits[0]  # every position, as research code does
            scores.append(_p_yes(torch.log_softmax(logits[-1], -1).numpy(), judge))
    return time.perf_counter() - start, scores


def naive_llama(path: Path, judge: Judge, tokens, n_ctx: int) -> tuple[float, list[float]]:
    llm = llama_runtime.load(path, n_ctx=n_ctx, logits_all=True)
    scores = []
    start = time.perf_counter()
    for ids in tokens:
        llm.reset()
        llm.eval(ids)
        logits = llm.scores[llm.n_tokens - 1].astype(np.float64)
        scores.append(_p_yes(logits - np.logaddexp.reduce(logits), judge))
    elapsed = time.perf_counter() - start
    llm.close()
    return elapsed, scores


def _rates(by_length: dict[int, float]) -> str:
    return "(" + ", ".join(f"{rate:.0f}/s on {length}" for length, rate in by_length.items()) + ")"


def _p_yes(logprobs: np.ndarray, judge: Judge) -> float:
    yes = np.logaddexp.reduce(logprobs[judge.yes_ids])
    no = np.logaddexp.reduce(logprobs[judge.no_ids])
    return float(1 / (1 + np.exp(no - yes)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--chars", type=int, default=240,
                        help="cut each candidate to its first N characters, about the length of the short answers "
                             "the loop samples on a CPU (0: full length)")
    parser.add_argument("--backends", default="hf,llamacpp", help="comma-separated: hf, llamacpp")
    parser.add_argument("--long", default="512,2048", help="lengths of the long sequences the prefill rate is taken on")
    args = parser.parse_args()
    chosen = set(args.backends.split(","))
    groups = load_groups(args.data, args.prompts, args.chars)
    n = sum(len(c) for _, c in groups)
    ref = weights.resolve(None)
    result: dict = {"candidates": n, "prompts": len(groups)}

    result["machine"] = describe_cpu()
    print(result["machine"], flush=True)
    hf = backends.load("hf", ref, device="cpu", dtype="fp32")  # also renders the tokens both naive baselines use
    judge = Judge(hf)
    token_groups = rendered(judge, groups)
    tokens = [seq for group in token_groups for seq in group]
    computed = computed_tokens(token_groups)
    longs = [long_sequence(token_groups, int(n)) for n in args.long.split(",")]
    result["mean_tokens"] = round(float(np.mean([len(t) for t in tokens])), 1)
    result["computed_tokens"] = computed
    if "hf" in chosen:
        t_fast, s_fast = fast(judge, groups)
        t_naive, s_naive = naive_hf(hf, judge, tokens)
        result["hf_fast_per_s"], result["hf_naive_per_s"] = n / t_fast, n / t_naive
        result["hf_max_abs_diff"] = float(np.abs(np.array(s_fast) - s_naive).max())
        result["hf_ratio"] = t_naive / t_fast
        result["hf_prefill_tok_s"] = {len(ids): prefill_hf(hf, ids) for ids in longs}
        result["hf_fraction_of_prefill"] = computed / t_fast / max(result["hf_prefill_tok_s"].values())
        print(f"hf       fast {n / t_fast:6.2f}/s   naive {n / t_naive:6.2f}/s   ratio {t_naive / t_fast:.2f}   "
              f"computes {computed / t_fast:.0f} tokens/s = {result['hf_fraction_of_prefill']:.2f} of prefill "
              f"{_rates(result['hf_prefill_tok_s'])}", flush=True)
        bf16 = backends.load("hf", ref, device="cpu", dtype="bf16")
        t_bf16, s_bf16 = fast(Judge(bf16), groups)
        bf16.close()
        result["hf_bf16_per_s"] = n / t_bf16
        result["hf_bf16_vs_fp32"] = t_fast / t_bf16
        result["hf_bf16_max_p_yes_gap"] = float(np.abs(np.array(s_bf16) - s_fast).max())
        print(f"hf bf16  fast {n / t_bf16:6.2f}/s = {t_fast / t_bf16:.2f}x fp32, largest p'yes gap "
              f"{result['hf_bf16_max_p_yes_gap']:.4f}", flush=True)
    hf.close()

    if "llamacpp" in chosen:
        result["llamacpp_repacking"] = llama_runtime.repack_decision()[1]
        for precision in ("auto", "native"):
            llama = backends.load("llamacpp", ref, score_precision=precision)
            t_fast, s_fast = fast(Judge(llama), groups)
            result[f"llamacpp_{precision}_per_s"] = n / t_fast
            result[f"llamacpp_{precision}_dtype"] = llama.capabilities.dtype
            if precision == "auto":
                result["llamacpp_prefill_tok_s"] = {len(ids): prefill_llama(llama.llm, ids) for ids in longs}
                result["llamacpp_fraction_of_prefill"] = computed / t_fast / max(result["llamacpp_prefill_tok_s"].values())
            llama.close()
        t_naive, s_naive = naive_llama(ref.path, judge, tokens, llama.capabilities.context_length)
        result["llamacpp_naive_per_s"] = n / t_naive
        result["llamacpp_ratio"] = result["llamacpp_auto_per_s"] / result["llamacpp_naive_per_s"]
        result["llamacpp_native_ratio"] = result["llamacpp_native_per_s"] / result["llamacpp_naive_per_s"]
        print(f"llamacpp fast {result['llamacpp_auto_per_s']:6.2f}/s (native kernels {result['llamacpp_native_per_s']:.2f}/s)"
              f"   naive {n / t_naive:6.2f}/s   computes "
              f"{result['llamacpp_auto_per_s'] * computed / n:.0f} tokens/s = {result['llamacpp_fraction_of_prefill']:.2f} of prefill "
              f"{_rates(result['llamacpp_prefill_tok_s'])}",
              flush=True)

    result["goals_met"] = (result.get("hf_ratio", 3) >= 3 and result.get("llamacpp_ratio", 3) >= 3
                           and result.get("hf_fraction_of_prefill", 1) >= 0.8
                           and result.get("llamacpp_fraction_of_prefill", 1) >= 0.8)
    print(json.dumps({k: round(v, 4) if isinstance(v, float) and "diff" not in k else
                      {n: round(r, 1) for n, r in v.items()} if isinstance(v, dict) else v for k, v in result.items()}))


if __name__ == "__main__":
    run_script(main)
