"""Bad files get one clear line and lose nothing (issue #28): prompt files in any encoding or shape,
config.yaml keys of the wrong shape, a damaged models.json, NaN in a record, duplicate prompts."""

import json
import os
import subprocess
import sys

import pytest

from ipo_tui.errors import IpoError
from ipo_tui.workspace import records
from ipo_tui.workspace.records import load_prompts, read_prompts


def ipo(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The command as a user runs it, in the test's own config and data dirs (set by `user_dirs`)."""
    env = dict(os.environ, COLUMNS="120")
    return subprocess.run([sys.executable, "-m", "ipo_tui", *args], capture_output=True, text=True, env=env,
                          timeout=600, cwd=cwd)


def one_error_line(result) -> str:
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# --- prompt files: encodings, formats, folders -----------------------------------------------------

LATIN1 = {  # the third line (the JSON file's first) holds "café" in latin-1
    "p.jsonl": b'{"prompt": "a"}\n{"prompt": "b"}\n{"prompt": "caf\xe9"}\n',
    "p.csv": b"prompt\nhello\ncaf\xe9\n",
    "p.json": b'[{"prompt": "caf\xe9"}]',
}


@pytest.mark.parametrize("name,line", [("p.jsonl", 3), ("p.csv", 3), ("p.json", 1)])
def test_a_file_not_in_utf8_names_its_first_bad_line(tmp_path, name, line):
    path = tmp_path / name
    path.write_bytes(LATIN1[name])
    with pytest.raises(IpoError, match=rf"{name} line {line}: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"):
        load_prompts(str(path))


def test_a_text_file_named_parquet_is_not_a_parquet_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fake = tmp_path / "p.parquet"
    fake.write_text('{"prompt": "a"}\n' * 20)
    with pytest.raises(IpoError, match=r"p.parquet: not a Parquet file \(Parquet magic bytes not found in footer\)"):
        load_prompts(str(fake))
    good = tmp_path / "good.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "x" * 50} for _ in range(100)]), good)
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(good.read_bytes()[:200])
    with pytest.raises(IpoError, match=r"truncated.parquet: not a Parquet file \("):
        load_prompts(str(truncated))
    assert len(load_prompts(str(good))) == 100


def test_a_folder_or_an_unreadable_file_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "p.jsonl").mkdir()
    with pytest.raises(IpoError, match=r"p.jsonl is a folder, not a .jsonl file"):
        load_prompts(str(tmp_path / "p.jsonl"))
    locked = tmp_path / "locked.csv"
    locked.write_text("prompt\nhi\n")

    def refuse(*args, **kwargs):  # what chmod 000 does, also when the tests run as root
        raise PermissionError(13, "Permission denied", str(locked))

    monkeypatch.setattr(records, "open", refuse, raising=False)
    with pytest.raises(IpoError, match=r"locked.csv: cannot read it \(Permission denied\)"):
        load_prompts(str(locked))


def test_a_byte_order_mark_is_read_past_and_a_short_header_is_refused(tmp_path):
    bom = tmp_path / "excel.csv"
    bom.write_bytes(b"\xef\xbb\xbfprompt,category\nHello,chat\n")
    assert load_prompts(str(bom)) == [{"text": "Hello", "category": "chat", "meta": {}}]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"prompt": "Hi"}\n')
    assert load_prompts(str(jsonl))[0]["text"] == "Hi"
    unquoted = tmp_path / "comma.csv"
    unquoted.write_text("prompt,category\nSay hi.,chat\nHello, world,chat\n")
    with pytest.raises(IpoError, match=r"comma.csv line 3: more fields than the header names; quote a field"):
        load_prompts(str(unquoted))


@pytest.mark.parametrize("name,problem", [("p.jsonl", " line 3: not UTF-8 text"),
                                          ("p.parquet", ": not a Parquet file (")])
def test_the_command_prints_one_line_and_stores_nothing(tmp_path, name, problem):
    from ipo_tui.workspace.store import Store

    path = tmp_path / name
    path.write_bytes(LATIN1["p.jsonl"])
    assert f"{path}{problem}" in one_error_line(ipo("prompts", "import", str(path), "--name", "s"))
    assert Store().prompt_sets() == []


# --- what a record holds ------------------------------------------------------------------------------

@pytest.mark.parametrize("record,message", [
    ('{"prompt": "c", "meta": {"x": NaN}}', r"line 2: NaN in field 'meta.x' is not valid JSON; write null"),
    ('{"prompt": "c", "score": Infinity}', r"line 2: Infinity in field 'score' is not valid JSON"),
    ('{"prompt": "c", "runs": [1, {"t": -Infinity}]}', r"line 2: -Infinity in field 'runs\[1\].t'"),
])
def test_nan_or_infinity_in_a_record_is_refused(tmp_path, record, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a", "meta": {"x": 1.5}}\n' + record + "\n")
    with pytest.raises(IpoError, match=message):
        read_prompts(str(path))


def test_duplicate_texts_and_ids_are_skipped_and_reported(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"id": 1, "prompt": "a"}, {"id": 2, "prompt": "b"}, {"id": 3, "prompt": " a\n"},  # the same text
            {"id": 2, "prompt": "c"}, {"id": 5, "prompt": "d"}, {"prompt": "e"}, {"prompt": "e"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    loaded = read_prompts(str(path))
    assert [p["text"] for p in loaded.prompts] == ["a", "b", "d", "e"]
    assert [(d.where, d.first, d.same) for d in loaded.skipped] == [
        ("line 3", "line 1", "text"), ("line 4", "line 2", "id"), ("line 7", "line 6", "text")]
    assert loaded.skipped_summary() == ("skipped 3 duplicate prompts (lines 3, 4, 7): "
                                        "the same text or id as an earlier one")
    kept = read_prompts(str(path), keep_duplicates=True)
    assert len(kept.prompts) == 7 and kept.skipped == [] and kept.skipped_summary() is None
    assert load_prompts(str(path)) == kept.prompts  # the plain list keeps every record, as it always did
    assert len(read_prompts(str(path), id_field=None).prompts) == 5  # ids aside, only the texts repeat


def test_empty_csv_ids_are_no_ids(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text("id,prompt\n,a\n,b\n7,c\n7,d\n")
    loaded = read_prompts(str(path))
    assert [p["text"] for p in loaded.prompts] == ["a", "b", "c"]
    assert loaded.skipped_summary().startswith("skipped 1 duplicate prompt (line 5)")


# --- config.yaml -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,key,problem", [
    ("templates: [1, 2]", "templates", "expected a mapping of template name to {user, system, polarity}, got a list"),
    ("templates: {chat: just a string}", "templates.chat", "give a mapping with a 'user' text"),
    ("templates: {chat: {system: x}}", "templates.chat", "give a mapping with a 'user' text"),
    ("templates: {chat: {user: 5}}", "templates.chat.user", "expected text, got a number"),
    ("templates: {chat: {user: 'Good? {response}'}}", "templates.chat", "lacks the placeholder {instruction}"),
    ("templates: {chat: {user: '{instruction} {response}', polarity: [x]}}", "templates.chat.polarity",
     "expected text, got a list"),
    ("judge: {router: 5}", "judge.router", "choose keyword or model"),
    ("judge: {calibrate: 'false'}", "judge.calibrate", "give true or false"),
    ("judge: {min_mass: .nan}", "judge.min_mass", "is not a number from 0 to 1"),
    ("judge: {categories: {math: {templates: 5}}}", "judge.categories.math.templates", "give a template name"),
    ("judge: {categories: {math: {templates: {a: 1}}}}", "judge.categories.math.templates", "give a template name"),
    ("judge: {categories: {math: {templates: [math], pmi: .inf}}}", "judge.categories.math", "must be finite"),
    ("judge: {categories: {math: {templates: [math, math-error], weights: '12'}}}", "judge.categories.math",
     "must be numbers"),
    ("judge: {models: {m: {categories: {code: {templates: [code], pmi: x}}}}}", "judge.models.m.categories.code",
     "must be numbers"),
    ("judge: {models: {m: {mode: sideways}}}", "judge.models.m.mode", "choose pointwise or pairwise"),
])
def test_a_config_key_of_the_wrong_shape_names_the_file_and_the_key(user_dirs, text, key, problem):
    from ipo_tui.config import config_path, load_config

    config_path().parent.mkdir(parents=True)
    config_path().write_text(text + "\n")
    with pytest.raises(IpoError) as info:
        load_config()
    assert str(info.value).startswith(f"{config_path()}: {key}: ") and problem in str(info.value)
    assert "\n" not in str(info.value)


def test_a_good_config_still_loads(user_dirs):
    from ipo_tui.config import config_path, load_config
    from ipo_tui.judge.settings import CategorySetting, load_settings
    from ipo_tui.judge.templates import templates

    config_path().parent.mkdir(parents=True)
    config_path().write_text(
        "judge:\n  router: model\n  calibrate:\n  min_mass: '0.05'\n"
        "  categories: {chat: {templates: [chat, chat-flaw], pmi: 0.5}, safety: safety-harm}\n"
        "  models: {m: {categories: {code: {templates: [code, code-bug], weights: [0.5, -0.5]}}}}\n"
        "templates: {math: {user: 'P: {instruction} A: {response} Right?'}}\n")
    config = load_config()
    settings = load_settings(config, "m")
    assert settings.router == "model" and settings.calibrate is False and settings.min_mass == 0.05
    assert settings.for_category("chat") == CategorySetting(("chat", "chat-flaw"), 0.5)
    assert settings.for_category("code").weights == (0.5, -0.5)
    assert templates(config)["math"].user.startswith("P: ")


def test_a_config_not_in_utf8_is_one_line(user_dirs):
    from ipo_tui.config import config_path, load_config

    config_path().parent.mkdir(parents=True)
    config_path().write_bytes(b"templates:\n  chat:\n    user: 'caf\xe9'\n")
    with pytest.raises(IpoError, match="config.yaml: not UTF-8 text; save it as UTF-8"):
        load_config()


def test_the_command_names_the_bad_config_key(user_dirs):
    from ipo_tui.config import config_path

    config_path().parent.mkdir(parents=True)
    config_path().write_text("templates: [1, 2]\n")
    line = one_error_line(ipo("score", "-b", "llamacpp", "-p", "What is 2+2?", "-r", "4"))
    assert f"{config_path()}: templates: expected a mapping" in line and "README 'Config'" in line


# --- models.json --------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,problem", [
    ('{"registered": {"mine": "/models/a.gguf", "ot', "not valid JSON (Unterminated string"),
    ("[1, 2]", "expected a JSON object with 'registered' and 'recent', got a list"),
    ('{"registered": {"mine": 5}}', "'registered' must map each name to a path"),
    ('{"registered": {}, "recent": "a.gguf"}', "'recent' must be a list of paths"),
])
def test_a_damaged_registry_warns_and_is_never_written_over(user_dirs, capsys, text, problem):
    from ipo_tui.backends import weights

    path = user_dirs / "data" / "models.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    assert weights.registered() == {} and [r.name for r in weights.known()] == [weights.EMBEDDED_NAME]
    warning = capsys.readouterr().err  # once, however often the registry was read
    assert warning.startswith(f"warning: {path}: {problem}") and warning.count("\n") == 1
    assert warning.endswith("; the models registered in it are ignored until it is fixed\n")
    with pytest.raises(IpoError, match="fix it .* then run this again") as info:
        weights.register("new", str(weights.embedded_gguf()))
    assert str(info.value).startswith(f"{path}: {problem}")
    with pytest.raises(IpoError, match="fix it"):
        weights.unregister("mine")
    weights.remember(weights.ModelRef("gguf", "/models/b.gguf", "b.gguf"))
    assert path.read_text() == text and capsys.readouterr().err == ""  # warned once, wrote nothing


def test_the_commands_on_a_damaged_registry(user_dirs):
    from ipo_tui.backends import weights

    path = user_dirs / "data" / "models.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"registered": {"mine": "/models/a.gguf"')
    listed = ipo("models")
    assert listed.returncode == 0 and "embedded" in listed.stdout
    assert listed.stderr.strip() == (f"warning: {path}: not valid JSON (Expecting ',' delimiter: line 1 column 41); "
                                     "the models registered in it are ignored until it is fixed")
    line = one_error_line(ipo("models", "add", str(weights.embedded_gguf()), "--name", "other"))
    assert f"{path}: not valid JSON" in line and "then run this again" in line
    assert path.read_text() == '{"registered": {"mine": "/models/a.gguf"'
