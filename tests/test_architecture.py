"""The shape of the code, checked: the layering models <- tasks <- flows <- forms (function-level imports
included), the seam inside tasks/ (adapters never reach for the routine's steps), no function above
cyclomatic complexity 20, and the routine's definition written once (models/routine.py)."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("models", "tasks", "flows", "forms")  # each may import only from itself and those before it
MAX_COMPLEXITY = 20


def _python_files(*packages: str) -> Iterator[Path]:
    for package in packages:
        yield from sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """Every module an import in the file names, wherever the import stands (top level or in a function)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # `from tasks import steps` names a module too
                yield node.lineno, f"{node.module}.{alias.name}"


def _layer(module: str) -> int | None:
    top = module.split(".", 1)[0]
    return LAYERS.index(top) if top in LAYERS else None


def test_no_import_goes_up_the_layers() -> None:
    upward = []
    for layer, package in enumerate(LAYERS):
        for path in _python_files(package):
            for line, module in _imports(path):
                target = _layer(module)
                if target is not None and target > layer:
                    upward.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not upward, "\n".join(upward)


def test_adapters_do_not_reach_for_the_routine_s_steps() -> None:
    found = [f"{path.relative_to(ROOT)}:{line} imports {module}"
             for path in _python_files("tasks/adapters") for line, module in _imports(path)
             if module.startswith("tasks.steps")]
    assert not found, "\n".join(found)


def test_no_function_is_more_complex_than_twenty() -> None:
    from radon.complexity import cc_visit
    too_complex = []
    for path in _python_files(*LAYERS):
        for block in cc_visit(path.read_text()):
            if block.complexity > MAX_COMPLEXITY:
                too_complex.append(f"{path.relative_to(ROOT)}:{block.lineno} {block.name} ({block.complexity})")
    assert not too_complex, "\n".join(too_complex)


# Knowledge that belongs to models/routine.py alone: a copy elsewhere is a rule that can drift.
ROUTINE_ONLY = {
    "the stages' deciding roles": re.compile(r"\(\s*\"head_of_department\"\s*,\s*\"bakjour\"\s*\)|"
                                             r"\(\s*\"on_call\"\s*,\s*\"support\"\s*\)"),
    "the order flows' names": re.compile(r"\"seal-or-lock\"|\"restore-access\"|\"block-guardian\"|\"minor-access\""),
    "a stage's waiting status by name": re.compile(r"\"callback\"\s*:\s*OrderStatus\.|\"approval\"\s*:\s*OrderStatus\."),
}


@pytest.mark.parametrize("what", sorted(ROUTINE_ONLY))
def test_the_routine_is_written_once(what: str) -> None:
    pattern = ROUTINE_ONLY[what]
    copies = [f"{path.relative_to(ROOT)}:{n}" for path in _python_files(*LAYERS)
              if path.relative_to(ROOT).as_posix() != "models/routine.py"
              for n, text in enumerate(path.read_text().splitlines(), 1) if pattern.search(text)]
    assert not copies, f"{what} outside models/routine.py:\n" + "\n".join(copies)


def _texts(path: Path) -> Iterator[tuple[int, str]]:
    """What a file can show people: a template's lines, or a module's string literals other than docstrings
    (a docstring may quote a source's wording as an example)."""
    if path.suffix == ".j2":
        yield from enumerate(path.read_text().splitlines(), 1)
        return
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


def test_no_callback_time_is_written_into_a_text() -> None:
    """The callback window is a region setting: no page, email, PDF or message may promise a fixed one."""
    pattern = re.compile(r"\b\d+\s*minuter\b")
    found = [f"{path.relative_to(ROOT)}:{n}: {text.strip()[:80]}"
             for package in LAYERS for path in sorted((ROOT / package).rglob("*"))
             if path.suffix in (".py", ".j2") and path.is_file()
             for n, text in _texts(path) if pattern.search(text)]
    assert not found, "\n".join(found)
