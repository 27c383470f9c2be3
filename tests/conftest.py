"""Fixtures shared by every test package.

The tests mirror the package: ``tests/io`` tests ``napari_mrisynth.io``, ``tests/_widgets``
the napari corner, and so on. Builders too big for a fixture (the DICOM corpus, tiny
registry models and generators, study inputs) are plain modules in :mod:`tests.support`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import dicom_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """name -> CorpusSeries for every series in :func:`dicom_corpus.build_corpus` (about 1 s,
    written once per test session)."""
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


@pytest.fixture(scope="session")
def simulated_cohort(tmp_path_factory):
    """``simulated_cohort(subjects, seed, spacing=4.0)`` -> a cohort folder written by
    :func:`~napari_mrisynth.cohort.build_cohort`, once per session for each argument set
    (tests must not change it)."""
    from napari_mrisynth.cohort import build_cohort

    built: dict[tuple, Path] = {}

    def cohort(subjects: int, seed: int, spacing: float = 4.0) -> Path:
        key = (subjects, seed, spacing)
        if key not in built:
            folder = tmp_path_factory.mktemp(f"cohort-{subjects}-{seed}-{spacing:g}mm")
            built[key] = build_cohort(folder, subjects, seed, spacing=spacing)
        return built[key]

    return cohort


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory):
    """A fresh MLflow SQLite store shared by the tests of one module."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
