"""The plugin manifest reaches napari from a wheel and from the editable install."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_RESOLVE = """
import sys
{prefix}
import importlib.metadata as md
from npe2 import PluginManifest
dist = md.distribution("napari-mrisynth")
manifest = PluginManifest.from_distribution("napari-mrisynth")
import napari_mrisynth
print(manifest.name, napari_mrisynth.__file__, len(manifest.contributions.commands or []))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (path,) = out.glob("napari_mrisynth-*.whl")
    return path


def test_wheel_carries_manifest_and_entry_point(wheel):
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        assert "napari_mrisynth/napari.yaml" in names
        assert zf.read("napari_mrisynth/napari.yaml") == (ROOT / "napari.yaml").read_bytes()
        (ep_name,) = [n for n in names if n.endswith("entry_points.txt")]
        entry_points = zf.read(ep_name).decode()
    assert "[napari.manifest]" in entry_points
    assert "napari-mrisynth = napari_mrisynth:napari.yaml" in entry_points
    assert "mrisynth = napari_mrisynth.cli:main" in entry_points


def test_manifest_resolves_from_installed_wheel(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    code = _RESOLVE.format(prefix=f"sys.path.insert(0, {str(target)!r})")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    name, module_file, n_commands = out.stdout.split()
    assert name == "napari-mrisynth"
    assert module_file.startswith(str(target)), "the wheel's copy must be the one imported"
    assert int(n_commands) > 0


def test_manifest_resolves_from_editable_install():
    code = _RESOLVE.format(prefix="")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    name, module_file, n_commands = out.stdout.split()
    assert name == "napari-mrisynth"
    assert Path(module_file).resolve().is_relative_to(ROOT / "src")
    assert int(n_commands) > 0


def test_npe2_validate_passes():
    npe2 = Path(sys.executable).with_name("npe2")
    result = subprocess.run(
        [str(npe2), "validate", "napari-mrisynth"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid" in (result.stdout + result.stderr).lower()


def test_base_dependencies_bring_no_qt_binding():
    import tomllib

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = " ".join(meta["dependencies"]).lower()
    for binding in ("pyqt5", "pyqt6", "pyside2", "pyside6", "napari[all]", "napari[pyqt"):
        assert binding not in base
    assert any("pyqt6" in dep.lower() for dep in meta["optional-dependencies"]["qt"])


def test_cli_entry_point_runs():
    mrisynth = Path(sys.executable).with_name("mrisynth")
    result = subprocess.run([str(mrisynth), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    for command in ("series", "convert", "cohort", "demo"):
        assert command in result.stdout


def test_every_command_prints_its_help():
    """``mrisynth <command> ... --help`` renders for every command: argparse %-formats help
    text, so a stray "%" (as in the acquisition "noise 3 %") crashed ``--help``."""
    import argparse

    from napari_mrisynth.cli import build_parser

    def commands(parser, path):
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from commands(sub, [*path, name])

    found = dict((" ".join(path), parser) for path, parser in commands(build_parser(), []))
    assert {"evaluate robustness", "train segmentation", "demo"} <= set(found)
    for name, parser in found.items():
        text = parser.format_help()
        assert text.startswith("usage: mrisynth"), name
    assert "noise 3 %," in found["evaluate robustness"].format_help()
