import os
from pathlib import Path

import pytest

SHARED_DATA = Path(os.environ.get("IPO_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture(autouse=True)
def user_dirs(tmp_path, monkeypatch):
    """Each test gets its own config and data dirs; the model cache stays shared (conversions are slow)."""
    monkeypatch.setenv("IPO_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("IPO_DATA_DIR", str(tmp_path / "data"))
    return tmp_path


def shared_file(*parts: str) -> Path:
    path = SHARED_DATA.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} is absent: this test needs ../shared/data beside the checkout (or IPO_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def hf_backend():
    from ipo_tui import backends
    from ipo_tui.backends import weights

    backend = backends.load("hf", weights.resolve(None), device="cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def llama_backend():
    from ipo_tui import backends
    from ipo_tui.backends import weights

    backend = backends.load("llamacpp", weights.resolve(None))
    yield backend
    backend.close()


# --- a deprecation raised by ipo's own call fails the test ----------------------------------------
# A library warns from inside itself, and `stacklevel` rarely points at the caller that matters (a
# model's forward warns from torch's Module.__call__). So the stack is walked outward from the
# warning: past the warning's own library and the call plumbing it goes through; if the first frame
# left is ipo's, ipo called a deprecated API and the warning becomes an error. A deprecation the
# library raises from its own internals (TRL calling transformers) stays a warning.
_PLUMBING = ("torch.nn.modules.module", "torch.utils._contextlib", "functools", "contextlib")


def deprecated_call_site(frame, category) -> str | None:
    """'module:line' of ipo's frame that called the API raising a deprecation warning, else None."""
    if not (isinstance(category, type) and issubclass(category, (DeprecationWarning, FutureWarning))):
        return None
    library = frame.f_globals.get("__name__", "").split(".")[0]
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.split(".")[0] != library and not name.startswith(_PLUMBING):
            return f"{name}:{frame.f_lineno}" if name.split(".")[0] == "ipo_tui" else None
        frame = frame.f_back
    return None


def _strict_warn(message, category=None, stacklevel=1, source=None):
    import sys

    kind = category or (type(message) if isinstance(message, Warning) else UserWarning)
    site = deprecated_call_site(sys._getframe(1), kind)
    if site:
        raise kind(f"ipo calls a deprecated API at {site}: {message}")
    return _warn(message, category, stacklevel + 1, source)


import warnings  # noqa: E402

_warn = warnings.warn
warnings.warn = _strict_warn
