"""llama.cpp set up the way this machine needs it: every llama.cpp model ipo opens (both instances
of the llamacpp backend, the GGUF vocabulary the hf backend tokenizes with, the server recipe
`python -m ipo_tui.backends.llama_server`) comes from `engine()`.

Weight repacking. At load, llama.cpp repacks quantized weights into the layout of the CPU's
fastest kernels (the model parameter `use_extra_bufts`). On a CPU with AMX those are the AMX
kernels, which crash on the first decode (`ggml_backend_amx_mul_mat`, llama.cpp issue 20824,
in every llama-cpp-python release up to 0.3.36). So repacking is off where the CPU has AMX and
on elsewhere, decided when the process starts rather than when llama.cpp was built, which keeps a
user's own `pip install llama-cpp-python` safe too; IPO_LLAMA_REPACK=on|off overrides.
`Llama(...)` has no keyword for it: the default model parameters llama-cpp-python starts every
load from are wrapped, once per process.

The engine's log. llama.cpp logs through one callback: ipo's hands each line to whoever listens
(`listen()`, to quote a refusal's reason in ipo's own error) and prints it only with --verbose.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys

from ipo_tui import hardware, verbosity
from ipo_tui.errors import IpoError

REPACK_ENV = "IPO_LLAMA_REPACK"
_setup: dict = {}
_listeners: list[list[str]] = []


def repacking() -> tuple[bool, str]:
    """(repack quantized weights?, why), from IPO_LLAMA_REPACK or the CPU."""
    value = os.environ.get(REPACK_ENV, "auto").strip().lower()
    if value in ("on", "off"):
        return value == "on", f"{value} ({REPACK_ENV}={value})"
    if value not in ("", "auto"):
        raise IpoError(f"{REPACK_ENV}={value}: choose on, off or auto")
    if hardware.has_amx():
        return False, "off: this CPU has AMX, whose repacked kernels crash in llama.cpp (issue 20824)"
    return True, "on: this CPU has no AMX"


def engine():
    """The llama_cpp module, set up for this machine."""
    import llama_cpp

    if not _setup:
        repack, why = repacking()
        raw = llama_cpp.llama_cpp
        defaults = raw.llama_model_default_params

        def model_params():
            params = defaults()
            params.use_extra_bufts = repack
            return params

        raw.llama_model_default_params = llama_cpp.llama_model_default_params = model_params

        @llama_cpp.llama_log_callback
        def log(level, text, user_data):
            line = text.decode("utf-8", errors="replace")
            for lines in _listeners:
                lines.append(line)
            if verbosity.verbose():
                sys.stderr.write(line)
                sys.stderr.flush()

        llama_cpp.llama_log_set(log, ctypes.c_void_p(0))
        _setup.update(repack=repack, why=why, log=log)  # the callback must outlive this call
    return llama_cpp


def repack_decision() -> tuple[bool, str]:
    """What this process's llama.cpp does about weight repacking, and why (for labels and records)."""
    engine()
    return _setup["repack"], _setup["why"]


@contextlib.contextmanager
def listen():
    """The lines llama.cpp logs while the block runs."""
    lines: list[str] = []
    _listeners.append(lines)
    try:
        yield lines
    finally:
        _listeners.remove(lines)


def load(path, **options):
    """`llama_cpp.Llama(model_path=path, ...)`, quiet unless verbose; a file llama.cpp refuses is an IpoError."""
    llama_cpp = engine()
    try:
        return llama_cpp.Llama(model_path=str(path), verbose=verbosity.verbose(), **options)
    except ValueError as exc:
        raise IpoError(f"llama.cpp could not load {path}: {exc}") from None
