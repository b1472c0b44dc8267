"""The shape the codebase promises (README's layout): one package, a command layer, no import cycles,
short functions, one registry of methods."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "bitfit"
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """bitfit modules that ``name`` imports anywhere in its file (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_the_import_graph_has_no_cycle():
    g = graph()
    state: dict[str, int] = {}

    def visit(node, stack):
        state[node] = 1
        for nxt in sorted(g[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join(stack + [node, nxt])
            if nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [])


# library modules that drive the training loop, as the command layer does (nothing in the loop imports them)
DRIVE_TRAINING = {"bitfit.bench"}  # it times the loop's own step


def test_only_the_command_layer_parses_flags_and_imports_the_training_loop():
    g = graph()
    library = {m for m in g if not m.startswith("bitfit.cli") and m != "bitfit.__main__"}
    for m in library:
        assert not any(i.startswith("bitfit.cli") for i in g[m]), f"{m} imports the command layer"
        if not m.startswith("bitfit.training") and m not in DRIVE_TRAINING:
            assert not any(i.startswith("bitfit.training") for i in g[m]), f"{m} imports the training loop"
        assert "argparse" not in modules()[m].read_text(), f"{m} parses flags (argparse belongs in bitfit/cli)"


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {lines} lines")
    assert not long, long


def test_one_registry_of_methods_feeds_the_cli_the_policies_and_the_report():
    from bitfit import policies  # noqa: F401 (importing it asserts that its selectors are METHODS' names)
    from bitfit.cli import make_parser
    from bitfit.cli import train as train_command
    from bitfit.methods import METHODS

    parser = train_command.build_parser(make_parser("run_glue.py", ""))
    choices = next(a.choices for a in parser._actions if a.dest == "fine_tune_type")
    assert list(choices) == list(METHODS)


def test_every_command_is_a_module_of_the_command_layer():
    import importlib

    from bitfit.cli import COMMANDS

    for name in COMMANDS:
        module = importlib.import_module(f"bitfit.cli.{name}")
        assert callable(module.build_parser) and callable(module.cli), name


def test_the_public_api_resolves_without_loading_torch_until_used():
    import subprocess
    import sys

    code = ("import sys, bitfit; assert 'torch' not in sys.modules; "
            "[getattr(bitfit, n) for n in bitfit.__all__]; print(len(bitfit.__all__))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) >= 15
