"""The DICOM object validator of Debian's dicom3tools, for tests that write DICOM."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

DCIODVFY = shutil.which("dciodvfy")


def dciodvfy(path: Path) -> tuple[list[str], list[str]]:
    """(error lines, warning lines) of ``dciodvfy`` on one file; fails when it is missing."""
    if DCIODVFY is None:
        pytest.fail("dciodvfy (Debian package dicom3tools) is not installed")
    result = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    warnings = [line for line in lines if line.startswith("Warning")]
    print(f"dciodvfy {Path(path).name}: {len(errors)} errors, {len(warnings)} warnings")
    for line in warnings:
        print("  ", line)
    return errors, warnings
