"""A score bar: p'yes as a bar and a number with the Yes/No mass split where the score is one
template's own log-odds; the signed log-odds where it is a combination (its sigmoid says nothing:
it rounds to 1.0); and a low-mass warning."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar_text(fraction: float, width: int) -> str:
    """A horizontal bar of `width` cells filled to `fraction` (eighth-cell resolution)."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (_EIGHTHS[part] if part else "")
    return bar + " " * (width - len(bar))


class ScoreBar(Static):
    """Shows one candidate's judgement, or why it has none."""

    DEFAULT_CSS = """
    ScoreBar { height: auto; min-height: 1; padding: 0 1; }
    """
    BAR_WIDTH = 18

    def __init__(self, **kwargs) -> None:
        super().__init__("", **kwargs)
        self.score: float | None = None  # the judge's log-odds, while a judgement is shown
        self.mass: float | None = None
        self.state = "empty"
        self.show_message("—")

    def show_message(self, message: str, style: str = "dim") -> None:
        self.state = "message"
        self.score = self.mass = None
        self.update(Text(message, style=style))

    def show_pending(self) -> None:
        """Scoring is under way: keep the last figures, dimmed."""
        if self.score is None:
            self.update(Text("scoring…", style="dim italic"))
        else:
            self.set_class(True, "-stale")
        self.state = "pending"

    def show_judgement(self, judgement, min_mass: float, rank: str = "") -> None:
        self.state = "scored"
        self.set_class(False, "-stale")
        if getattr(judgement, "missing", False):  # a server returned neither Yes nor No
            self.score, self.mass = None, judgement.mass
            self.update(Text("no Yes or No among the server's top logprobs: no score", style="bold yellow"))
            return
        self.score, self.mass = judgement.score, judgement.mass
        figures = self._probability(judgement) if judgement.probability else self._combined(judgement)
        line = Text.assemble(*figures, (f"  {rank}" if rank else "", "bold"))
        notes = []
        if judgement.low_mass:
            notes.append((f"⚠ mass < {min_mass:g}: not answering Yes/No here; the score means little",
                          "bold yellow"))
        if judgement.truncated:
            notes.append((f"✂ {judgement.truncated}", "yellow"))
        text = line
        for note, style in notes:
            text = Text.assemble(text, "\n", (note, style))
        self.update(text)

    def _probability(self, judgement) -> list[tuple[str, str]]:
        """One template's score: p'yes, its bar, and how the mass splits between Yes and No."""
        p_yes_mass = judgement.p_yes * judgement.mass
        color = "green" if judgement.score >= 0 else "red"  # the score decides, p'yes is shown
        return [("p'yes ", "bold"), (f"{judgement.p_yes:.3f} ", f"bold {color}"),
                (bar_text(judgement.p_yes, self.BAR_WIDTH), color), ("▕ ", "dim"),
                (f"mass {judgement.mass:.3f} (Yes {p_yes_mass:.3f} + No {judgement.mass - p_yes_mass:.3f})", "dim")]

    def _combined(self, judgement) -> list[tuple[str, str]]:
        """A combination's score: its log-odds alone (a bar of its sigmoid would sit full)."""
        color = "green" if judgement.score > 0 else "red" if judgement.score < 0 else ""
        return [("score ", "bold"), (f"{judgement.score:+.2f} ", f"bold {color}"),
                (f"mass {judgement.mass:.3f}", "dim")]
