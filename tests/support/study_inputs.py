"""Small studies for the Turing and export tests: a simulated cohort at 4 mm as the real
scans, and "synthetic" volumes written as a generator writes them (NIfTI on the 4 mm model
grid with a provenance sidecar). The synthetic voxels come from other simulated subjects
prepared onto the model grid, so real and synthetic differ only in where they came from:
what the blinding tests need. Building takes about 10-20 s on 2 CPU cores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np

WEIGHTS_SHA = "ab" * 32


def write_synthetic(
    folder: Path, cohort: Path, subjects: list[str], *, seed: int = 0
) -> list[Path]:
    """Write one generator-style volume (+ sidecar) per subject of ``cohort`` in ``folder``."""
    from napari_mrisynth.evaluation.common_grid import model_input_spec, prepare_for
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.preprocess import default_model_grid
    from napari_mrisynth.training.splits import read_participants
    from napari_mrisynth.volume import volume_to_nifti

    folder.mkdir(parents=True, exist_ok=True)
    rows = {r["participant_id"]: r for r in read_participants(cohort)}
    grid = default_model_grid(4.0)
    spec = model_input_spec(4.0)
    rng = np.random.default_rng(seed)
    written = []
    for index, subject in enumerate(subjects):
        scan = load_volume(cohort / subject / "anat" / f"{subject}_T1w.nii.gz")
        image = prepare_for(scan, spec).image.astype(np.float32)
        image = image + rng.normal(0, 0.01, image.shape).astype(np.float32)
        diagnosis = rows[subject]["diagnosis"]
        name = f"ldm-test_{diagnosis}_seed{seed}_{index:04d}"
        nib.save(volume_to_nifti(grid.volume(image)), folder / f"{name}.nii.gz")
        sidecar = {
            "synthetic": True,
            "generator": {
                "id": "ldm-test",
                "version": "1.0.0",
                "family": "ldm",
                "weights_sha256": WEIGHTS_SHA,
                "architecture": "LatentDiffusion",
            },
            "seed": seed,
            "index": index,
            "noise_seed": 1000 + index,
            "condition": {"diagnosis": diagnosis, "age": None, "sex": None},
            "sampling": {"sampler": "ddim", "steps": 50, "guidance": 1.0, "eta": 0.0},
            "seconds": 1.0,
            "device": "cpu",
            "precision": "32",
            "grid": {
                "spacing": [4.0] * 3,
                "shape": list(grid.shape),
                "origin": list(grid.origin),
                "space": spec.space,
            },
            "created": "2026-11-29T10:00:00+00:00",
            "training_data": {"data": str(cohort), "simulated": True},
            "files": {"nifti": f"{name}.nii.gz"},
        }
        (folder / f"{name}.json").write_text(json.dumps(sidecar, indent=2))
        written.append(folder / f"{name}.nii.gz")
    return written


def build_study_inputs(root: Path, n_real: int = 6, n_synthetic: int = 6) -> tuple[Path, Path]:
    """(real cohort, synthetic folder) under ``root``: a 4 mm cohort of ``n_real +
    n_synthetic`` subjects; the first ``n_real`` stay real (a smaller cohort folder), the
    others become the synthetic set."""
    import shutil

    from napari_mrisynth.cohort import build_cohort
    from napari_mrisynth.training.splits import read_participants

    full = build_cohort(root / "cohort-all", n_real + n_synthetic, 7, spacing=4.0)
    rows = read_participants(full)
    real_ids = [r["participant_id"] for r in rows[:n_real]]
    synth_ids = [r["participant_id"] for r in rows[n_real:]]
    real = root / "real"
    real.mkdir()
    header = (full / "participants.tsv").read_text().splitlines()[0]
    lines = [header] + ["\t".join(r[k] for k in header.split("\t")) for r in rows[:n_real]]
    (real / "participants.tsv").write_text("\n".join(lines) + "\n")
    for subject in real_ids:
        shutil.copytree(full / subject, real / subject)
    synthetic = root / "synthetic"
    write_synthetic(synthetic, full, synth_ids)
    return real, synthetic


SRC = str(Path(__file__).resolve().parents[1] / "src")


def run_python(script: str, **kwargs) -> subprocess.Popen:
    """Start ``python -c script`` (dedented) with the package on the path, text pipes."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=SRC, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **kwargs)  # fmt: skip


def read_line(proc: subprocess.Popen, timeout: float = 120.0) -> str:
    """The child's first (or next, once the previous one is all it printed) stdout line; a
    child silent for ``timeout`` s is killed and the test fails with its stderr, instead of
    hanging the suite. Not for a stream of lines: those already buffered are not seen."""
    import selectors

    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            proc.kill()
            raise AssertionError(f"no output in {timeout:.0f} s: {proc.stderr.read()}")
    return proc.stdout.readline()


def rate_concurrently(scripts: dict[str, str], expected: str, *, timeout: float,
                      diagnostics=lambda: "") -> None:  # fmt: skip
    """Start one rater process per script; each prints ``OPEN`` when its store is open and
    waits for a line on stdin, so all start rating at once; each must exit 0 printing
    ``expected``. ``diagnostics()`` is added to a failure's message (e.g. a server log)."""
    procs = {rater: run_python(script, stdin=subprocess.PIPE) for rater, script in scripts.items()}
    try:
        for proc in procs.values():
            assert read_line(proc).strip() == "OPEN", proc.stderr.read()
        for proc in procs.values():  # go
            proc.stdin.write("\n")
            proc.stdin.flush()
        for rater, proc in procs.items():
            out, err = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, f"{rater}: {err}\n{diagnostics()}"
            assert out.strip() == expected
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
