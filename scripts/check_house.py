#!/usr/bin/env python3
"""House rules that a linter cannot see: no import cycles, no file over 400 lines.

Import cycles are found on the AST, so an import inside a function counts as much as one at
the top of a module: a lazy import hides a cycle from Python, not from the reader. Module
names come from setup.cfg's `package_dir`, the same mapping the installed package uses.

    python scripts/check_house.py          # exit 1 and one line per finding
"""
from __future__ import annotations

import ast
import configparser
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 400
# Folders whose Python files must stay short, besides the package itself.
EXTRA_SOURCE_DIRS = ("tests", "bench", "scripts", "launch")


def package_modules(repo: Path = REPO) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the installed package."""
    cfg = configparser.ConfigParser()
    cfg.read(repo / "setup.cfg")
    mapping = dict(line.split("=") for line in cfg["options"]["package_dir"].strip().splitlines())
    modules: dict[str, Path] = {}
    for package, folder in ((p.strip(), f.strip()) for p, f in mapping.items()):
        for path in sorted((repo / folder).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            modules[name] = path
    return modules


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The package modules one import statement loads (a submodule, else its package)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in known]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:   # relative: resolve against this module's package
        parts = module.split(".") if is_package else module.split(".")[:-1]
        base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    targets = []
    for alias in node.names:
        if f"{base}.{alias.name}" in known:
            targets.append(f"{base}.{alias.name}")
        elif base in known:
            targets.append(base)
    return targets


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.stem == "__init__"
        graph[name] = {t for node in ast.walk(tree) for t in _imported(node, name, is_package, known)
                       if t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def long_files(repo: Path = REPO, limit: int = MAX_LINES) -> list[tuple[Path, int]]:
    files = set(package_modules(repo).values())
    for folder in EXTRA_SOURCE_DIRS:
        files.update((repo / folder).rglob("*.py"))
    counts = ((path, len(path.read_text().splitlines())) for path in sorted(files))
    return [(path.relative_to(repo), n) for path, n in counts if n > limit]


def main() -> int:
    problems = [f"import cycle: {' <-> '.join(c)}" for c in cycles(import_graph(package_modules()))]
    problems += [f"{path}: {n} lines (limit {MAX_LINES})" for path, n in long_files()]
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
