"""Score lab: an instruction, candidate editors, and each candidate's score live as you type.

Every edit bumps a version number and (re)starts a 300 ms debounce timer; when it fires, one
exclusive thread worker scores all candidates with the shared prefix in the KV cache. A newer
worker cancels an older one, and a result whose version is not the latest is dropped, so the
bars never show scores of text that is no longer there.

Template edits are the lab's own: it scores with the loaded judge plus its edited templates, a
judge of its own, so the other screens keep judging (and re-scoring) with the loaded judge.
"""

from __future__ import annotations

from dataclasses import replace

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Input, Label, Select, Static, TextArea
from textual.worker import get_current_worker

from ipo_tui.errors import IpoError
from ipo_tui.judge.routing import route
from ipo_tui.judge.scoring import Judge, margin, prefers, ranked
from ipo_tui.judge.templates import CATEGORIES, Template
from ipo_tui.loop.stages import LAB_SET, ScoredCandidate, save_scored_pair
from ipo_tui.tui.screens.base import ModeScreen, count
from ipo_tui.tui.widgets.candidate import CandidateCard

DEBOUNCE_S = 0.3
START_CANDIDATES = 4


class Scored(Message):
    def __init__(self, version: int, results: dict, category: str, judge: Judge) -> None:
        super().__init__()
        self.version, self.results, self.category, self.judge = version, results, category, judge


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
        Binding("ctrl+g", "stop_generation", "Stop"),  # shown instead of Generate while generating
        Binding("ctrl+s", "save_pair", "Save"),
        Binding("ctrl+n", "add_candidate", "Add"),
        Binding("ctrl+r", "remove_candidate", "Remove"),
        Binding("ctrl+l", "reset_templates", "Reset"),  # shown while a template is edited
        Binding("ctrl+t", "cycle_category", "Category", show=False),
        Binding("ctrl+o", "expand_candidate", "Expand", show=False),
    ]
    HELP = """\
| key | what |
| --- | --- |
| type | each candidate's score updates 300 ms after you stop typing |
| `ctrl+g` | generate n candidates into the empty boxes and those holding the model's earlier samples, adding boxes as needed; text you typed or edited is never replaced (again while generating: stop) |
| `ctrl+s` | save best and worst as an accepted pair (prompt set `lab`); again after a change updates that pair, never a second copy |
| `ctrl+n` / `ctrl+r` | add a candidate / remove the focused (or last) one |
| `ctrl+t` | next category (auto, chat, code, math, safety, generic) |
| `ctrl+o` | show the focused candidate whole, to read it before judging or saving (again: three lines) |
| `ctrl+l` | reset the edited templates to the loaded judge's |
| `tab` | next field, including the template editors on the right |

Template edits are the lab's own: they change how the lab scores (and the judge its saved pairs
are recorded under), never the judge of the other screens. Both `{instruction}` and `{response}`
must stay in the user text; while they do not, the scores shown are marked stale and nothing is
saved. The bar shows p'yes, and Yes/No are the probabilities p(Yes) and p(No) over the full
vocabulary: when their sum (the mass) is below the judge's threshold, the model is not answering
Yes/No under this template. A judge setting that combines several templates, fitted weights, the
reply's PMI or calibration shows its score instead: the log-odds, signed, with no bar (its p'yes
would read 1.000 for every candidate). Best and worst, and a saved pair's margin, always follow
the score.
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
        self.edits: dict[str, Template] = {}  # template name -> the lab's edit of it
        self.template_error = ""  # why the template being edited cannot be used, while it cannot
        self._edited_judge: tuple[tuple, Judge] | None = None  # (what it was made from, the judge)
        self.scored_judge: Judge | None = None  # the judge whose scores the bars show
        self.saved: tuple[tuple, int] | None = None  # (what was saved, its pair id)
        self.generating = False
        self._generated = self._to_generate = 0
        self._sample_boxes: list[CandidateCard] = []  # where the samples being generated go, in order

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
                yield Label("Generate", classes="field-label")
                with Grid(id="gen-settings"):
                    for name, input_id, value, kind, length in (("n", "gen-n", "4", "integer", 2),
                                                                ("tokens", "gen-tokens", "128", "integer", 5),
                                                                ("temp", "gen-temp", "0.8", "number", 5),
                                                                ("seed", "gen-seed", "0", "integer", 9)):
                        with Horizontal(classes="gen-field"):
                            yield Label(name)
                            yield Input(value, id=input_id, type=kind, max_length=length, compact=True)

    def _new_card(self, text: str = "") -> CandidateCard:
        self._serial += 1
        return CandidateCard(self._serial, text)

    def on_mount(self) -> None:
        self.query_one("#tpl-system").border_title = "system"
        self.query_one("#tpl-user").border_title = "user"
        self.query_one("#tpl-user").border_subtitle = "{instruction} {response}"
        self._rank()
        self._show_template()
        self.app.engine_changed_signal.subscribe(self, self._engine_changed)
        self.app.engine_status_signal.subscribe(self, self._engine_status)
        self.set_status(self._idle_status())
        self.query_one("#instruction").focus()

    @property
    def cards(self) -> list[CandidateCard]:
        return list(self.query(CandidateCard))

    def _idle_status(self) -> str:
        if self.app.engine_state == "loading":
            return f"loading the model: {self.app.engine_message}; scores appear once it is ready"
        if self.app.engine is None:
            return "no model loaded: scores appear once one is (F2 to pick one)"
        return "type an instruction and candidates; scores follow as you type"

    def _engine_status(self, _state) -> None:
        if self.app.judge is None:  # once a judge scores, the status line says what it did
            self.set_status(self._idle_status())

    def _engine_changed(self, _engine) -> None:
        self._template_name = ""  # the new judge may map categories to other templates
        self._show_template()
        self.set_status(self._idle_status())
        self._changed()

    def check_action(self, action: str, parameters: tuple) -> bool | None:
        """Generate and Stop share ctrl+g (one is shown at a time); Reset shows while a template is edited."""
        if action == "generate":
            return not self.generating
        if action == "stop_generation":
            return self.generating
        if action == "reset_templates":
            return bool(self.edits or self.template_error)
        return True

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

    # --- templates: the lab's own edits over the loaded judge's -----------------------------------------

    def _loaded_template(self) -> Template:
        """The template the loaded judge (or the config, before a load) judges this category with."""
        return self.app.template_for(self.category())

    def _show_template(self) -> None:
        try:
            loaded = self._loaded_template()
        except IpoError as exc:
            self.query_one("#tpl-error", Static).update(f"✗ {exc}")
            return
        if loaded.name == self._template_name:
            return
        self._template_name = loaded.name
        self.template_error = ""  # an invalid edit of the template shown before is dropped
        self.refresh_bindings()
        template = self.edits.get(loaded.name, loaded)
        self._show_template_title()
        for area_id, text in (("#tpl-system", template.system), ("#tpl-user", template.user)):
            area = self.query_one(area_id, TextArea)
            if area.text != text:
                self._loading_template += 1
                area.load_text(text)
        self.query_one("#tpl-error", Static).update("")

    def _show_template_title(self) -> None:
        name = self._template_name
        setting = self.app.setting_for(self.category())
        edited = " (edited)" if name in self.edits else ""
        judged = "" if setting == name else f"\n judged by {setting}"
        self.query_one("#template-title", Label).update(f"Template: {name}{edited}{judged}")

    def _template_edited(self) -> None:
        try:
            loaded = self._loaded_template()
        except IpoError:
            return  # nothing to edit: _show_template says why
        system = self.query_one("#tpl-system", TextArea).text
        user = self.query_one("#tpl-user", TextArea).text
        try:
            template = replace(loaded, system=system, user=user)  # its polarity stays
        except IpoError as exc:
            self.template_error = str(exc)
            self.query_one("#tpl-error", Static).update(f"✗ {exc}; the scores shown are stale")
        else:
            self.template_error = ""
            if template == loaded:  # edited back to the loaded judge's
                self.edits.pop(loaded.name, None)
            else:
                self.edits[loaded.name] = template
            note = "the lab's own: other screens judge with the loaded judge" if self.edits else ""
            self.query_one("#tpl-error", Static).update(note)
        self._show_template_title()
        self.refresh_bindings()
        self._changed()

    def action_reset_templates(self) -> None:
        self.edits.clear()
        self.template_error = ""
        self._template_name = ""  # reload the texts
        self._show_template()
        self.refresh_bindings()
        self.set_status("templates reset to the loaded judge's")
        self._changed()

    def lab_judge(self, loaded: Judge, edits: dict[str, Template]) -> Judge:
        """`loaded` with the lab's template `edits`; made in the score worker, under the engine lock
        (a judge reads its Yes/No token ids from the engine), and kept while neither changes."""
        if not edits:
            return loaded
        made_from = (loaded, sorted(edits.items()))
        if self._edited_judge is None or self._edited_judge[0] != made_from:
            judge = Judge(loaded.backend, settings=loaded.settings)
            judge.templates = {**loaded.templates, **edits}
            self._edited_judge = (made_from, judge)
        return self._edited_judge[1]

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
        if self.template_error:
            self._mark_stale()
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
        self.set_status(f"{self._generating_note()}scoring…", "dim")
        # "auto" under the model router: the judge routes in the worker (a forward pass, cached)
        model_routed = self._category_choice == "auto" and judge.settings.router == "model"
        self.score_worker(self.version, instruction, items, None if model_routed else self.category(), dict(self.edits))

    def _mark_stale(self) -> None:
        """The template cannot be used: the scores shown are from before the edit, and say so."""
        for card in self.cards:
            if card.judgement is not None:
                card.bar.show_stale()
            elif card.text.strip():
                card.bar.show_message("not scored: the template is invalid", "yellow")
        self.set_status("✗ the template is invalid (see under it): the scores shown are stale until it is fixed; "
                        "ctrl+l resets it", "bold yellow")

    def _generating_note(self) -> str:
        return f"generating {self._generated}/{self._to_generate} · " if self.generating else ""

    @work(thread=True, exclusive=True, group="score", exit_on_error=False)
    def score_worker(self, version: int, instruction: str, items: list[tuple[str, str]], category: str | None,
                     edits: dict[str, Template]) -> None:
        worker = get_current_worker()
        app = self.app
        with app.engine_lock:
            if worker.is_cancelled or version != self.version:
                return  # a newer edit is on its way; do not spend the engine on this one
            try:
                judge = self.lab_judge(app.judge, edits)
                judgements = judge.score(instruction, [text for _, text in items], category)
            except IpoError as exc:
                self.post_message(ScoreFailed(version, str(exc)))
                return
            except Exception as exc:  # an engine failure must not take the app down
                self.post_message(ScoreFailed(version, f"{type(exc).__name__}: {exc}"))
                return
        self.post_message(Scored(version, {card_id: j for (card_id, _), j in zip(items, judgements)},
                                 judgements[0].category if judgements else category, judge))

    def on_scored(self, message: Scored) -> None:
        if message.version != self.version:
            self.dropped += 1
            return
        for card in self.cards:
            judgement = message.results.get(card.id)
            if judgement is not None:
                card.judgement = judgement
                card.bar.show_judgement(judgement, message.judge.min_mass)
        self.scored_version = message.version
        self.scored_judge = message.judge
        self._rank()
        low = sum(1 for c in self.cards if c.judgement is not None and c.judgement.low_mass)
        template = next(iter(message.results.values())).template if message.results else ""
        edited = " (edited)" if self.edits else ""
        note = f"; {low} below the mass threshold" if low else ""
        self.set_status(f"{self._generating_note()}scored {count(len(message.results), 'candidate')} · "
                        f"{message.category} · template {template}{edited}{note}")

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

    # --- candidates -------------------------------------------------------------------------------

    async def action_add_candidate(self) -> None:
        card = self._new_card()
        # awaited: its editor exists before the next key (a ctrl+r right after must not meet it half-made)
        await self.query_one("#candidates").mount(card)
        self._rank()
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
        self.call_after_refresh(self._rank)
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

    # --- generation -------------------------------------------------------------------------------

    def _int(self, selector: str, default: int, low: int, high: int) -> int:
        try:
            return min(max(int(self.query_one(selector, Input).value), low), high)
        except ValueError:
            return default

    async def action_generate(self) -> None:
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
        self._sample_boxes = await self._boxes_for_samples(n)
        for card in self._sample_boxes:
            card.bar.show_message("waiting for the model…", "dim italic")
        self.generating = True
        self.refresh_bindings()
        self._generated, self._to_generate = 0, n
        self.set_status(f"generating 0/{n}…")
        self.generate_worker(instruction, n, max_tokens, temperature, seed)

    async def _boxes_for_samples(self, n: int) -> list[CandidateCard]:
        """`n` boxes for the model's samples: the empty ones and those holding its earlier samples
        unchanged, in order, then new ones. What a person typed (or edited) is theirs: a curator
        compares it with the samples, so it is never replaced (and needs no undo)."""
        boxes = [card for card in self.cards if card.replaceable][:n]
        added = [self._new_card() for _ in range(n - len(boxes))]
        if added:
            await self.query_one("#candidates").mount_all(added)  # composed (with their bars) once awaited
            self._rank()
        return boxes + added

    def action_stop_generation(self) -> None:
        self.workers.cancel_group(self, "generate")
        self.set_status("stopping generation after the candidate in flight…", "yellow")

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

    async def on_generated(self, message: Generated) -> None:
        card = self._sample_boxes[message.index]
        if not card.is_attached or not card.replaceable:  # removed, or typed into, while the model wrote
            card = self._new_card()
            await self.query_one("#candidates").mount(card)
            self._rank()
        card.generated = (message.text, message.seed, message.policy)
        card.editor.load_text(message.text)
        self._generated = message.index + 1
        self.set_status(f"generating {self._generated}/{self._to_generate}…")

    def on_generate_done(self, message: GenerateDone) -> None:
        self.generating = False
        self.refresh_bindings()
        for card in self.cards:
            if card.bar.state == "message" and not card.text.strip():
                card.bar.show_message("(empty)")
        if message.error:
            self.error(message.error, "generate")
        elif message.cancelled:
            self.set_status(f"generation stopped after {count(message.count, 'candidate')}", "yellow")
        else:
            self.set_status(f"generated {count(message.count, 'candidate')}; scoring…")

    # --- saving -----------------------------------------------------------------------------------

    def action_save_pair(self) -> None:
        if self.app.judge is None:
            self.error("load a model first (F2): a pair needs scores", "save pair")
            return
        if self.template_error:
            self.error(f"the template is invalid ({self.template_error}); fix it or reset it (ctrl+l)", "save pair")
            return
        if self.scored_version != self.version or self._timer is not None or self.scored_judge is None:
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
        self._save(scored, best[0], worst[0], spread)

    def _save(self, scored: list, best: int, worst: int, spread: float) -> None:
        """Store the pair, unless exactly this was saved already; a change updates the saved pair."""
        judge = self.scored_judge
        candidates = [ScoredCandidate(c.text, *c.origin(), c.judgement) for _, c in scored]
        positions = [i for i, _ in scored]
        what = (judge.id, self.instruction, self.category(), tuple(positions), best, worst,
                tuple((c.text, c.model, c.adapter, c.seed, c.judgement.score) for c in candidates))
        if self.saved is not None and self.saved[0] == what:
            self.set_status(f"already saved as pair #{self.saved[1]}; nothing written", "yellow")
            return
        try:
            pair_id, created = save_scored_pair(self.app.store, judge, self.instruction, self.category(), candidates,
                                                positions, positions.index(best), positions.index(worst))
        except IpoError as exc:
            self.error(str(exc), "save pair")
            return
        except Exception as exc:
            self.error(f"{type(exc).__name__}: {exc}", "save pair")
            return
        self.saved = (what, pair_id)
        done = "saved" if created else "updated"
        self.set_status(f"{done} pair #{pair_id} (accepted, margin {spread:+.2f}) in prompt set {LAB_SET!r}", "green")
        self.notify(f"pair #{pair_id} {done} as accepted", title="save pair")
