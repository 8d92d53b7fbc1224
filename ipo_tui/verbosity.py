"""Whether the engines' own logs reach the terminal: only with `ipo --verbose`.

The switch is an environment variable so that child processes (training, a spawned server)
inherit it. Without it, what a user needs comes as ipo's own one-line warnings and errors.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

ENV = "IPO_VERBOSE"


def verbose() -> bool:
    return os.environ.get(ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    os.environ[ENV] = "1" if on else "0"


def quiet_transformers() -> None:
    """transformers' progress bars and info/warning logging off unless verbose (its errors still raise)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if not verbose():
        hf_logging.set_verbosity_error()


def quiet_datasets() -> None:
    """datasets' progress bars, and its and huggingface_hub's info and warnings (a retry a line) off
    unless verbose; a failure still raises, for ipo's own line."""
    from datasets.utils import logging as datasets_logging
    from huggingface_hub.utils import logging as hub_logging

    datasets_logging.disable_progress_bar()
    if not verbose():
        datasets_logging.set_verbosity_error()
        hub_logging.set_verbosity_error()


def quiet_library_warnings() -> None:
    """Libraries' deprecation and future warnings about their own internals off unless verbose: in a
    run's log they read as ipo's problems. ipo's own warnings still show."""
    if not verbose():
        for category in (DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category, module=r"^(?!ipo_tui)")


def quiet_stderr():
    """A block whose writes to sys.stderr are dropped unless verbose (for a library's own progress bars)."""
    return contextlib.nullcontext() if verbose() else contextlib.redirect_stderr(io.StringIO())
