"""Training runs: prepare a run folder, start the trainer in a child process, follow, stop, resume.

A run lives in `<workspace folder>/runs/<id>/` and in the workspace's `runs` table. The child
(`ipo_tui.training.trainer`) records its status there itself; a run whose process died without a
word (kill -9, power cut) shows as `interrupted` and resumes from its last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from ipo_tui import stopping
from ipo_tui.backends import weights
from ipo_tui.backends.base import plain_chat
from ipo_tui.errors import IpoError
from ipo_tui.training import settings as train_settings
from ipo_tui.training.export import ADAPTER_WEIGHTS
from ipo_tui.training.trainer import latest_checkpoint, precision, read_jsonl
from ipo_tui.workspace import locks
from ipo_tui.workspace.records import (
    pair_records,
    read_records,
    text_field,
    write_records,
)
from ipo_tui.workspace.store import PAIR_STATUSES, Store

KINDS = ("dpo", "sft")
# what `prepare` writes before it records the run: a folder holding nothing else is one whose prepare
# was stopped (a loop's Ctrl-C at the start of its train stage), and the next prepare of that id reuses it
PREPARED = {"data.jsonl", "config.yaml", "accelerate.yaml"}
LAUNCHERS = ("local", "accelerate")
STRATEGIES = ("ddp", "fsdp", "deepspeed")
# processes this one started, reaped when they end; by run folder, since run ids repeat across workspaces
_children: dict[Path, subprocess.Popen] = {}


@dataclass(frozen=True)
class RunInfo:
    id: str
    kind: str
    status: str  # created, running, completed, stopped, failed, interrupted; a loop also waiting (for a server)
    folder: Path
    config: dict
    created_at: str

    @property
    def adapter(self) -> Path | None:
        path = self.folder / "adapter"
        return path if (path / "adapter_config.json").exists() else None

    def adapter_digest(self) -> str:
        """sha256 of the adapter's weights: whether an adapter trained again is the same one."""
        return hashlib.sha256((self.adapter / ADAPTER_WEIGHTS).read_bytes()).hexdigest()


def prepare(kind: str, data: str | list[dict], model: str | None, store: Store, overrides: dict | None = None,
            config_file: Path | None = None, init_adapter: str | None = None, run_id: str | None = None,
            launcher: str = "local", processes: int | None = None, strategy: str = "ddp",
            on_status=lambda msg: None) -> RunInfo:
    """Check everything, write the run folder (config.yaml, data.jsonl) and record the run.

    `data` is a file, a workspace pair selection (dpo), or rows already in the trainer's shape."""
    if kind not in KINDS:
        raise IpoError(f"unknown training kind {kind!r}: choose one of {', '.join(KINDS)}")
    store.check_writable()
    settings = train_settings.load(config_file, overrides)
    if launcher not in LAUNCHERS:
        raise IpoError(f"--launcher {launcher}: choose one of {', '.join(LAUNCHERS)}")
    accelerate = accelerate_config(processes, strategy) if launcher == "accelerate" else None
    if isinstance(data, list):
        rows, data = data, f"{len(data)} rows"
    else:
        rows = _pairs(data, store) if kind == "dpo" else _sft_rows(data)
    ref = weights.resolve(model)
    location = str(weights.materialize_gguf(ref.path, on_status)) if ref.kind == "gguf" else ref.location
    if ref.kind != "hub" and not _has_chat_template(Path(location)):
        rows = [_plain_text(row) for row in rows]  # a base model: the same rendering its generation used
    run_id = run_id or _new_id(store, kind)
    folder = store.path.parent / "runs" / run_id
    if folder.exists() and {path.name for path in folder.iterdir()} - PREPARED:
        raise IpoError(f"{folder} exists already; choose another run id")
    folder.mkdir(parents=True, exist_ok=True)
    write_records(folder / "data.jsonl", rows)
    if accelerate:
        (folder / "accelerate.yaml").write_text(yaml.safe_dump(accelerate, sort_keys=False))
    dtype, why = precision(settings["dtype"])
    spec = {"id": run_id, "kind": kind, "model": location, "model_identity": ref.identity, "data_source": data,
            "examples": len(rows), "init_adapter": init_adapter or "", "reference": settings["reference"],
            "workspace": str(store.path.resolve()), "launcher": launcher, "accelerate": accelerate or {},
            "settings": settings, "precision": {"dtype": dtype, "why": why}}
    (folder / "config.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    store.add_run(run_id, kind, spec, folder)
    return info(store, run_id)


# glibc gives every large freed block back to the OS and faults it in again at the next step: a DPO
# step on a CPU spent most of its time in page faults (benchmarks/train.py: 1.8x faster without).
# Keeping freed memory in the trainer's heap costs resident memory up to the peak of one step.
ALLOCATOR_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


def trainer_env(owned: bool = False) -> dict[str, str]:
    """The training process's environment: this one, with the allocator tuned unless the user set
    it; an `owned` trainer stops when this process is gone."""
    return {"GLIBC_TUNABLES": ALLOCATOR_TUNABLES, **stopping.owned_env(owned)}


def launch(run: RunInfo, store: Store, owned: bool = False) -> RunInfo:
    """Start (or restart) the trainer on a prepared run; returns at once. An `owned` run belongs to
    this process (a foreground command): it stops when this process is gone, even by `kill -9`;
    otherwise it runs on when the app or the terminal closes."""
    entry = ["-m", "ipo_tui.training.trainer", str(run.folder)]
    if (run.folder / "accelerate.yaml").exists():  # several processes: the same entry under `accelerate launch`
        entry = ["-m", "accelerate.commands.launch", "--config_file", str(run.folder / "accelerate.yaml"), *entry]
    (run.folder / "error.txt").unlink(missing_ok=True)
    return spawn(run, store, entry, "train.log", trainer_env(owned))


def spawn(run: RunInfo, store: Store, args: list[str], log: str, env: dict[str, str]) -> RunInfo:
    """Start `python ARGS`, the process that does a run (a trainer, a loop), and record the run
    running; returns at once. The process holds the run's lock for its life (taken here, so a second
    start is refused at once) and appends its output to `log` in the run folder."""
    store.check_writable()
    lock = locks.acquire(locks.run_lock(run.folder), f"run {run.id}")
    try:
        # its own session: a terminal's Ctrl-C reaches only `ipo`, whose `follow` stops the run cleanly
        with open(run.folder / log, "a") as out:  # the child keeps its own copy of the handle
            child = subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, env=env, pass_fds=(lock,))
    except BaseException:
        os.close(lock)
        raise
    locks.hand_over(lock, child.pid)
    _children[run.folder.resolve()] = child
    (run.folder / "pid").write_text(str(child.pid))
    store.set_run(run.id, "running")
    return info(store, run.id)


def accelerate_config(processes: int | None, strategy: str) -> dict:
    """An `accelerate launch` config: DDP, FSDP or DeepSpeed ZeRO over the GPUs (one process each,
    all of them by default), or DDP over CPU processes (2 by default)."""
    import importlib.util

    if strategy not in STRATEGIES:
        raise IpoError(f"--strategy {strategy}: choose one of {', '.join(STRATEGIES)}")
    if importlib.util.find_spec("accelerate") is None:
        raise IpoError("several processes need accelerate: pip install accelerate")
    import torch

    gpus = torch.cuda.device_count()
    processes = processes or gpus or 2
    if processes < 1 or (gpus and processes > gpus):
        raise IpoError(f"--processes {processes}: this machine has {gpus} GPU(s); give 1 to {gpus}, one process per GPU")
    # MULTI_GPU makes `accelerate launch` start the processes itself (torchrun); without GPUs the
    # trainer sets use_cpu and they join over gloo (accelerate's MULTI_CPU type expects mpirun instead)
    config = {"compute_environment": "LOCAL_MACHINE", "num_machines": 1, "machine_rank": 0,
              "num_processes": processes, "mixed_precision": "no", "distributed_type": "MULTI_GPU"}
    if strategy != "ddp" and not gpus:
        raise IpoError(f"--strategy {strategy} needs GPUs; on a CPU use ddp")
    if strategy == "fsdp":
        config.update(distributed_type="FSDP", fsdp_config={
            "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_reshard_after_forward": True,
            "fsdp_state_dict_type": "SHARDED_STATE_DICT", "fsdp_cpu_ram_efficient_loading": True})
    elif strategy == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            raise IpoError("--strategy deepspeed needs DeepSpeed: pip install deepspeed (or use fsdp)")
        config.update(distributed_type="DEEPSPEED", deepspeed_config={"zero_stage": 2, "offload_optimizer_device": "none",
                                                                        "offload_param_device": "none"})
    return config


def start(kind: str, pairs: str, model: str | None, overrides: dict, store: Store, **options) -> RunInfo:
    return launch(prepare(kind, pairs, model, store, overrides, **options), store)


def follow(run: RunInfo, store: Store, on_progress=lambda progress, metrics: None, poll: float = 0.5,
           on_stopping=lambda run: None) -> RunInfo:
    """Wait for a run's process, reporting progress. Ctrl-C (or SIGTERM, through `ipo_tui.stopping`)
    asks the trainer to stop cleanly, says so through `on_stopping` (the run), waits for its
    checkpoint, and is raised again."""
    seen = 0
    try:
        while _alive(run):
            metrics = read_metrics(run.folder)
            on_progress(progress(run.folder), metrics[seen:])
            seen = len(metrics)
            time.sleep(poll)
    except KeyboardInterrupt:
        with contextlib.suppress(IpoError):  # it ended meanwhile: nothing to stop
            if not stop(run.id, store):
                on_stopping(run)
        while _alive(run):
            time.sleep(poll)
        raise
    on_progress(progress(run.folder), read_metrics(run.folder)[seen:])
    return info(store, run.id)


def stop(run_id: str, store: Store) -> bool:
    """Ask a running trainer to save a checkpoint at the end of the step in flight and stop (a loop:
    to stop as Ctrl-C does, after its trainer has saved one); returns True where the run was ended
    at once instead, having nothing to save."""
    run = info(store, run_id)
    if run.status != "running":
        raise IpoError(f"run {run_id} is {run.status}, not running")
    pid = _pid(run)
    if not pid:  # a running run has one; signalling 0 would reach this process's own group
        raise IpoError(f"run {run_id} has no process id in {run.folder / 'pid'}")
    if run.kind == "loop":
        os.kill(pid, signal.SIGINT)
        return False
    if unsaved_steps(run):
        os.killpg(pid, signal.SIGTERM)  # its own process group: every process of an accelerate launch
        return False
    # a trainer that has finished no step since its last checkpoint (loading its model, or in its first
    # step) loses nothing by ending now, which spares waiting for the load and a whole step to save
    # what is saved already (a minute for the embedded model on two cores)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(run) and time.monotonic() < deadline:  # the lock goes with the process: a resume may follow
        time.sleep(0.05)
    store.set_run(run.id, "stopped")
    return True


def unsaved_steps(run: RunInfo) -> int:
    """Steps the run's trainer has finished since its last checkpoint: what a stop must save. Its
    progress file from before this launch (the step it had reached) counts for nothing."""
    state = run.folder / "progress.json"
    with contextlib.suppress(FileNotFoundError):
        if state.stat().st_mtime >= (run.folder / "pid").stat().st_mtime:
            return max(0, progress(run.folder).get("step", 0) - last_checkpoint_step(run))
    return 0


def seconds_per_step(metrics: list[dict]) -> float | None:
    """The mean time of the logged steps (None before two of them)."""
    if len(metrics) < 2 or metrics[-1]["step"] == metrics[0]["step"]:
        return None
    return (metrics[-1]["elapsed_s"] - metrics[0]["elapsed_s"]) / (metrics[-1]["step"] - metrics[0]["step"])


def step_remaining(folder: Path) -> float | None:
    """Seconds the step in flight of the run in `folder` still needs, from the mean step time and
    when the last step ended (None before two steps are logged): how long a stop waits before its
    checkpoint."""
    per_step = seconds_per_step(read_metrics(folder))
    with contextlib.suppress(FileNotFoundError):
        if per_step is not None:
            return max(0.0, per_step - (time.time() - (folder / "progress.json").stat().st_mtime))
    return None


def resume(run_id: str, store: Store, owned: bool = False) -> RunInfo:
    run = info(store, run_id)
    if run.status in ("running", "completed"):
        raise IpoError(f"run {run_id} is {run.status}; only a stopped, failed or interrupted run resumes")
    return launch(run, store, owned)


def forget(run: RunInfo, store: Store) -> None:
    """Remove a finished run: its record and its folder."""
    shutil.rmtree(run.folder, ignore_errors=True)
    store.delete_run(run.id)


def info(store: Store, run_id: str) -> RunInfo:
    row = store.run(run_id)
    folder = Path(row["folder"]) if row["folder"] else store.path.parent / "runs" / row["id"]  # where prepare puts it
    run = RunInfo(row["id"], row["kind"], row["status"], folder, json.loads(row["config"]), row["created_at"])
    if run.status == "running" and not _alive(run):  # the process died without recording why
        if store.read_only:
            return dataclasses.replace(run, status="interrupted")
        store.set_run(run.id, "interrupted")
        return info(store, run_id)
    return run


def list_runs(store: Store, kind: str | None = None) -> list[RunInfo]:
    return [info(store, row["id"]) for row in store.runs(kind)]


def read_metrics(folder: Path) -> list[dict]:
    return read_jsonl(folder / "metrics.jsonl")


def log_tail(folder: Path, lines: int = 20, name: str = "train.log") -> list[str]:
    path = folder / name
    if not path.exists():
        return []
    with path.open("rb") as fh:
        fh.seek(max(0, path.stat().st_size - 64_000))
        return fh.read().decode("utf-8", "replace").splitlines()[-lines:]


def last_checkpoint_step(run: RunInfo) -> int:
    checkpoint = latest_checkpoint(run.folder)
    return int(checkpoint.name.split("-")[-1]) if checkpoint else 0


def progress(folder: Path) -> dict:
    try:
        return json.loads((folder / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def _pid(run: RunInfo) -> int:
    try:
        return int((run.folder / "pid").read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _alive(run: RunInfo) -> bool:
    child = _children.get(run.folder.resolve())
    if child is not None:
        return child.poll() is None
    pid = _pid(run)
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:  # a reused pid runs something else
            if (b"ipo_tui" if run.kind == "loop" else b"ipo_tui.training.trainer") not in fh.read():
                return False
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def _new_id(store: Store, kind: str) -> str:
    taken = {row["id"] for row in store.runs()}
    n = len(store.runs(kind)) + 1
    while f"{kind}-{n:03d}" in taken:
        n += 1
    return f"{kind}-{n:03d}"


def _pairs(source: str, store: Store) -> list[dict]:
    """Pairs from a file (TRL shape) or a workspace selection `STATUS[,STATUS...][@SET]`."""
    if Path(source).expanduser().exists() or "." in Path(source).name:
        rows = []
        for where, row in read_records(source):
            rows.append({key: _turns(where, row, key) for key in ("prompt", "chosen", "rejected")})
        if not rows:
            raise IpoError(f"{source} holds no pairs")
        return rows
    statuses, _, set_name = source.partition("@")
    wanted = tuple(s.strip() for s in statuses.split(",") if s.strip())
    unknown = [s for s in wanted if s not in PAIR_STATUSES]
    if unknown or not wanted:
        raise IpoError(f"--pairs {source}: give a pair file, or statuses among {', '.join(PAIR_STATUSES)} "
                       "(e.g. accepted,edited or accepted@SET)")
    stored = store.pairs(wanted, set_name or None)
    if not stored:
        where = f" in prompt set {set_name!r}" if set_name else ""
        raise IpoError(f"no {'/'.join(wanted)} pairs{where} in {store.path}; build and curate some "
                       "(`ipo pairs build`, `ipo pairs list`) or pass --pairs proposed")
    return [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in pair_records(stored, "trl", conversational=True)]


def _has_chat_template(folder: Path) -> bool:
    if (folder / "chat_template.jinja").is_file():
        return True
    config = folder / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def _plain_text(row: dict) -> dict:
    """A conversational row as text, for a model without a chat template: the prompt rendered as
    the backends render it for such a model (plain_chat), each answer as its text."""
    def text(key, value):
        if not isinstance(value, list):
            return value
        return plain_chat(value) if key == "prompt" else "".join(m["content"] for m in value)

    return {key: text(key, value) for key, value in row.items()}


def _turns(where: str, row: dict, key: str):
    """A field as chat turns: text becomes one user (prompt) or assistant turn; turns stay as they are."""
    value = row.get(key)
    if isinstance(value, list) and value and all(isinstance(t, dict) and "role" in t for t in value):
        return value
    return [{"role": "user" if key == "prompt" else "assistant", "content": text_field(where, row, key)}]


def _sft_rows(source: str) -> list[dict]:
    """prompt/response records (also prompt/completion) as conversational prompt-completion rows."""
    rows = []
    for where, row in read_records(source):
        answer = "response" if "response" in row or "completion" not in row else "completion"
        rows.append({"prompt": [{"role": "user", "content": text_field(where, row, "prompt")}],
                     "completion": [{"role": "assistant", "content": text_field(where, row, answer)}]})
    if not rows:
        raise IpoError(f"{source} holds no examples")
    return rows
