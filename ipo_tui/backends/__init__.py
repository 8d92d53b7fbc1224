"""Engines behind one interface; `load` picks one by name and imports it only then."""

from __future__ import annotations

from ipo_tui.backends.base import Backend, Capabilities, Sampling
from ipo_tui.errors import IpoError
from ipo_tui.models import ModelRef

NAMES = ("hf", "llamacpp")


def load(name: str, model: ModelRef, **options) -> Backend:
    """Load `model` on backend `name`; options are the backend's own (device, dtype, n_ctx...)."""
    if name == "hf":
        from ipo_tui.backends.hf import HFBackend

        return HFBackend(model, **options)
    if name == "llamacpp":
        from ipo_tui.backends.llamacpp import LlamaCppBackend

        return LlamaCppBackend(model, **options)
    raise IpoError(f"unknown backend {name!r}: choose one of {', '.join(NAMES)}")


__all__ = ["Backend", "Capabilities", "Sampling", "NAMES", "load"]
