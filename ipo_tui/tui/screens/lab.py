"""Score lab: an instruction, candidate editors, and each candidate's score live as you type.

Every edit bumps a version number and (re)starts a 300 ms debounce timer; when it fires, one
exclusive thread worker scores all candidates with the shared prefix in the KV cache. A newer
worker cancels an older one, and a result whose version is not the latest is dropped, so the
bars never show scores of text that is no longer there.
"""

from __future__ import annotations

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Select, Static, TextArea
from textual.worker import get_current_worker

from ipo_tui.errors import IpoError
from ipo_tui.judge.routing import route
from ipo_tui.judge.scoring import margin, prefers, ranked
from ipo_tui.judge.templates import CATEGORIES
from ipo_tui.loop.stages import ScoredCandidate, save_scored_pair
from ipo_tui.tui.screens.base import ModeScreen
from ipo_tui.tui.widgets.candidate import CandidateCard

DEBOUNCE_S = 0.3
START_CANDIDATES = 4


class Scored(Message):
    def __init__(self, version: int, results: dict, category: str) -> None:
        super().__init__()
        self.version, self.results, self.category = version, results, category


class ScoreFailed(Message):
    def __init__(self, version: int, error: str) -> None:
        super().__init__()
        self.version, self.error = version, error


class Generated(Message):
    def __init__(self, index: int, text: str, seed: int, policy) -> None:
        super().__init__()
        self.index, self.text, self.seed, self.policy = index, text, seed, policy


class GenerateDone(Message):
    def __init__(self, count: int, error: str | None = None, cancelled: bool = False) -> None:
        super().__init__()
        self.count, self.error, self.cancelled = count, error, cancelled


class LabScreen(ModeScreen):
    CSS_PATH = "lab.tcss"

    MODE = "lab"
    BINDINGS = [
        Binding("ctrl+g", "generate", "Generate"),
        Binding("ctrl+s", "save_pair", "Save pair"),
        Binding("ctrl+n", "add_candidate", "Add"),
        Binding("ctrl+r", "remove_candidate", "Remove"),
        Binding("ctrl+t", "cycle_category", "Category"),
        Binding("ctrl+o", "expand_candidate", "Expand"),
        Binding("ctrl+e", "focus_template", "Template", show=False),
    ]
    HELP = """\
| key | what |
| --- | --- |
| type | each candidate's score updates 300 ms after you stop typing |
| `ctrl+g` | generate n candidates from the model (again: stop) |
| `ctrl+s` | save best and worst as an accepted pair (prompt set `lab`) |
| `ctrl+n` / `ctrl+r` | add a candidate / remove the focused (or last) one |
| `ctrl+t` | next category (auto, chat, code, math, safety, generic) |
| `ctrl+o` | show the focused candidate whole, to read it before judging or saving (again: three lines) |
| `tab` | next field, including the template editors on the right |

The template edits apply to scoring for the rest of this session; both `{instruction}` and
`{response}` must stay in the user text. The bar shows p'yes, and Yes/No are the probabilities
p(Yes) and p(No) over the full vocabulary: when their sum (the mass) is below the judge's
threshold, the model is not answering Yes/No under this template. A judge setting that combines
several templates, fitted weights, the reply's PMI or calibration shows its score instead: the
log-odds, signed, with no bar (its p'yes would read 1.000 for every candidate). Best and worst,
and a saved pair's margin, always follow the score.
"""

    def __init__(self) -> None:
        super().__init__()
        self.version = 0  # bumped by every edit that changes what would be scored
        self.scored_version = -1  # the version the bars show
        self.dropped = 0  # results that arrived after a newer edit (counted for tests)
        self._timer = None
        self._serial = 0
        self._category_choice = "auto"
        self._template_name = ""
        self._loading_template = 0
        self.generating = False
        self._generated = self._to_generate = 0

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="lab-body"):
            with Vertical(id="lab-main"):
                yield Label("Instruction", classes="field-label")
                yield TextArea("", id="instruction", soft_wrap=True, placeholder="the prompt the candidates answer…")
                with VerticalScroll(id="candidates", can_focus=False):
                    for _ in range(START_CANDIDATES):
                        yield self._new_card()
            with Vertical(id="lab-side"):
                yield Label("Category", classes="field-label")
                with Horizontal(classes="row"):
                    yield Select([(c, c) for c in ("auto", *CATEGORIES)], value="auto", allow_blank=False, id="category")
                    yield Static("", id="detected")
                yield Label("Template", id="template-title", classes="field-label")
                yield TextArea("", id="tpl-system", soft_wrap=True)
                yield TextArea("", id="tpl-user", soft_wrap=True)
                yield Static("", id="tpl-error")
                yield Label("Generate: n, max tokens, temperature, seed", classes="field-label")
                with Horizontal(classes="row"):
                    yield Input("4", id="gen-n", type="integer", max_length=2)
                    yield Input("128", id="gen-tokens", type="integer", max_length=5)
                    yield Input("0.8", id="gen-temp", type="number", max_length=5)
                    yield Input("0", id="gen-seed", type="integer", max_length=9)

    def _new_card(self, text: str = "") -> CandidateCard:
        self._serial += 1
        return CandidateCard(self._serial, text)

    def on_mount(self) -> None:
        self.query_one("#tpl-system").border_title = "system"
        self.query_one("#tpl-user").border_title = "user ({instruction}, {response})"
        self._renumber()
        self._show_template()
        self.app.engine_changed_signal.subscribe(self, self._engine_changed)
        self.set_status(self._idle_status())
        self.query_one("#instruction").focus()

    @property
    def cards(self) -> list[CandidateCard]:
        return list(self.query(CandidateCard))

    def _idle_status(self) -> str:
        if self.app.engine is None:
            return "no model loaded yet: scores appear once one is (F2 to pick one)"
        return "type an instruction and candidates; scores follow as you type"

    def _engine_changed(self, _engine) -> None:
        self._template_name = ""  # the new judge may map categories to other templates
        self._show_template()
        self.set_status(self._idle_status())
        self._changed()

    # --- what is being scored -----------------------------------------------------------------------

    @property
    def instruction(self) -> str:
        return self.query_one("#instruction", TextArea).text

    def category(self) -> str:
        """The category chosen, or under "auto" the keyword router's (the lab shows its template)."""
        return route(self.instruction) if self._category_choice == "auto" else self._category_choice

    def _changed(self) -> None:
        self.version += 1
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(DEBOUNCE_S, self._start_scoring)

    @on(TextArea.Changed)
    def _text_changed(self, event: TextArea.Changed) -> None:
        area_id = event.text_area.id or ""
        if area_id.startswith("tpl-"):
            if self._loading_template:
                self._loading_template -= 1
                return
            self._template_edited()
            return
        if area_id == "instruction":
            self._update_detected()
        self._changed()

    @on(Select.Changed, "#category")
    def _category_changed(self, event: Select.Changed) -> None:
        self._category_choice = str(event.value)
        self._update_detected()
        self._changed()

    def _update_detected(self) -> None:
        detected = route(self.instruction)
        text = f"→ {detected}" if self._category_choice == "auto" else f"(detected: {detected})"
        self.query_one("#detected", Static).update(text)
        self._show_template()

    def _show_template(self) -> None:
        try:
            template = self.app.template_for(self.category())
        except IpoError as exc:
            self.query_one("#tpl-error", Static).update(f"✗ {exc}")
            return
        if template.name == self._template_name:
            return
        self._template_name = template.name
        setting = self.app.setting_for(self.category())
        judged = "" if setting == template.name else f"\n judged by {setting}"
        self.query_one("#template-title", Label).update(f"Template: {template.name}{judged}")
        for area_id, text in (("#tpl-system", template.system), ("#tpl-user", template.user)):
            area = self.query_one(area_id, TextArea)
            if area.text != text:
                self._loading_template += 1
                area.load_text(text)
        self.query_one("#tpl-error", Static).update("")

    def _template_edited(self) -> None:
        from ipo_tui.judge.templates import Template

        system = self.query_one("#tpl-system", TextArea).text
        user = self.query_one("#tpl-user", TextArea).text
        try:
            template = Template(self._template_name, system, user)
        except IpoError as exc:
            self.query_one("#tpl-error", Static).update(f"✗ {exc}")
            return
        self.query_one("#tpl-error", Static).update("edited: applies to scoring in this session")
        self.app.set_template(template)
        self._changed()

    # --- scoring ----------------------------------------------------------------------------------

    def _start_scoring(self) -> None:
        self._timer = None
        judge = self.app.judge
        cards = self.cards
        if judge is None:
            for card in cards:
                card.bar.show_message("—")
            self.set_status(self._idle_status())
            return
        instruction = self.instruction
        items = [(card.id, card.text) for card in cards if card.text.strip()]
        for card in cards:
            if not card.text.strip():
                card.judgement = None
                card.bar.show_message("waiting for the model…" if self.generating else "(empty)",
                                      "dim italic" if self.generating else "dim")
        if not instruction.strip():
            for card in cards:
                card.judgement = None
                card.bar.show_message("type an instruction to score this")
            self.scored_version = self.version
            self._rank()
            return
        if not items:
            self.scored_version = self.version
            self._rank()
            return
        for card in cards:
            if card.text.strip():
                card.bar.show_pending()
        generating = f"generating {self._generated}/{self._to_generate} · " if self.generating else ""
        self.set_status(f"{generating}scoring…", "dim")
        # "auto" under the model router: the judge routes in the worker (a forward pass, cached)
        model_routed = self._category_choice == "auto" and judge.settings.router == "model"
        self.score_worker(self.version, instruction, items, None if model_routed else self.category())

    @work(thread=True, exclusive=True, group="score", exit_on_error=False)
    def score_worker(self, version: int, instruction: str, items: list[tuple[str, str]], category: str | None) -> None:
        worker = get_current_worker()
        app = self.app
        with app.engine_lock:
            if worker.is_cancelled or version != self.version:
                return  # a newer edit is on its way; do not spend the engine on this one
            judge = app.judge
            try:
                judgements = judge.score(instruction, [text for _, text in items], category)
            except IpoError as exc:
                self.post_message(ScoreFailed(version, str(exc)))
                return
            except Exception as exc:  # an engine failure must not take the app down
                self.post_message(ScoreFailed(version, f"{type(exc).__name__}: {exc}"))
                return
        self.post_message(Scored(version, {card_id: j for (card_id, _), j in zip(items, judgements)},
                                 judgements[0].category if judgements else category))

    def on_scored(self, message: Scored) -> None:
        if message.version != self.version:
            self.dropped += 1
            return
        min_mass = self.app.judge.min_mass if self.app.judge else 0.0
        for card in self.cards:
            judgement = message.results.get(card.id)
            if judgement is not None:
                card.judgement = judgement
                card.bar.show_judgement(judgement, min_mass)
        self.scored_version = message.version
        self._rank()
        low = sum(1 for c in self.cards if c.judgement is not None and c.judgement.low_mass)
        template = next(iter(message.results.values())).template if message.results else ""
        note = f"; {low} below the mass threshold" if low else ""
        generating = f"generating {self._generated}/{self._to_generate} · " if self.generating else ""
        self.set_status(f"{generating}scored {len(message.results)} candidates · category {message.category} · "
                        f"template {template}{note}")

    def on_score_failed(self, message: ScoreFailed) -> None:
        if message.version != self.version:
            self.dropped += 1
            return
        self.scored_version = message.version
        for card in self.cards:
            if card.text.strip():
                card.judgement = None
                card.bar.show_message("not scored", "red")
        self.error(message.error, "scoring")

    def _rank(self) -> None:
        judged = [c for c in self.cards if c.judgement is not None and not getattr(c.judgement, "missing", False)]
        scored = ranked(judged, lambda c: c.judgement.score)
        best = worst = None
        if len(scored) > 1 and prefers(scored[0].judgement.score, scored[-1].judgement.score):  # a tie ranks nothing
            best, worst = scored[0], scored[-1]
        for index, card in enumerate(self.cards, 1):
            rank = ""
            if card is best:
                rank = "★ best"
            elif card is worst:
                rank = "▼ worst"
            card.set_title(index, rank)

    def _renumber(self) -> None:
        self._rank()

    # --- candidates -------------------------------------------------------------------------------

    def action_add_candidate(self) -> None:
        card = self._new_card()
        self.query_one("#candidates").mount(card)
        self.call_after_refresh(self._after_add, card)

    def _after_add(self, card: CandidateCard) -> None:
        self._renumber()
        card.editor.focus()
        card.scroll_visible()

    def action_remove_candidate(self) -> None:
        cards = self.cards
        if len(cards) <= 2:
            self.set_status("a pair needs at least two candidates", "yellow")
            return
        focused = self.focused
        target = next((c for c in cards if focused is not None and c in focused.ancestors_with_self), cards[-1])
        target.remove()
        self.call_after_refresh(self._renumber)
        self._changed()

    def action_expand_candidate(self) -> None:
        focused = self.focused
        card = next((c for c in self.cards if focused is not None and c in focused.ancestors_with_self), None)
        if card is None:
            self.set_status("focus a candidate to expand it (tab)", "yellow")
            return
        card.toggle_class("-expanded")

    def action_cycle_category(self) -> None:
        select = self.query_one("#category", Select)
        options = ("auto", *CATEGORIES)
        select.value = options[(options.index(str(select.value)) + 1) % len(options)]

    def action_focus_template(self) -> None:
        self.query_one("#tpl-user").focus()

    # --- generation -------------------------------------------------------------------------------

    def _int(self, selector: str, default: int, low: int, high: int) -> int:
        try:
            return min(max(int(self.query_one(selector, Input).value), low), high)
        except ValueError:
            return default

    def action_generate(self) -> None:
        if self.generating:
            self.workers.cancel_group(self, "generate")
            self.set_status("stopping generation after the candidate in flight…", "yellow")
            return
        if self.app.engine is None:
            self.error("load a model first (F2)", "generate")
            return
        instruction = self.instruction
        if not instruction.strip():
            self.error("type an instruction first: the model answers it", "generate")
            return
        n = self._int("#gen-n", 4, 1, 32)
        max_tokens = self._int("#gen-tokens", 128, 1, 4096)
        seed = self._int("#gen-seed", 0, 0, 2**31 - 1)
        try:
            temperature = max(float(self.query_one("#gen-temp", Input).value), 0.0)
        except ValueError:
            temperature = 0.8
        while len(self.cards) < n:
            self.query_one("#candidates").mount(self._new_card())
        self.call_after_refresh(self._renumber)
        for card in self.cards[:n]:
            card.bar.show_message("waiting for the model…", "dim italic")
        self.generating = True
        self._generated, self._to_generate = 0, n
        self.set_status(f"generating 0/{n}…")
        self.generate_worker(instruction, n, max_tokens, temperature, seed)

    @work(thread=True, exclusive=True, group="generate", exit_on_error=False)
    def generate_worker(self, instruction: str, n: int, max_tokens: int, temperature: float, seed: int) -> None:
        from ipo_tui.backends.base import Sampling
        from ipo_tui.loop.stages import policy_of

        worker = get_current_worker()
        messages = [{"role": "user", "content": instruction}]
        done = 0
        for index in range(n):
            if worker.is_cancelled:
                self.post_message(GenerateDone(done, cancelled=True))
                return
            with self.app.engine_lock:  # one at a time, so scoring can run between candidates
                engine = self.app.engine
                try:
                    [text] = engine.generate(messages, Sampling(1, temperature, 0.95, max_tokens, seed + index))
                except Exception as exc:
                    message = str(exc) if isinstance(exc, IpoError) else f"{type(exc).__name__}: {exc}"
                    self.post_message(GenerateDone(done, error=message))
                    return
                policy = policy_of(engine)
            done += 1
            self.post_message(Generated(index, text.strip(), seed + index, policy))
        self.post_message(GenerateDone(done))

    def on_generated(self, message: Generated) -> None:
        cards = self.cards
        if message.index >= len(cards):
            return
        card = cards[message.index]
        card.generated = (message.text, message.seed, message.policy)
        card.editor.load_text(message.text)
        self._generated = message.index + 1
        self.set_status(f"generating {self._generated}/{self._to_generate}…")

    def on_generate_done(self, message: GenerateDone) -> None:
        self.generating = False
        for card in self.cards:
            if card.bar.state == "message" and not card.text.strip():
                card.bar.show_message("(empty)")
        if message.error:
            self.error(message.error, "generate")
        elif message.cancelled:
            self.set_status(f"generation stopped after {message.count} candidate(s)", "yellow")
        else:
            self.set_status(f"generated {message.count} candidates; scoring…")

    # --- saving -----------------------------------------------------------------------------------

    def action_save_pair(self) -> None:
        judge = self.app.judge
        if judge is None:
            self.error("load a model first (F2): a pair needs scores", "save pair")
            return
        if self.scored_version != self.version or self._timer is not None:
            self.set_status("still scoring the latest edit; save again in a moment", "yellow")
            return
        scored = [(i, c) for i, c in enumerate(self.cards)
                  if c.judgement is not None and c.text.strip() and not getattr(c.judgement, "missing", False)]
        if len(scored) < 2:
            self.error("a pair needs at least two scored candidates", "save pair")
            return
        by_score = ranked(scored, lambda ic: ic[1].judgement.score)
        best, worst = by_score[0], by_score[-1]
        spread = margin(best[1].judgement.score, worst[1].judgement.score)
        if spread <= 0:
            self.error("the best and worst candidates are tied: nothing to prefer", "save pair")
            return
        try:
            candidates = [ScoredCandidate(c.text, *c.origin(), c.judgement) for _, c in scored]
            positions = [i for i, _ in scored]
            pair_id, set_name = save_scored_pair(self.app.store, judge, self.instruction, self.category(), candidates,
                                                 positions, positions.index(best[0]), positions.index(worst[0]))
        except IpoError as exc:
            self.error(str(exc), "save pair")
            return
        except Exception as exc:
            self.error(f"{type(exc).__name__}: {exc}", "save pair")
            return
        self.set_status(f"saved pair #{pair_id} (accepted, margin {spread:+.2f}) in prompt set {set_name!r}", "green")
        self.notify(f"pair #{pair_id} stored as accepted", title="save pair")
