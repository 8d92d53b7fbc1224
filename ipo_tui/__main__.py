"""`python -m ipo_tui`: the command line, as the `ipo` command's supervisor runs it."""

from ipo_tui.cli.app import main
from ipo_tui.supervisor import record_fatal_signals

record_fatal_signals()
main()
