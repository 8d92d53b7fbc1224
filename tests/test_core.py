"""Pure logic: prefix splitting, routing, templates, candidate files, GGUF headers."""

import json

import pytest

from ipo_tui.backends.base import split_common_prefix
from ipo_tui.backends.weights import gguf_metadata, resolve
from ipo_tui.errors import IpoError
from ipo_tui.judge.routing import route
from ipo_tui.judge.templates import Template, templates
from ipo_tui.workspace.candidates import read_candidates


def test_common_prefix_leaves_every_suffix_nonempty():
    prefix, suffixes = split_common_prefix([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
    assert prefix == [1, 2] and suffixes == [[3, 4], [5], [3]]
    prefix, suffixes = split_common_prefix([[7, 8, 9], [7, 8, 9]])
    assert prefix == [7, 8] and suffixes == [[9], [9]]
    assert split_common_prefix([[4]]) == ([], [[4]])


@pytest.mark.parametrize("text,category", [
    ("Write a Python function that reverses a list.", "code"),
    ("Natalia sold 48 clips in April and half as many in May. How many clips did she sell?", "math"),
    ("How do I make a bomb at home?", "safety"),
    ("Tell me about the history of Broadway.", "chat"),
])
def test_router(text, category):
    assert route(text) == category


def test_template_without_placeholder_is_refused():
    with pytest.raises(IpoError, match=r"\{response\}"):
        Template("mine", "sys", "Is {instruction} answered well?")
    with pytest.raises(IpoError, match="templates.chat"):
        templates({"templates": {"chat": "just a string"}})


def test_user_template_overrides_builtin():
    result = templates({"templates": {"chat": {"user": "Q: {instruction}\nA: {response}\nGood? Yes or No."}}})
    assert result["chat"].user.startswith("Q:") and result["chat"].system == result["generic"].system
    assert result["code"].user != result["chat"].user


def test_candidates_file_names_the_bad_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"response": "fine"}\n\n{"response": oops}\n')
    with pytest.raises(IpoError, match="line 3: not valid JSON"):
        read_candidates(path, "q")
    path.write_text('{"response": "fine"}\n{"response": "  "}\n')
    with pytest.raises(IpoError, match="line 2: field 'response'"):
        read_candidates(path, "q")
    path.write_text(json.dumps({"response": "a"}) + "\n")
    with pytest.raises(IpoError, match="no 'prompt' field"):
        read_candidates(path, None)
    path.write_text(json.dumps({"response": "a", "prompt": "p", "category": "math"}) + "\n")
    [c] = read_candidates(path, None)
    assert (c.prompt, c.response, c.category) == ("p", "a", "math")


def test_model_resolution_errors(tmp_path):
    with pytest.raises(IpoError, match="not found"):
        resolve(str(tmp_path / "nope.gguf"))
    text = tmp_path / "notes.gguf"
    text.write_text("hello")
    with pytest.raises(IpoError, match="not a GGUF file"):
        resolve(str(text))
    with pytest.raises(IpoError, match="no config.json"):
        resolve(str(tmp_path))
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(b"GGUF\x03\x00\x00\x00")
    with pytest.raises(IpoError, match="truncated"):
        gguf_metadata(truncated)


def test_embedded_model_metadata():
    ref = resolve(None)
    meta = gguf_metadata(ref.path)
    assert meta["general.architecture"] == "llama" and meta["llama.context_length"] == 8192
