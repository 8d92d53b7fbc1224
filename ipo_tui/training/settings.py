"""Training settings: the packaged defaults, a user's YAML on top, checked once before a run starts."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ipo_tui.errors import IpoError

REFERENCES = ("policy", "base")
DTYPES = ("auto", "fp32", "bf16", "fp16")


def defaults_text() -> str:
    return resources.files("ipo_tui.training").joinpath("defaults.yaml").read_text()


def defaults() -> dict[str, Any]:
    return yaml.safe_load(defaults_text())


def load(path: Path | None = None, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The defaults, then the keys of `path`, then `overrides`; unknown keys and wrong types are errors."""
    merged = defaults()
    layers = []
    if path is not None:
        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise IpoError(f"{path}: no such training config; `ipo train defaults > {path}` writes one") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise IpoError(f"{path}{f' line {mark.line + 1}' if mark else ''}: not valid YAML") from None
        if not isinstance(data, dict):
            raise IpoError(f"{path}: expected `key: value` lines")
        layers.append((str(path), data))
    layers.append(("overrides", overrides or {}))
    for source, layer in layers:
        for key, value in layer.items():
            if key not in merged:
                raise IpoError(f"{source}: unknown training setting {key!r} (known: {', '.join(merged)})")
            merged[key] = _coerce(source, key, value, merged[key])
    _check(merged)
    return merged


def _coerce(source: str, key: str, value, default):
    kind = type(default)
    if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML reads 5e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise IpoError(f"{source}: {key} should be {kind.__name__} like {default!r}, not {value!r}")


def _check(s: dict[str, Any]) -> None:
    positive = ("lora_r", "lora_alpha", "epochs", "batch_size", "grad_accum", "max_length", "save_steps", "logging_steps")
    for key in positive:
        if s[key] <= 0:
            raise IpoError(f"{key} must be positive, not {s[key]}")
    if not 0 <= s["lora_dropout"] < 1:
        raise IpoError(f"lora_dropout must be in [0, 1), not {s['lora_dropout']}")
    if not 0 <= s["warmup_ratio"] < 1:  # transformers reads a value below 1 as a fraction of the steps
        raise IpoError(f"warmup_ratio must be in [0, 1), not {s['warmup_ratio']}")
    if s["learning_rate"] <= 0 or s["beta"] <= 0:
        raise IpoError("learning_rate and beta must be positive")
    if s["dtype"] not in DTYPES:
        raise IpoError(f"dtype must be one of {', '.join(DTYPES)}, not {s['dtype']!r}")
    if s["reference"] not in REFERENCES:
        raise IpoError(f"reference must be one of {', '.join(REFERENCES)}, not {s['reference']!r}")
