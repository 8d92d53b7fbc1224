"""What every mode screen shares: the top bar, the footer, and a one-line status."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from ipo_tui.tui.widgets.nav import NavBar


class ModeScreen(Screen):
    MODE = ""
    HELP = ""
    # first here, so the footer shows F1 Help first on every screen, however narrow the terminal
    # (the app's own F1 binding, a priority one, handles the key)
    BINDINGS = [Binding("f1", "app.help", "Help", key_display="F1")]

    def compose(self) -> ComposeResult:
        yield NavBar(self.MODE)
        yield from self.compose_body()
        yield Static("", id="status", classes="status")
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def set_status(self, text, style: str = "") -> None:
        from rich.text import Text

        self.query_one("#status", Static).update(Text(str(text), style=style) if isinstance(text, str) else text)

    def error(self, text: str, title: str = "") -> None:
        """Show a problem in the status line and as a notification; never raise."""
        self.set_status(f"✗ {text}", "bold red")
        self.notify(text, title=title or "error", severity="error", timeout=10)


def count(n: int, noun: str) -> str:
    """`n` and the noun, plural unless n is 1: "1 candidate", "3 candidates"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def one_line(text: str | None, width: int) -> str:
    """Collapse whitespace and cut to `width` characters with an ellipsis."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
