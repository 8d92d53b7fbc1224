"""Widgets of the Textual app (Textual may be imported here, nowhere else in the core)."""

from ipo_tui.tui.widgets.nav import NavBar
from ipo_tui.tui.widgets.scorebar import ScoreBar, bar_text

__all__ = ["NavBar", "ScoreBar", "bar_text"]
