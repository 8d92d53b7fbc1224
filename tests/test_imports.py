"""House rules on imports: a fast CLI start and a core that runs without Textual."""

import subprocess
import sys

CORE = ["ipo_tui.cli", "ipo_tui.judge", "ipo_tui.models", "ipo_tui.prompts", "ipo_tui.categories",
        "ipo_tui.candidates", "ipo_tui.config", "ipo_tui.backends", "ipo_tui.backends.hf",
        "ipo_tui.backends.llamacpp"]


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from ipo_tui.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0 and 'score' in result.output, result.output\n"
        "heavy = [m for m in ('torch', 'transformers', 'llama_cpp', 'trl', 'peft') if m in sys.modules]\n"
        "print(heavy)"
    )
    assert _run(code) == "[]"


def test_core_never_imports_textual():
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in CORE) + "print('textual' in sys.modules)"
    assert _run(code) == "False"
