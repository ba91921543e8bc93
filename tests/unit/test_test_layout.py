"""The test suite's own layout: two tiers, shared helpers in helper modules, no test module importing another."""
from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

TESTS = REPO / "tests"


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_test_module_imports_another():
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        found = [name for name in _imported_modules(path)
                 if name.startswith("tests.") and name.rsplit(".", 1)[-1].startswith("test_")]
        if found:
            offenders[str(path.relative_to(REPO))] = sorted(found)
    assert offenders == {}, "move what they share into tests/helpers.py"


def test_the_fast_tier_needs_nothing_from_the_integration_tier():
    for path in sorted((TESTS / "unit").rglob("*.py")):
        assert not any(name.startswith("tests.integration") for name in _imported_modules(path)), path


def test_every_test_module_belongs_to_a_tier():
    """`make test-unit` runs tests/unit, `make test` everything: a test module left at the top is in neither tier."""
    assert sorted(p.name for p in TESTS.glob("test_*.py")) == []
    assert (TESTS / "unit" / "__init__.py").is_file() and (TESTS / "integration" / "__init__.py").is_file()
