"""One candidate in the score lab: an editor and its score bar."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import TextArea

from ipo_tui.tui.widgets.scorebar import ScoreBar


class CandidateCard(Vertical):
    DEFAULT_CSS = """
    CandidateCard { height: auto; border: round $primary 40%; padding: 0 0; margin: 0 0 0 0; }
    CandidateCard:focus-within { border: round $accent; }
    CandidateCard.-best { border: round $success; }
    CandidateCard.-worst { border: round $error 70%; }
    CandidateCard TextArea { height: 3; border: none; padding: 0 1; }
    CandidateCard.-expanded TextArea { height: auto; max-height: 40; }
    CandidateCard TextArea:focus { border: none; }
    """

    def __init__(self, serial: int, text: str = "") -> None:
        super().__init__(id=f"cand-{serial}")
        self.serial = serial
        self.initial = text
        self.generated: tuple[str, int, object] | None = None  # (text, seed, policy) when the model wrote it
        self.judgement = None

    def compose(self) -> ComposeResult:
        yield TextArea(self.initial, id=f"cand-text-{self.serial}", classes="candidate-text", soft_wrap=True,
                       placeholder="a candidate response…")
        yield ScoreBar(id=f"cand-bar-{self.serial}")

    @property
    def editor(self) -> TextArea:
        return self.query_one(TextArea)

    @property
    def bar(self) -> ScoreBar:
        return self.query_one(ScoreBar)

    @property
    def text(self) -> str:
        return self.editor.text

    @property
    def replaceable(self) -> bool:
        """Whether a new sample may take this box: it is empty, or holds the model's own sample as
        the model wrote it (a person's text, typed or edited, is never replaced)."""
        return not self.text.strip() or (self.generated is not None and self.generated[0] == self.text)

    def set_title(self, index: int, rank: str = "") -> None:
        self.border_title = f"Candidate {index}"
        self.border_subtitle = rank
        self.set_class(rank.startswith("★"), "-best")
        self.set_class(rank.startswith("▼"), "-worst")

    def origin(self):
        """(model, adapter, seed) of the text as it stands: the policy's if the model wrote it
        and nobody changed it since, else a person's."""
        if self.generated and self.generated[0] == self.text:
            _, seed, policy = self.generated
            return policy.model, policy.adapter, seed
        return "typed", "", 0
