"""Session-wide fixtures: the DICOM corpus is written once per test session (about 1 s)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import dicom_corpus  # noqa: E402


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """name -> CorpusSeries for every series in :func:`dicom_corpus.build_corpus`."""
    return dicom_corpus.build_corpus(tmp_path_factory.mktemp("dicom_corpus"))


@pytest.fixture(scope="session")
def mixed_folder(tmp_path_factory):
    """Two series, a localizer sharing one series' UID, and junk files, in one tree."""
    return dicom_corpus.build_mixed_folder(tmp_path_factory.mktemp("mixed") / "export")


@pytest.fixture(scope="session")
def dcm2niix_of(tmp_path_factory):
    """``dcm2niix_of(name, folder)`` -> NIfTI paths, converted once per session."""
    root = tmp_path_factory.mktemp("dcm2niix")
    cache: dict[str, list[Path]] = {}

    def convert(name: str, folder: Path) -> list[Path]:
        if name not in cache:
            cache[name] = dicom_corpus.dcm2niix(folder, root / name, name)
        return cache[name]

    return convert
