"""Candidates scored per second on the embedded model, each backend, against a naive baseline.

64 prompts from rewardbench-dev x 4 candidates (the pair's chosen and rejected, plus those of the
next pair of the same category). The fast path is `Judge.score` (prefix KV reuse, packed candidates, logits
for the last position only). The naive baseline is what the original research code did: one
candidate at a time, a full forward pass from scratch with logits at every position.

    python benchmarks/score.py [--prompts 64] [--data ../shared/data/rewardbench-dev.jsonl]

The last line printed is one JSON object with the figures and the ratios.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ipo_tui import backends, models
from ipo_tui.categories import route
from ipo_tui.judge import Judge

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


def rendered(judge: Judge, groups) -> list[list[int]]:
    return [judge.render(judge.template_for(route(p)), p, c)[0] for p, cands in groups for c in cands]


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
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, logits_all=True, verbose=False)
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
    args = parser.parse_args()
    chosen = set(args.backends.split(","))
    groups = load_groups(args.data, args.prompts, args.chars)
    n = sum(len(c) for _, c in groups)
    ref = models.resolve(None)
    result: dict = {"candidates": n, "prompts": len(groups)}

    hf = backends.load("hf", ref, device="cpu")  # also renders the tokens both naive baselines use
    judge = Judge(hf)
    tokens = rendered(judge, groups)
    result["mean_tokens"] = round(float(np.mean([len(t) for t in tokens])), 1)
    if "hf" in chosen:
        t_fast, s_fast = fast(judge, groups)
        t_naive, s_naive = naive_hf(hf, judge, tokens)
        result["hf_fast_per_s"], result["hf_naive_per_s"] = n / t_fast, n / t_naive
        result["hf_max_abs_diff"] = float(np.abs(np.array(s_fast) - s_naive).max())
        result["hf_ratio"] = t_naive / t_fast
        print(f"hf       fast {n / t_fast:6.2f}/s   naive {n / t_naive:6.2f}/s   ratio {t_naive / t_fast:.2f}", flush=True)
    hf.close()

    if "llamacpp" in chosen:
        for precision in ("auto", "native"):
            llama = backends.load("llamacpp", ref, score_precision=precision)
            t_fast, s_fast = fast(Judge(llama), groups)
            result[f"llamacpp_{precision}_per_s"] = n / t_fast
            result[f"llamacpp_{precision}_dtype"] = llama.capabilities.dtype
            llama.close()
        t_naive, s_naive = naive_llama(ref.path, judge, tokens, llama.capabilities.context_length)
        result["llamacpp_naive_per_s"] = n / t_naive
        result["llamacpp_ratio"] = result["llamacpp_auto_per_s"] / result["llamacpp_naive_per_s"]
        result["llamacpp_native_ratio"] = result["llamacpp_native_per_s"] / result["llamacpp_naive_per_s"]
        print(f"llamacpp fast {result['llamacpp_auto_per_s']:6.2f}/s (native kernels {result['llamacpp_native_per_s']:.2f}/s)"
              f"   naive {n / t_naive:6.2f}/s", flush=True)

    result["goals_met"] = result.get("hf_ratio", 3) >= 3 and result.get("llamacpp_ratio", 2) >= 2
    print(json.dumps({k: round(v, 4) if isinstance(v, float) and "diff" not in k else v for k, v in result.items()}))


if __name__ == "__main__":
    main()
