"""House rules: no import cycles (function-level imports included), no file over 400 lines."""
from __future__ import annotations

import textwrap
from pathlib import Path

from tests.conftest import REPO
from tests.helpers import load_script


def _checker():
    return load_script(REPO / "scripts" / "check_house.py")


def _write_repo(root: Path, files: dict[str, str]) -> Path:
    (root / "setup.cfg").write_text("[options]\npackage_dir =\n    pkg = src\n    pkg.sub = stage\n")
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def test_the_package_has_no_import_cycles():
    check = _checker()
    assert check.cycles(check.import_graph(check.package_modules())) == []


def test_no_source_file_is_over_the_limit():
    assert _checker().long_files() == []


def test_a_function_level_import_still_closes_a_cycle(tmp_path):
    check = _checker()
    repo = _write_repo(tmp_path, {
        "src/__init__.py": "",
        "src/a.py": "from pkg.sub import b\n",
        "stage/__init__.py": "",
        "stage/b.py": "def f():\n    from pkg import a\n    return a\n",
        "stage/c.py": "from . import b\n",
    })
    graph = check.import_graph(check.package_modules(repo))
    assert graph["pkg.sub.c"] == {"pkg.sub.b"}             # relative import resolved
    assert check.cycles(graph) == [["pkg.a", "pkg.sub.b"]]


def test_a_long_file_is_reported(tmp_path):
    check = _checker()
    repo = _write_repo(tmp_path, {"src/__init__.py": "", "src/big.py": "x = 1\n" * 401, "stage/__init__.py": ""})
    assert check.long_files(repo) == [(Path("src/big.py"), 401)]
