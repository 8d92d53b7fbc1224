"""House rules on imports, checked on every module of ipo_tui from its source (no hand-kept list):
no import cycles, Textual only in the app, no heavy library at import time on the CLI's path.

Imports are read with `ast`, at module level and inside functions alike; `from P import N` counts
as importing P.N when that is a module of ipo_tui.
"""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ipo_tui"
HEAVY = ("torch", "transformers", "trl", "peft", "llama_cpp", "datasets", "accelerate")


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(name: str) -> list[tuple[str, bool]]:
    """(imported module, at module level?) for every import statement of module `name`."""
    tree = ast.parse(MODULES[name].read_text())
    package = name if MODULES[name].name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node, deferred: bool):
        for child in ast.iter_child_nodes(node):
            inner = deferred or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                found.extend((alias.name, not deferred) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    found.append((target if target in MODULES else base, not deferred))
            visit(child, inner)

    visit(tree, False)
    return found


GRAPH = {name: _imports(name) for name in MODULES}


def _cycle() -> list[str] | None:
    edges = {m: sorted({t for t, _ in GRAPH[m] if t in MODULES and t != m}) for m in MODULES}
    state, stack = {}, []

    def walk(m):
        state[m] = "open"
        stack.append(m)
        for t in edges[m]:
            if state.get(t) == "open":
                return stack[stack.index(t):] + [t]
            if t not in state and (found := walk(t)):
                return found
        state[m] = "done"
        stack.pop()
        return None

    for m in sorted(MODULES):
        if m not in state and (found := walk(m)):
            return found
    return None


def test_no_import_cycle():
    assert len(MODULES) > 40  # every module was found
    assert _cycle() is None, " -> ".join(_cycle())


def test_textual_only_in_the_app():
    bad = []
    for m, imports in GRAPH.items():
        if m.startswith("ipo_tui.tui"):
            continue
        for target, module_level in imports:
            textual = target.split(".")[0] in ("textual", "textual_plotext")
            app = target.startswith("ipo_tui.tui")
            # the CLI opens the app (`ipo tui`) from inside a command: that is its one way in
            if textual or (app and (module_level or not m.startswith("ipo_tui.cli"))):
                bad.append(f"{m} imports {target}")
    assert not bad, bad


def test_no_heavy_import_on_the_command_lines_path():
    reached, todo = set(), ["ipo_tui.cli.app", "ipo_tui.supervisor"]
    while todo:
        m = todo.pop()
        if m in reached:
            continue
        reached.add(m)
        todo += [t for t, module_level in GRAPH[m] if module_level and t in MODULES]
    heavy = [f"{m} imports {t}" for m in reached for t, module_level in GRAPH[m]
             if module_level and t.split(".")[0] in HEAVY]
    assert "ipo_tui.cli.scoring" in reached and not heavy, heavy


def _run(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_help_imports_no_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from ipo_tui.cli.app import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0 and 'score' in result.output, result.output\n"
        f"print([m for m in {HEAVY!r} if m in sys.modules])"
    )
    assert _run(code) == "[]"


def test_every_core_module_imports_without_textual():
    core = sorted(m for m in MODULES if not m.startswith("ipo_tui.tui") and not m.endswith("__main__"))
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in core) + \
        "print('textual' in sys.modules)"
    assert _run(code) == "False"
