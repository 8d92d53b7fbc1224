"""F1 / ?: the keys of the app and of the screen it was opened on."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown

GLOBAL = """\
## Everywhere

| key | what |
| --- | --- |
| `F2` … `F7` | Model · Score lab · Pairs · Evaluation · Training · Runs |
| `ctrl+p` | command palette: every screen and action by name |
| `F1` or `?` | this help (`escape` closes it; in a text field `?` is typed, `F1` opens it) |
| `tab` / `shift+tab` | next / previous field |
| `ctrl+q` | quit |
"""


class HelpScreen(ModalScreen):
    CSS_PATH = "help.tcss"

    BINDINGS = [Binding("escape,q,question_mark", "dismiss", "Close")]

    def __init__(self, screen_help: str, title: str) -> None:
        super().__init__()
        self.screen_help = screen_help
        self.title_text = title

    def compose(self) -> ComposeResult:
        text = GLOBAL
        if self.screen_help:
            text += f"\n## {self.title_text}\n\n{self.screen_help}"
        with VerticalScroll(id="help-box", classes="dialog"):
            yield Markdown(text, id="help-text")

    def on_mount(self) -> None:
        self.query_one("#help-box").focus()
