"""The training process: `python -m ipo_tui.training.trainer RUN_FOLDER`.

The runner prepares RUN_FOLDER (config.yaml, data.jsonl) and starts this in a child process, so
the terminal or the app stays responsive and a crash of one never takes the other down. It trains
a LoRA adapter with TRL (DPOTrainer or SFTTrainer) and leaves in the folder:
  metrics.jsonl   one JSON line per logged step (the dashboard tails it)
  progress.json   the current step and the total, rewritten each step
  checkpoints/    Trainer checkpoints; a new start resumes from the last one
  adapter/        the final adapter (PEFT save_pretrained), written when training completes
SIGINT or SIGTERM asks for a clean stop: a checkpoint is saved at the end of the current step.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback
from pathlib import Path

import yaml

from ipo_tui import stopping, verbosity
from ipo_tui.workspace.store import Store

METRIC_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
               "logps/chosen", "logps/rejected", "learning_rate", "grad_norm", "mean_token_accuracy")


class StopRequest:
    """Set by SIGINT/SIGTERM; a second SIGINT stops at once."""

    def __init__(self):
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)
        signal.signal(signal.SIGINT, self._handle)

    def _handle(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True


def latest_checkpoint(folder: Path) -> Path | None:
    steps = [(int(p.name.split("-")[-1]), p) for p in (folder / "checkpoints").glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").exists()]
    return max(steps)[1] if steps else None


def _callback(folder: Path, stop: StopRequest):
    from transformers import TrainerCallback

    metrics_path, progress_path = folder / "metrics.jsonl", folder / "progress.json"

    class Bookkeeping(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:
                return
            # a resumed run drops the lines logged after its checkpoint, so steps never repeat
            rows = [r for r in read_jsonl(metrics_path) if r["step"] <= state.global_step]
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
            self.offset = rows[-1]["elapsed_s"] if rows else 0.0
            self.start, self.first_step = time.monotonic(), state.global_step
            self._progress(state)

        def on_step_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self._progress(state)
            if stop.requested:
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not logs or "loss" not in logs or not state.is_world_process_zero:
                return  # the end-of-training summary, or another process's copy
            spent = time.monotonic() - self.start
            per_step = spent / max(1, state.global_step - self.first_step)
            row = {"step": state.global_step, "max_steps": state.max_steps, "epoch": round(state.epoch or 0, 4)}
            row.update({k: logs[k] for k in METRIC_KEYS if k in logs})
            row["elapsed_s"] = round(self.offset + spent, 2)
            row["eta_s"] = round(per_step * (state.max_steps - state.global_step), 1)
            with metrics_path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")

        def _progress(self, state):
            tmp = progress_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"step": state.global_step, "max_steps": state.max_steps}))
            tmp.replace(progress_path)

    return Bookkeeping()


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: what came before it stands
    return rows


def precision(requested: str) -> tuple[str, str]:
    """(dtype, why) for training on this machine: see hardware.training_dtype."""
    import torch

    from ipo_tui.hardware import training_dtype

    cuda = torch.cuda.is_available()
    return training_dtype(requested, cuda, cuda and torch.cuda.is_bf16_supported())


def build_trainer(folder: Path, spec: dict, callbacks=()):
    """The TRL trainer a run folder describes (also used by benchmarks/train.py)."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verbosity.quiet_transformers()
    verbosity.quiet_datasets()  # its tokenizing and filtering bars filled the app's log panel
    verbosity.quiet_library_warnings()

    s = spec["settings"]
    cuda = torch.cuda.is_available()
    dtype = spec.get("precision", {}).get("dtype") or precision(s["dtype"])[0]
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # the frozen base in bf16 when training in bf16 (no cast per matmul, half the memory; PEFT keeps the
    # adapter in fp32); fp16 computes under autocast over fp32 weights, which its gradient scaler needs
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    peft_config = None
    if spec.get("init_adapter"):  # a loop iteration continues the previous adapter
        model = PeftModel.from_pretrained(model, spec["init_adapter"], is_trainable=True)
    else:
        peft_config = LoraConfig(r=s["lora_r"], lora_alpha=s["lora_alpha"], lora_dropout=s["lora_dropout"],
                                 target_modules=s["lora_target_modules"], task_type="CAUSAL_LM")
    common = dict(
        output_dir=str(folder / "checkpoints"), per_device_train_batch_size=s["batch_size"],
        gradient_accumulation_steps=s["grad_accum"], num_train_epochs=s["epochs"], learning_rate=s["learning_rate"],
        warmup_steps=s["warmup_ratio"], logging_steps=s["logging_steps"], save_strategy="steps",
        save_steps=s["save_steps"], save_total_limit=2, seed=s["seed"], bf16=dtype == "bf16", fp16=dtype == "fp16",
        max_length=s["max_length"], report_to=[], disable_tqdm=True, dataloader_num_workers=0, use_cpu=not cuda,
        # TRL turns activation checkpointing on by default; recomputing activations costs a third more time
        activation_checkpointing=False,
    )
    data = load_dataset("json", data_files=str(folder / "data.jsonl"), split="train")
    if spec["kind"] == "sft":
        from trl import SFTConfig, SFTTrainer

        return SFTTrainer(model=model, args=SFTConfig(**common), train_dataset=data, processing_class=tokenizer,
                          peft_config=peft_config, callbacks=list(callbacks))
    from trl import DPOConfig, DPOTrainer

    if not cuda:
        _score_completions_only()
    args = DPOConfig(**common, beta=s["beta"], loss_type=[s["loss_type"]])
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=list(callbacks))
    if spec.get("reference") == "base" and "ref" in trainer.model.peft_config:
        trainer.model.delete_adapter("ref")  # TRL falls back to the adapter-free base model as reference
    return trainer


def _score_completions_only() -> None:
    """TRL's fused LM head projects every position (prompt and padding too) on devices without Triton,
    so that tile shapes stay fixed for graph compilers; eager CPU code compiles nothing, and projecting
    only the completion tokens takes a fifth off a DPO step (benchmarks/train.py). The switch is TRL's
    own device check, read by that head alone (test_train checks it is still there)."""
    from trl.trainer import utils

    utils._use_triton = _cpu_or_triton


def _cpu_or_triton(device) -> bool:
    from trl.kernels.chunked_logprob import _use_triton

    return device.type == "cpu" or _use_triton(device)


def train(folder: Path) -> str:
    """Train the run in `folder`; returns its final status (completed or stopped)."""
    spec = yaml.safe_load((folder / "config.yaml").read_text())
    stop = StopRequest()
    stopping.stop_with_parent()  # an owned run: a SIGTERM, so a clean stop, once its parent is gone
    trainer = build_trainer(folder, spec, [_callback(folder, stop)])
    checkpoint = latest_checkpoint(folder)
    if checkpoint is not None:
        print(f"resuming from {checkpoint.name}", flush=True)
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if stop.requested:
        return "stopped"
    if "ref" in getattr(trainer.model, "peft_config", {}):
        trainer.model.delete_adapter("ref")  # the frozen reference copy is not part of the result
    trainer.save_model(str(folder / "adapter"))  # every process takes part (FSDP gathers); the first one writes
    return "completed"


def main(argv: list[str]) -> int:
    folder = Path(argv[0]).resolve()
    spec = yaml.safe_load((folder / "config.yaml").read_text())
    # under `accelerate launch` every process runs this; the first one keeps the books
    # the run's lock came with this process from runner.launch: no second trainer shares this folder
    store = Store(Path(spec["workspace"])) if os.environ.get("RANK", "0") == "0" else None
    record = store.set_run if store else lambda run_id, status: None
    record(spec["id"], "running")
    try:
        status = train(folder)
    except BaseException as exc:  # noqa: BLE001 - every failure is recorded in the run
        traceback.print_exc()
        if store:
            message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
            (folder / "error.txt").write_text(message + "\n")
        record(spec["id"], "stopped" if isinstance(exc, KeyboardInterrupt) else "failed")
        return 1
    record(spec["id"], status)
    print(f"{status}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
