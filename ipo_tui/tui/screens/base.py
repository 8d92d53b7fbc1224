"""What every mode screen shares: the top bar, the footer, and a one-line status."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Static

from ipo_tui.tui.widgets.nav import NavBar


class ModeScreen(Screen):
    MODE = ""
    HELP = ""

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


def one_line(text: str | None, width: int) -> str:
    """Collapse whitespace and cut to `width` characters with an ellipsis."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"
