"""Engines behind one interface; `load` picks one by name and imports it only then."""

from __future__ import annotations

from ipo_tui.backends.base import Backend, Capabilities, Sampling
from ipo_tui.backends.weights import ModelRef
from ipo_tui.errors import IpoError

NAMES = ("hf", "llamacpp", "server")


def load(name: str, model: ModelRef | None, **options) -> Backend:
    """Load `model` on backend `name`; options are the backend's own (device, dtype, n_ctx...).
    "server" takes a hub-kind ref naming the served model, or None for the one the server lists,
    and base_url, api_key, concurrency..."""
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


__all__ = ["Backend", "Capabilities", "Sampling", "NAMES", "load"]
