"""The code's own contract: the rooms' import layers (import-linter) and lint (ruff), run with the suite."""

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOLS = Path(sys.executable).parent


def test_the_layer_contract_is_the_rooms_rule():
    """shared imports no other room; client and server import only shared (not each other); simulations all."""
    (contract,) = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert contract["type"] == "layers"
    assert contract["layers"] == ["stamen.simulations", "stamen.client | stamen.server", "stamen.shared"]


def test_rooms_import_only_the_layers_below_them():
    command = [str(TOOLS / "lint-imports"), "--no-cache"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "1 kept, 0 broken" in result.stdout


def test_ruff_finds_nothing():
    command = [str(TOOLS / "ruff"), "check", "--no-cache", "."]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-4000:]


def test_every_test_the_docs_name_exists():
    """A claim in the docs names its test as ``test_module::test_name``; a renamed or moved test must not
    leave the claim pointing at nothing."""
    import re

    docs = [ROOT / "README.md", *(p for p in (ROOT / "docs").glob("*.md") if p.name != "mutation.md")]
    named = {pair for doc in docs for pair in re.findall(r"(test_[a-z0-9_]+)::(test_[a-z0-9_]+)", doc.read_text())}
    tests = {path.stem: path.read_text() for path in (ROOT / "tests").rglob("test_*.py")}
    assert len(named) > 20
    missing = sorted(f"{module}::{name}" for module, name in named if f"def {name}(" not in tests.get(module, ""))
    assert not missing, missing


def test_no_class_is_over_150_lines_and_no_function_over_60():
    """Code a newcomer can hold in their head: a longer class or function is split by concern."""
    import ast

    too_long = []
    for room in ("shared", "client", "server", "simulations", "benchmarks"):
        for path in sorted((ROOT / room).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                limit = 150 if isinstance(node, ast.ClassDef) else 60 if isinstance(
                    node, ast.FunctionDef | ast.AsyncFunctionDef) else None
                if limit and node.end_lineno - node.lineno + 1 > limit:
                    too_long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not too_long, too_long


def test_every_module_a_docstring_names_exists():
    """``:mod:`` references (``.sibling``, ``..parent``, ``stamen.room.module``) must follow a renamed or moved
    module, or the docs send a newcomer to a file that is not there."""
    import re

    rooms = ("shared", "client", "server", "simulations")
    missing = []
    for room in rooms:
        for path in sorted((ROOT / room).rglob("*.py")):
            package = path.relative_to(ROOT).parent.parts
            for name in re.findall(r":mod:`(?:[^<`]*<)?~?([\w.]+)>?`", path.read_text()):
                dots = len(name) - len(name.lstrip("."))
                parts = (list(package[:len(package) - dots + 1]) if dots else []) + name.lstrip(".").split(".")
                if parts[0] == "stamen":
                    parts = parts[1:]
                target = ROOT.joinpath(*parts)
                if not (target.with_suffix(".py").exists() or (target / "__init__.py").exists()):
                    missing.append(f"{path.relative_to(ROOT)}: {name}")
    assert len(missing) == 0, missing


def test_every_file_the_docs_name_exists():
    """A path in the docs (``client/device/worker.py``, ``simulations/forgetting.toml``) must follow a move."""
    import re

    docs = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *(ROOT / "docs").glob("*.md")]
    pattern = r"\b((?:shared|client|server|simulations|benchmarks|tests)/[\w/.-]+\.(?:py|toml|md|json|png))"
    named = {(doc, path) for doc in docs for path in re.findall(pattern, doc.read_text())}
    assert len(named) > 30
    missing = sorted(f"{doc.relative_to(ROOT)}: {path}" for doc, path in named
                     if not (ROOT / path).exists() and not (doc.parent / path).exists())
    assert not missing, missing
