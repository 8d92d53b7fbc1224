"""The one exception type the faces (CLI, TUI, scripts) turn into a one-line message."""

import sys
from collections.abc import Callable


class IpoError(Exception):
    """A problem the user can fix; the message names it and says what to do."""


class Stopped(Exception):
    """Work stopped by a signal; the message says what is kept and how to continue. The process
    exits with the signal's status (see `ipo_tui.stopping`)."""


def run_script(main: Callable[[], None]) -> None:
    """A script's main (benchmarks/), with an IpoError printed as its one line, as the CLI prints it."""
    try:
        main()
    except IpoError as exc:
        sys.exit(f"error: {exc}")
