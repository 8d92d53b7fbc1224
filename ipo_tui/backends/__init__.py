"""Engines behind one interface; `choose` says which engine a backend choice stands for, `load` loads
one by name and imports it only then."""

from __future__ import annotations

import re

from ipo_tui.backends.base import Backend, Capabilities, Sampling
from ipo_tui.backends.weights import ModelRef
from ipo_tui.errors import IpoError

NAMES = ("hf", "llamacpp", "server")
CHOICES = (*NAMES, "auto")
DEVICES = "cpu, cuda, cuda:N or auto"


def choose(name: str, model: ModelRef | None) -> str:
    """The engine a backend choice stands for, the one rule for every face: "auto" is llama.cpp for a
    GGUF file (its own format: it loads at once, where transformers first converts the file to a
    checkpoint) and transformers for anything else. An unknown name is refused."""
    if name not in CHOICES:
        raise IpoError(f"unknown backend {name!r}: choose one of {', '.join(CHOICES)}")
    if name != "auto":
        return name
    return "llamacpp" if model is not None and model.kind == "gguf" else "hf"


def check_device(device: str | None) -> None:
    """Refuse a device no engine knows, before any engine reads it (each would fail its own way)."""
    if device not in (None, "auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise IpoError(f"--device {device}: unknown device; choose {DEVICES}")


def load(name: str, model: ModelRef | None, **options) -> Backend:
    """Load `model` on backend `name`; options are the backend's own (device, dtype, n_ctx...).
    "server" takes a hub-kind ref naming the served model, or None for the one the server lists,
    and base_url, api_key, concurrency..."""
    check_device(options.get("device"))
    if name == "hf":
        from ipo_tui.backends.hf import HFBackend

        return HFBackend(model, **options)
    if name == "llamacpp":
        from ipo_tui.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model, **options)
    if name == "server":
        from ipo_tui.backends.server import ServerBackend

        return ServerBackend(model, **options)
    raise IpoError(f"unknown backend {name!r}: choose one of {', '.join(NAMES)}")


__all__ = ["Backend", "Capabilities", "Sampling", "NAMES", "CHOICES", "choose", "check_device", "load"]
