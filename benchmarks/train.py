"""Seconds per pair of `ipo train dpo` against TRL's defaults and a hand-written LoRA-DPO step.

Same model (the embedded SmolLM2-135M-Instruct as an HF checkpoint), same pairs (from
rewardbench-dev, each text cut to --chars characters), same LoRA (r 16, all linear layers),
4 pairs per step, one epoch, in one run:
  ipo      the trainer `ipo train dpo` runs (ipo_tui.training.trainer.build_trainer, our settings)
  trl      TRL's DPOTrainer with its default DPOConfig (only output_dir, batch size, epochs,
           report_to and, on a machine without a GPU, use_cpu set; bf16 and activation
           checkpointing stay at their defaults)
  manual   a minimal hand-written step: one forward of chosen+rejected with the adapter, one
           without it (the reference) under no_grad, the sigmoid DPO loss, AdamW, in the precision
           ipo chooses for this machine (bf16 autocast where the hardware computes bf16, else fp32)
Each arm runs in a child process of its own: `ipo` and `manual_tuned_allocator` in the
environment `ipo train` gives its trainer (glibc's allocator keeps freed memory, see
ipo_tui/training/runner.py), `trl_defaults` and `manual` in this one, as a user's script would run.
Only training is timed (trainer.train(), or the loop of steps), not loading.

    python benchmarks/train.py [--pairs 12] [--chars 400]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from ipo_tui.backends import weights
from ipo_tui.errors import run_script
from ipo_tui.hardware import describe_cpu
from ipo_tui.training import settings
from ipo_tui.training.runner import trainer_env
from ipo_tui.training.trainer import build_trainer, precision

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "rewardbench-dev.jsonl"
BATCH = 4


def load_pairs(path: Path, n: int, chars: int) -> list[dict]:
    rows = [json.loads(line) for line in path.open()]
    step = len(rows) // n
    return [{"prompt": [{"role": "user", "content": r["prompt"][:chars]}],
             "chosen": [{"role": "assistant", "content": r["chosen"][:chars]}],
             "rejected": [{"role": "assistant", "content": r["rejected"][:chars]}]} for r in rows[::step][:n]]


def time_ipo(model_dir: str, pairs: list[dict], work: Path) -> float:
    folder = work / "ipo"
    folder.mkdir()
    (folder / "data.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    spec = {"kind": "dpo", "model": model_dir, "settings": settings.load(overrides={"batch_size": BATCH})}
    (folder / "config.yaml").write_text(yaml.safe_dump(spec))
    trainer = build_trainer(folder, spec)
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def time_trl_defaults(model_dir: str, pairs: list[dict], work: Path) -> float:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    s = settings.defaults()
    import torch

    # use_cpu: without it transformers refuses bf16 (a default) on a machine without a GPU
    args = DPOConfig(output_dir=str(work / "trl"), per_device_train_batch_size=BATCH, num_train_epochs=1, report_to=[],
                     use_cpu=not torch.cuda.is_available())
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir), args=args, train_dataset=Dataset.from_list(pairs),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        peft_config=LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
                               target_modules=s["lora_target_modules"], task_type="CAUSAL_LM"),
    )
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def time_manual(model_dir: str, pairs: list[dict], dtype: str) -> float:
    import torch
    import torch.nn.functional as F
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    s = settings.defaults()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir), LoraConfig(
        r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
        target_modules=s["lora_target_modules"], task_type="CAUSAL_LM"))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=s["learning_rate"])

    def encode(pair, side):
        def ids(messages, **kw):
            text = tokenizer.apply_chat_template(messages, tokenize=False, **kw)
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        full = ids(pair["prompt"] + pair[side])
        return full[:s["max_length"]], len(ids(pair["prompt"], add_generation_prompt=True))

    batches = []
    for start in range(0, len(pairs), BATCH):
        seqs = [encode(p, side) for side in ("chosen", "rejected") for p in pairs[start:start + BATCH]]
        width = max(len(ids) for ids, _ in seqs)
        ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        completion = torch.zeros((len(seqs), width), dtype=torch.bool)
        for row, (seq, prompt_len) in enumerate(seqs):
            ids[row, :len(seq)], mask[row, :len(seq)] = torch.tensor(seq), 1
            completion[row, prompt_len:len(seq)] = True
        batches.append((ids, mask, completion))

    def logps(ids, mask, completion):
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        per_token = torch.gather(logits.log_softmax(-1), 2, ids[:, 1:, None]).squeeze(2)
        return (per_token * completion[:, 1:]).sum(1)

    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")
    start = time.perf_counter()
    for ids, mask, completion in batches:
        with autocast:
            with torch.no_grad(), model.disable_adapter():
                reference = logps(ids, mask, completion)
            ratio = logps(ids, mask, completion) - reference
        chosen, rejected = ratio.chunk(2)
        loss = -F.logsigmoid(s["beta"] * (chosen - rejected)).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return time.perf_counter() - start


ARMS = {  # name: (timer, environment); the allocator setting is the one `ipo train` gives its trainer
    "manual": (lambda model_dir, pairs, work, dtype: time_manual(model_dir, pairs, dtype), "plain"),
    "manual_tuned_allocator": (lambda model_dir, pairs, work, dtype: time_manual(model_dir, pairs, dtype), "trainer"),
    "ipo": (lambda model_dir, pairs, work, dtype: time_ipo(model_dir, pairs, work), "trainer"),
    "trl_defaults": (lambda model_dir, pairs, work, dtype: time_trl_defaults(model_dir, pairs, work), "plain"),
}


def run_arm(args) -> None:
    """In a child process: time one arm, print its seconds as JSON."""
    pairs = load_pairs(args.data, args.pairs, args.chars)
    model_dir = str(weights.materialize_gguf(weights.resolve(None).path))
    with tempfile.TemporaryDirectory() as tmp:
        seconds = ARMS[args.arm][0](model_dir, pairs, Path(tmp), precision("auto")[0])
    print(json.dumps({"seconds": seconds, "pairs": len(pairs)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12)
    parser.add_argument("--chars", type=int, default=400)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--arm", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        return run_arm(args)
    weights.materialize_gguf(weights.resolve(None).path)  # converted once, outside the timings
    dtype, why = precision("auto")
    result: dict = {"machine": describe_cpu(), "pairs": args.pairs, "batch": BATCH, "dtype": dtype, "why": why}
    print(f"{result['machine']}; ipo and manual train in {dtype}: {why}", flush=True)
    environments = {"plain": dict(os.environ), "trainer": trainer_env()}
    for name, (_, environment) in ARMS.items():
        command = [sys.executable, __file__, "--arm", name, "--pairs", str(args.pairs), "--chars", str(args.chars),
                   "--data", str(args.data)]
        done = subprocess.run(command, env=environments[environment], capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{name} failed:\n{done.stderr[-3000:]}")
        measured = json.loads(done.stdout.strip().splitlines()[-1])
        result[f"{name}_s_per_pair"] = measured["seconds"] / measured["pairs"]
        print(f"{name:23s} {result[f'{name}_s_per_pair']:.3f} s per pair ({environment} environment)", flush=True)
    result["speedup_vs_trl_defaults"] = result["trl_defaults_s_per_pair"] / result["ipo_s_per_pair"]
    result["ratio_to_manual_same_env"] = result["ipo_s_per_pair"] / result["manual_tuned_allocator_s_per_pair"]
    result["goals_met"] = result["speedup_vs_trl_defaults"] >= 1.5 and result["ratio_to_manual_same_env"] <= 1.0
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in result.items()}))


if __name__ == "__main__":
    run_script(main)
