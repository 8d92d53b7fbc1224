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
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise IpoError(f"{path}{where}: not valid YAML; fix or delete the file") from None
    if not isinstance(data, dict):
        raise IpoError(f"{path}: expected a mapping at the top level; fix or delete the file")
    return data


def save_config(data: dict[str, Any]) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    tmp.replace(path)  # atomic: a crash never leaves half a config
