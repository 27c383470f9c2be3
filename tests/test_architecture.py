"""The layer order of docs/architecture.md, checked: stations only import from below them.

import-linter builds the graph with grimp, which sees imports inside functions (a third of
ours: they keep torch optional and ``mrisynth --help`` fast) where ruff does not.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "napari_mrisynth"
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contract() -> dict:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return layers


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    """lint-imports with this project's contracts on the package found under ``package_parent``."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(package_parent)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(ROOT / "pyproject.toml")],
        capture_output=True, text=True, env=env, cwd=package_parent, timeout=120,
    )  # fmt: skip


def test_contracts_hold():
    done = _lint(ROOT / "src")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 2 kept, 0 broken" in done.stdout


def _grimp_package_graph() -> dict[str, set[str]]:
    import grimp

    graph = grimp.build_graph("napari_mrisynth", include_external_packages=True, cache_dir=None)
    edges: dict[str, set[str]] = {}
    for module in graph.modules:
        parts = module.split(".")
        if parts[0] != "napari_mrisynth" or len(parts) < 2:
            continue
        for imported in graph.find_modules_directly_imported_by(module):
            target = imported.split(".")
            name = target[1] if target[0] == "napari_mrisynth" and len(target) > 1 else target[0]
            if name != parts[1]:
                edges.setdefault(parts[1], set()).add(name)
    return edges


def test_package_graph_has_no_cycle_and_gui_stays_in_its_corner():
    """Packages (imports inside functions included) form a DAG; napari and Qt are imported
    only by the widgets and the demo that opens a viewer."""
    edges = _grimp_package_graph()
    order: list[str] = []
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        if state.get(node) == 1:
            pytest.fail(f"import cycle: {' -> '.join([*path, node])}")
        if state.get(node) == 2:
            return
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            visit(nxt, [*path, node])
        state[node] = 2
        order.append(node)

    for node in sorted(edges):
        visit(node, [])
    gui = {"napari", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "magicgui", "vispy"}
    users = {package for package, imported in edges.items() if imported & gui}
    assert users <= {"_widgets", "demo"}, users
    assert "_widgets" in users


def test_every_package_is_in_the_contract_and_the_docs():
    """The contract names every station, and docs/architecture.md gives the same order."""
    layers = [name.strip() for layer in _contract()["layers"] for name in layer.split("|")]
    packages = {
        p.stem
        for p in PACKAGE.iterdir()
        if (p / "__init__.py").exists() or (p.suffix == ".py" and p.stem != "__init__")
    }
    assert set(layers) == packages
    docs = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- layers -->\n```\n(.*?)```", docs, re.S)
    assert block, "docs/architecture.md lost its layer block"
    documented = [line.split()[0].strip("`") for line in block.group(1).strip().splitlines()]
    top_down = [layer.replace(" ", "") for layer in _contract()["layers"]]
    assert documented == top_down


def _lint_a_copy_with(tmp_path: Path, module: str, addition: str) -> subprocess.CompletedProcess:
    """lint-imports on a copy of the package whose ``module`` (a path under it) ends with
    ``addition``."""
    copy = tmp_path / "napari_mrisynth"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("bundled", "__pycache__"))
    target = copy / module
    target.write_text(target.read_text() + addition)
    return _lint(tmp_path)


def test_a_new_backward_import_breaks_the_contract(tmp_path):
    """A copy of the package where io imports turing (upward) fails the check."""
    upward = "\n\ndef _up():\n    from napari_mrisynth.turing import store\n\n    return store\n"
    done = _lint_a_copy_with(tmp_path, "io/files.py", upward)
    assert done.returncode != 0
    assert "napari_mrisynth.io is not allowed to import napari_mrisynth.turing" in done.stdout


def test_a_gui_import_outside_the_corner_breaks_the_contract(tmp_path):
    gui = "\n\ndef _show():\n    import napari\n\n    return napari\n"
    done = _lint_a_copy_with(tmp_path, "turing/store.py", gui)
    assert done.returncode != 0
    assert "napari_mrisynth.turing.store -> napari" in done.stdout
