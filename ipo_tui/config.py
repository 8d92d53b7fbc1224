"""User paths and the YAML config file (template overrides, registered models)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from platformdirs import user_cache_dir, user_config_dir, user_data_dir

from ipo_tui.errors import IpoError

APP = "ipo-tui"


def config_dir() -> Path:
    return Path(os.environ.get("IPO_CONFIG_DIR") or user_config_dir(APP))


def data_dir() -> Path:
    return Path(os.environ.get("IPO_DATA_DIR") or user_data_dir(APP))


def cache_dir() -> Path:
    return Path(os.environ.get("IPO_CACHE_DIR") or user_cache_dir(APP))


def config_path() -> Path:
    return config_dir() / "config.yaml"


def load_config() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise IpoError(f"{path}{where}: not valid YAML; fix or delete the file") from None
    except UnicodeDecodeError:
        raise IpoError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise IpoError(f"{path}: cannot read it ({exc.strerror or exc}); check the file and its permissions") from None
    if not isinstance(data, dict):
        raise IpoError(f"{path}: expected a mapping at the top level; fix or delete the file")
    _check_judge_keys(path, data)
    return data


def _check_judge_keys(path: Path, data: dict[str, Any]) -> None:
    """Read the keys the judge uses (templates, judge, every model's saved setting) as the judge will,
    here where the file is known: a wrong shape is refused at once, naming the file and the key."""
    from ipo_tui.judge.settings import load_settings
    from ipo_tui.judge.templates import templates

    try:
        templates(data)
        load_settings(data)  # refuses a `judge` or `judge.models` that is not a mapping
        for model in (data.get("judge") or {}).get("models") or {}:
            load_settings(data, model)
    except IpoError as exc:
        # their messages start "config KEY: ..." for a dict given in code; here the file stands for "config"
        raise IpoError(f"{path}: {str(exc).removeprefix('config ')}") from None


def save_config(data: dict[str, Any]) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    tmp.replace(path)  # atomic: a crash never leaves half a config
