"""The judge's settings: per category, which templates, and how their log-odds are combined.

Config (`judge:` in config.yaml; `judge.models.NAME` holds what `ipo prompts search` chose for one
model and overrides the rest for it):

    judge:
      router: keyword          # or model: the model's own next-token choice among the categories
      mode: pointwise          # or pairwise, for pair-only uses (eval, pairs build)
      calibrate: false         # subtract a content-free reply's score: only thresholds change
      min_mass: 0.01
      categories:
        chat: {templates: [chat, chat-flaw], pmi: 1.0, length_slope: 0.4, length_centre: 6.2, reply_pmi: 0.05}
        safety: {templates: [safety, safety-harm], weights: [-0.7, -2.3], pmi_weights: [0.2, -0.3]}

A category's margin is sum_t a_t * m_t - sum_t b_t * m0_t - length_slope * (log(1 + characters) -
length_centre) + reply_pmi * R + reply_pmi_per_token * R / tokens, where m_t is z_yes - z_no for the
response under template t and m0_t the same response under a content-free instruction (PMI-style).
R is the reply's own PMI with the instruction: log p(reply | instruction) - log p(reply | a
content-free one), over its tokens, as the model would write it (Holtzman et al. 2021's
domain-conditional PMI): how much the instruction makes this reply likelier, which a polished
reply to another question lacks. Written by hand, a setting averages: a_t = sign_t / k and
b_t = pmi * a_t over its k templates. Fitted by `ipo prompts search` (a logistic regression on
labelled pairs), it gives the coefficients themselves: `weights` (a) and `pmi_weights` (b), one per
template, and the reply PMI's two weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace

from ipo_tui.errors import IpoError
from ipo_tui.judge.templates import CATEGORIES

ROUTERS = ("keyword", "model")
MODES = ("pointwise", "pairwise")
DEFAULT_MIN_MASS = 0.01  # the embedded 135M model gives 0.06-0.2 on ordinary prompts
_SCALARS = ("pmi", "length_slope", "length_centre", "reply_pmi", "reply_pmi_per_token")


@dataclass(frozen=True)
class CategorySetting:
    templates: tuple[str, ...]
    pmi: float = 0.0
    length_slope: float = 0.0
    length_centre: float = 0.0
    weights: tuple[float, ...] = ()  # fitted: one per template, on its margin (instead of the mean)
    pmi_weights: tuple[float, ...] = ()  # fitted: one per template, on its content-free margin
    reply_pmi: float = 0.0  # on the reply's PMI with the instruction, in nats
    reply_pmi_per_token: float = 0.0  # on the same per reply token

    @property
    def fitted(self) -> bool:
        return bool(self.weights)

    @property
    def single(self) -> bool:
        """One template asked alone, nothing fitted or added: the score is that template's own log-odds."""
        return len(self.templates) == 1 and not (self.fitted or self.uses_baselines or self.length_slope
                                                 or self.uses_reply_pmi)

    @property
    def uses_baselines(self) -> bool:
        """Whether a score needs each response's margin under the content-free instruction."""
        return bool(self.pmi or any(self.pmi_weights))

    @property
    def uses_reply_pmi(self) -> bool:
        """Whether a score needs each reply's PMI with the instruction (two passes over the reply)."""
        return bool(self.reply_pmi or self.reply_pmi_per_token)

    def coefficients(self, signs: list[int]) -> tuple[list[float], list[float]]:
        """(a, b): the weight of each template's margin and of its content-free margin."""
        if self.fitted:
            return list(self.weights), list(self.pmi_weights) or [0.0] * len(self.weights)
        a = [sign / len(signs) for sign in signs]
        return a, [self.pmi * w for w in a]

    def as_config(self) -> dict:
        """The setting as the config writes it (and as judge ids digest it: the fitted weights only
        when there are some, so a hand-written setting keeps the id it always had)."""
        out: dict = {"templates": list(self.templates), "pmi": self.pmi, "length_slope": self.length_slope,
                     "length_centre": self.length_centre}
        for key in ("weights", "pmi_weights"):
            if getattr(self, key):
                out[key] = list(getattr(self, key))
        for key in ("reply_pmi", "reply_pmi_per_token"):
            if getattr(self, key):
                out[key] = getattr(self, key)
        return out

    def describe(self) -> str:
        parts = ["+".join(self.templates)]
        if self.fitted:
            parts.append("fitted weights" + (" with content-free margins" if self.uses_baselines else ""))
        if self.pmi:
            parts.append(f"pmi {self.pmi:g}")
        if self.length_slope:
            parts.append(f"length {self.length_slope:+.2f}")
        if self.uses_reply_pmi:
            parts.append(f"reply PMI {self.reply_pmi:+.3g}, per token {self.reply_pmi_per_token:+.3g}")
        return ", ".join(parts)


@dataclass(frozen=True)
class JudgeSettings:
    categories: dict[str, CategorySetting] = field(default_factory=dict)
    router: str = "keyword"
    mode: str = "pointwise"
    calibrate: bool = False
    min_mass: float = DEFAULT_MIN_MASS

    def for_category(self, category: str) -> CategorySetting:
        """The category's setting; a category not configured asks its own template alone."""
        return self.categories.get(category) or CategorySetting((category,))

    def as_config(self) -> dict:
        return {"router": self.router, "mode": self.mode, "calibrate": self.calibrate, "min_mass": self.min_mass,
                "categories": {k: v.as_config() for k, v in sorted(self.categories.items())}}

    def digest(self, templates: dict) -> str:
        """A short id of everything that decides a score, template texts included: judgements made
        under different settings are stored apart."""
        used = sorted({name for c in self.categories.values() for name in c.templates} | set(CATEGORIES))
        decisive = {k: v for k, v in self.as_config().items() if k != "min_mass"}  # it only flags, never scores
        text = json.dumps([decisive, [[templates[n].system, templates[n].user, templates[n].polarity]
                                      for n in used if n in templates]], sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:10]


def category_setting(name: str, spec, where: str | None = None) -> CategorySetting:
    """A category's setting from its config entry (`where`: its key path, in errors)."""
    where = where or f"config judge.categories.{name}"
    if isinstance(spec, str):  # a template name alone
        spec = {"templates": [spec]}
    if not isinstance(spec, dict) or not spec.get("templates"):
        raise IpoError(f"{where}: give a mapping with a 'templates' list")
    names = [spec["templates"]] if isinstance(spec["templates"], str) else spec["templates"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise IpoError(f"{where}.templates: give a template name or a list of template names")
    if len(set(names)) < len(names):  # each template is one term of the score, by its name
        raise IpoError(f"{where}.templates: {names} names a template twice; give each once")
    setting = CategorySetting(tuple(names), **_numbers(where, spec))
    for key in ("weights", "pmi_weights"):
        given = getattr(setting, key)
        if given and len(given) != len(names):
            raise IpoError(f"{where}: {len(given)} {key} for {len(names)} templates; give one per template")
    if setting.pmi_weights and not setting.weights:
        raise IpoError(f"{where}: pmi_weights need weights; give both, or pmi alone")
    if setting.fitted and setting.pmi:
        raise IpoError(f"{where}: pmi and weights together; with weights give pmi_weights instead")
    return setting


def _numbers(where: str, spec: dict) -> dict:
    """The numbers of a category's config entry, the weights as tuples; finite, since one NaN
    makes every score of the category NaN."""
    try:
        numbers: dict = {key: float(spec.get(key, 0.0)) for key in _SCALARS}
        for key in ("weights", "pmi_weights"):
            given = spec.get(key) or []
            if not isinstance(given, list):
                raise TypeError(key)  # a text would be read character by character
            numbers[key] = tuple(float(w) for w in given)
    except (TypeError, ValueError):
        raise IpoError(f"{where}: pmi, length_slope, length_centre, weights, pmi_weights, "
                       "reply_pmi and reply_pmi_per_token must be numbers (the weights a list of them)") from None
    flat = [x for value in numbers.values() for x in (value if isinstance(value, tuple) else [value])]
    if not all(map(math.isfinite, flat)):
        raise IpoError(f"{where}: its numbers must be finite; remove the .nan or .inf")
    return numbers


def load_settings(config: dict | None, model: str | None = None) -> JudgeSettings:
    """The settings of `config`, with what was saved for `model` (judge.models.MODEL) on top."""
    cfg = (config or {}).get("judge") or {}
    if not isinstance(cfg, dict):
        raise IpoError("config judge: expected a mapping (router, mode, calibrate, min_mass, categories, models)")
    layers = [(cfg, "config judge")]
    models = cfg.get("models") or {}
    if not isinstance(models, dict):
        raise IpoError("config judge.models: expected a mapping of model name to its saved setting")
    saved = models.get(model) if model else None
    if saved:
        if not isinstance(saved, dict):
            raise IpoError(f"config judge.models.{model}: expected a mapping with 'categories'")
        layers.append((saved, f"config judge.models.{model}"))
    categories: dict[str, CategorySetting] = {}
    merged: dict = {}
    for layer, where in layers:
        categories.update(_categories(layer, where))
        merged.update(_flags(layer, where))
    return check(JudgeSettings(categories, **merged))


def _categories(layer: dict, where: str) -> dict[str, CategorySetting]:
    """The category settings of one config layer (`where`: its key path)."""
    # category_templates: the one-template-per-category form earlier versions saved
    for key in ("category_templates", "categories"):
        if not isinstance(layer.get(key) or {}, dict):
            raise IpoError(f"{where}.{key}: expected a mapping of category to setting")
    return {name: category_setting(name, spec, f"{where}.{key}.{name}")
            for key in ("category_templates", "categories") for name, spec in (layer.get(key) or {}).items()}


def _flags(layer: dict, where: str) -> dict:
    """The router, mode, calibrate and min_mass one config layer sets (an empty key sets nothing), checked."""
    given = {key: layer[key] for key in ("router", "mode", "calibrate", "min_mass") if layer.get(key) is not None}
    for key, choices in (("router", ROUTERS), ("mode", MODES)):
        if key in given and given[key] not in choices:
            raise IpoError(f"{where}.{key}: {given[key]!r}: choose {' or '.join(choices)}")
    if not isinstance(given.get("calibrate", False), bool):  # bool("false") would be True
        raise IpoError(f"{where}.calibrate: {given['calibrate']!r}: give true or false")
    if "min_mass" in given:
        try:
            min_mass = float(given["min_mass"])
        except (TypeError, ValueError):
            min_mass = math.nan  # refused below with NaN itself, under which no mass would ever warn
        if not 0 <= min_mass <= 1:
            raise IpoError(f"{where}.min_mass: {given['min_mass']!r} is not a number from 0 to 1")
        given["min_mass"] = min_mass
    return given


def override(settings: JudgeSettings, mode: str | None = None, router: str | None = None,
             calibrate: bool | None = None, plain: bool = False) -> JudgeSettings:
    """The settings with a command's --judge-* flags applied; `plain` is the paper's recipe (each
    category's own template alone, nothing saved for the model)."""
    if plain:
        settings = JudgeSettings(min_mass=settings.min_mass)
    changes = {k: v for k, v in (("mode", mode), ("router", router), ("calibrate", calibrate)) if v is not None}
    return check(replace(settings, **changes))


def check(settings: JudgeSettings) -> JudgeSettings:
    if settings.router not in ROUTERS:
        raise IpoError(f"judge router {settings.router!r}: choose keyword or model")
    if settings.mode not in MODES:
        raise IpoError(f"judge mode {settings.mode!r}: choose pointwise or pairwise")
    return settings


def save_for_model(config: dict, model: str, chosen: dict[str, CategorySetting]) -> dict:
    """`config` with `chosen` kept under judge.models.MODEL (other categories saved there stay)."""
    entry = config.setdefault("judge", {}).setdefault("models", {}).setdefault(model, {})
    entry.setdefault("categories", {}).update({k: v.as_config() for k, v in sorted(chosen.items())})
    return config
