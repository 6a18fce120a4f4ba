"""The house's arrows run one way: faces (functions/, harmony_local) -> adapters (harmony_aws)
-> engine (harmony_image), and the engine imports numpy, OpenCV and the standard library only.

Read from the source with ast (every import statement, including those under
``if TYPE_CHECKING`` or inside functions), not from what happens to be imported at run time.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import REPO

SRC = REPO / "src"
ENGINE_THIRD_PARTY = {"numpy", "cv2"}
PACKAGES = ("harmony_image", "harmony_aws", "harmony_local")
# what each room may import of the project's packages (never a room above it)
ALLOWED = {
    "harmony_image": {"harmony_image"},
    "harmony_aws": {"harmony_image", "harmony_aws"},
    "harmony_local": {"harmony_image", "harmony_aws", "harmony_local"},
    "functions": {"harmony_image", "harmony_aws"},
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path, module: str) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module:
                    yield node.lineno, target
                else:
                    for alias in node.names:
                        yield node.lineno, f"{target}.{alias.name}"
            else:
                yield node.lineno, node.module or ""


def modules_of(package: str) -> dict[str, Path]:
    return {module_name(p, SRC): p for p in sorted((SRC / package).rglob("*.py"))}


def test_the_engine_imports_numpy_opencv_and_the_standard_library_only() -> None:
    bad = []
    for module, path in modules_of("harmony_image").items():
        for line, target in imports(path, module):
            top = target.split(".")[0]
            if top == "harmony_image" or top in ENGINE_THIRD_PARTY or top in sys.stdlib_module_names:
                continue
            bad.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("room", sorted(ALLOWED))
def test_arrows_run_one_way(room: str) -> None:
    files = sorted((REPO / "functions").rglob("*.py")) if room == "functions" else sorted((SRC / room).rglob("*.py"))
    bad = []
    for path in files:
        module = module_name(path, REPO / "functions" if room == "functions" else SRC)
        for line, target in imports(path, module):
            top = target.split(".")[0]
            if top in PACKAGES and top not in ALLOWED[room]:
                bad.append(f"{path.relative_to(REPO)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


def module_cycles(package: str) -> list[list[str]]:
    """Strongly connected components of more than one module in the package's import graph."""
    mods = modules_of(package)

    def resolve(target: str) -> str | None:
        """The module an import names; ``from pkg.mod import name`` -> pkg.mod. A compiled
        extension (pkg._kernels, built from pkg/_kernels.c) imports nothing of the package."""
        if (SRC / target.replace(".", "/")).with_suffix(".c").exists():
            return None
        while target and target not in mods:
            target = target.rpartition(".")[0]
        return target or None

    graph = {m: {t for _, imp in imports(p, m) if (t := resolve(imp)) and t != m} for m, p in mods.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for m in graph:
        if m not in index:
            visit(m)
    return cycles


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycles(package: str) -> None:
    assert module_cycles(package) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above can fail: two modules importing each other are reported."""
    pkg = tmp_path / "loop"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import x\n")
    (pkg / "b.py").write_text("from . import a\nx = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    assert module_cycles("loop") == [["loop.a", "loop.b"]]
