"""The loop on a server: connecting to the model that serves a policy, and handing each trained
adapter over so that the server serves the next policy.

vLLM started with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True loads a PEFT adapter at
runtime under the training run's name. A server that cannot (llama.cpp's, llama-cpp-python's, vLLM
without runtime loading) gets what to serve instead: for a GGUF base, the adapter as a GGUF LoRA
file for llama.cpp's --lora; otherwise the merged checkpoint. The loop then waits (`ServeNeeded`)
until the user serves it under a new name and resumes.
"""

from __future__ import annotations

from pathlib import Path

from ipo_tui import backends
from ipo_tui.backends.server import ServerBackend
from ipo_tui.backends.weights import ModelRef
from ipo_tui.errors import IpoError

SERVE_FOLDER = "serve"  # in the training run's folder: what the user serves when the server cannot load adapters


class ServeNeeded(IpoError):
    """The new policy is written out; the loop goes on once a server serves it."""


def connect(server: dict, name: str | None, adapter: str = "") -> ServerBackend:
    """The server backend on model `name` (None: the one base model the server lists). `adapter`
    is the local adapter the served model was made from: recorded with what it generates and
    judges, so that two policies served under one name stay apart in the workspace."""
    ref = ModelRef("hub", name, name) if name else None
    engine = backends.load("server", ref, base_url=server["base_url"], concurrency=server["concurrency"])
    engine.adapter = str(Path(adapter).resolve()) if adapter else ""
    return engine


def hand_off(server: dict, k: int, run, base: ModelRef, on_event=print) -> None:
    """Make the server serve policy k (the base plus `run`'s adapter) and record its name in
    server["served"]; raises ServeNeeded when the user has to serve it."""
    served, key, previous = server["served"], str(k), server["served"][str(k - 1)]
    if key in served:  # named with --served-model (or handed over before): check it is served
        with connect(server, served[key]):
            return
    to_serve = run.folder / SERVE_FOLDER
    if not to_serve.exists():
        with connect(server, previous) as engine:
            if engine.load_adapter(run.id, str(Path(run.adapter).resolve())):
                served[key] = run.id
                on_event(f"{engine.base_url} serves the new adapter as {run.id!r}")
                return
        what = _write(run, base, to_serve)
        on_event(f"{engine.base_url} cannot load adapters at runtime; wrote {what}")
    with connect(server, None) as engine:
        if engine.model_name != previous:  # the user serves something new there: the new policy
            served[key] = engine.model_name
            return
    raise ServeNeeded(f"policy {k} is ready to serve, but {engine.base_url} still serves {previous!r}: "
                      f"{_how(base, to_serve)}, then `ipo loop --resume {run.id.rsplit('-iter', 1)[0]}` "
                      "(--served-model NAME if it keeps the old name, --base-url if it moves)")


def _write(run, base: ModelRef, folder: Path) -> Path:
    from ipo_tui.training import export

    folder.mkdir(parents=True)
    try:
        if base.kind == "gguf":
            return export.peft_to_gguf_lora(run.adapter, folder / "adapter.gguf", base)
        return export.merge(run.adapter, folder / "merged")
    except BaseException:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)  # a rerun writes it again
        raise


def _how(base: ModelRef, folder: Path) -> str:
    if base.kind == "gguf":
        lora = folder / "adapter.gguf"
        return (f"serve {base.path} with the LoRA {lora} under a new name (llama.cpp: llama-server -m BASE --lora "
                "LORA --alias NAME, with --no-repack on an AMX CPU; llama-cpp-python: python -m "
                "ipo_tui.backends.llama_server --model BASE --lora_path LORA --model_alias NAME)")
    return (f"serve the merged checkpoint {folder / 'merged'} under a new name (vllm serve DIR --served-model-name "
            "NAME), or run vLLM with --enable-lora and VLLM_ALLOW_RUNTIME_LORA_UPDATING=True to hand adapters over "
            "without stopping")
