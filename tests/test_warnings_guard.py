"""The test run fails on a deprecation that ipo's own call raises, not on one a library raises inside itself."""

import warnings

import pytest


def _module(name: str, source: str) -> dict:
    namespace = {"__name__": name, "warnings": warnings}
    exec(compile(source, f"<{name}>", "exec"), namespace)
    return namespace


LIBRARY = _module("transformers.fake", "def old_api():\n    warnings.warn('old_api is deprecated', FutureWarning, stacklevel=2)\n")


def test_ipo_calling_a_deprecated_api_fails():
    ipo = _module("ipo_tui.fake", "def use(api):\n    api()\n")
    with pytest.raises(FutureWarning, match="ipo calls a deprecated API at ipo_tui.fake:2"):
        ipo["use"](LIBRARY["old_api"])


def test_a_library_calling_a_deprecated_api_only_warns():
    other = _module("trl.fake", "def use(api):\n    api()\n")
    ipo = _module("ipo_tui.fake", "def use(other, api):\n    other(api)\n")
    with pytest.warns(FutureWarning, match="old_api is deprecated"):
        ipo["use"](other["use"], LIBRARY["old_api"])
