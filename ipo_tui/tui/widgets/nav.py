"""The top bar: one tab per screen (with its function key) and the loaded model on the right, which
yields the space (cut with an ellipsis) so the tabs never are."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static, Tab, Tabs

SCREENS = (
    ("model", "F2 Model"),
    ("lab", "F3 Score lab"),
    ("pairs", "F4 Pairs"),
    ("eval", "F5 Evaluation"),
    ("train", "F6 Training"),
    ("runs", "F7 Runs"),
)


class NavTabs(Tabs):
    """Tabs that switch the app's mode; kept out of the focus chain (the F keys do that job)."""

    can_focus = False


TABS_WIDTH = sum(len(label) + 2 for _, label in SCREENS)  # a tab is its label with one cell each side


class NavBar(Horizontal):
    DEFAULT_CSS = f"""
    NavBar {{ height: 2; dock: top; }}
    NavBar NavTabs {{ width: {TABS_WIDTH}; }}
    NavBar #engine-label {{ width: 1fr; height: 1; padding: 0 1; color: $text-muted; }}
    """

    def __init__(self, active: str) -> None:
        super().__init__()
        self.active = active

    def compose(self) -> ComposeResult:
        yield NavTabs(*(Tab(label, id=f"nav-{mode}") for mode, label in SCREENS), active=f"nav-{self.active}")
        yield Static(self._label(), id="engine-label")

    def on_mount(self) -> None:
        self.app.engine_status_signal.subscribe(self, self._engine_status)

    def _engine_status(self, _status) -> None:
        self.query_one("#engine-label", Static).update(self._label())

    def _label(self) -> Text:
        return Text(self.app.engine_label(), no_wrap=True, overflow="ellipsis")

    def on_tabs_tab_activated(self, event: Tabs.TabActivated) -> None:
        event.stop()
        mode = (event.tab.id or "").removeprefix("nav-")
        if mode and mode != self.active:
            # put the tab back: this bar belongs to its own screen, the target screen has its own
            self.query_one(NavTabs).active = f"nav-{self.active}"
            self.app.switch_mode(mode)
