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
    from ipo_tui import backends, models

    backend = backends.load("hf", models.resolve(None), device="cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def llama_backend():
    from ipo_tui import backends, models

    backend = backends.load("llamacpp", models.resolve(None))
    yield backend
    backend.close()
