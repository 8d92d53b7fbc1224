"""A score bar: p'yes as a bar and a number with the Yes/No mass split where the score is one
template's own log-odds; the signed log-odds where it is a combination (its sigmoid says nothing:
it rounds to 1.0); and a low-mass warning. The figures fit one line of the width the bar has: a
narrow one drops the Yes/No split, then shortens the bar."""

from __future__ import annotations

from rich.text import Text
from textual.widget import Widget

_EIGHTHS = " ▏▎▍▌▋▊▉█"


def bar_text(fraction: float, width: int) -> str:
    """A horizontal bar of `width` cells filled to `fraction` (eighth-cell resolution)."""
    fraction = min(max(fraction, 0.0), 1.0)
    eighths = round(fraction * width * 8)
    full, part = divmod(eighths, 8)
    bar = "█" * full + (_EIGHTHS[part] if part else "")
    return bar + " " * (width - len(bar))


class ScoreBar(Widget):
    """Shows one candidate's judgement, or why it has none."""

    DEFAULT_CSS = """
    ScoreBar { height: auto; min-height: 1; padding: 0 1; }
    ScoreBar.-stale { text-opacity: 60%; }
    """
    BAR_WIDTH = 18
    MIN_BAR = 4  # narrower than this, no bar: the number says it all

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.score: float | None = None  # the judge's log-odds, while a judgement is shown
        self.mass: float | None = None
        self.state = "message"
        self._message = Text("—", style="dim")
        self._judgement = None
        self._min_mass = 0.0

    def show_message(self, message: str, style: str = "dim") -> None:
        self.state = "message"
        self.score = self.mass = self._judgement = None
        self._message = Text(message, style=style)
        self.set_class(False, "-stale")
        self.refresh(layout=True)

    def show_pending(self) -> None:
        """Scoring is under way: keep the last figures, dimmed."""
        if self._judgement is None:
            self._message = Text("scoring…", style="dim italic")
            self.refresh(layout=True)
        else:
            self.set_class(True, "-stale")
        self.state = "pending"

    def show_stale(self) -> None:
        """The figures no longer score what is shown (the template became invalid): say so."""
        self.state = "stale"
        self.set_class(True, "-stale")
        self.refresh(layout=True)

    def show_judgement(self, judgement, min_mass: float) -> None:
        self.state = "scored"
        self.set_class(False, "-stale")
        self._judgement, self._min_mass = judgement, min_mass
        missing = getattr(judgement, "missing", False)  # a server returned neither Yes nor No
        self.score, self.mass = (None if missing else judgement.score), judgement.mass
        self.refresh(layout=True)

    def render(self) -> Text:
        if self._judgement is None:
            return self._message
        return self._judgement_text(self.content_size.width)

    def _judgement_text(self, width: int) -> Text:
        judgement = self._judgement
        if getattr(judgement, "missing", False):
            return Text("no Yes or No among the server's top logprobs: no score", style="bold yellow")
        stale = [("stale ", "bold yellow")] if self.state == "stale" else []
        width -= 6 if stale else 0
        figures = self._probability(judgement, width) if judgement.probability else self._combined(judgement)
        text = Text.assemble(*stale, *figures)
        if judgement.low_mass:
            text.append(f"\n⚠ mass < {self._min_mass:g}: not answering Yes/No here; the score means little",
                        style="bold yellow")
        if judgement.truncated:
            text.append(f"\n✂ {judgement.truncated}", style="yellow")
        return text

    def _probability(self, judgement, width: int) -> list[tuple[str, str]]:
        """One template's score: p'yes, its bar, and how the mass splits between Yes and No, as
        much of it as `width` holds on one line."""
        p_yes_mass = judgement.p_yes * judgement.mass
        color = "green" if judgement.score >= 0 else "red"  # the score decides, p'yes is shown
        head = [("p'yes ", "bold"), (f"{judgement.p_yes:.3f} ", f"bold {color}")]
        room = width - len("p'yes 0.000 ▕ ")
        mass = f"mass {judgement.mass:.3f}"
        split = f"{mass} (Yes {p_yes_mass:.3f} + No {judgement.mass - p_yes_mass:.3f})"
        tail = split if room - len(split) >= 2 * self.MIN_BAR else mass
        bar = min(self.BAR_WIDTH, room - len(tail))
        if bar < self.MIN_BAR:
            return [*head, (tail, "dim")]
        return [*head, (bar_text(judgement.p_yes, bar), color), ("▕ ", "dim"), (tail, "dim")]

    def _combined(self, judgement) -> list[tuple[str, str]]:
        """A combination's score: its log-odds alone (a bar of its sigmoid would sit full)."""
        color = "green" if judgement.score > 0 else "red" if judgement.score < 0 else ""
        return [("score ", "bold"), (f"{judgement.score:+.2f} ", f"bold {color}"),
                (f"mass {judgement.mass:.3f}", "dim")]
