"""The README's main job: `mrisynth demo`, with and without a display."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

MRISYNTH = str(Path(sys.executable).with_name("mrisynth"))


def test_headless_demo_runs_the_pipeline(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    out = tmp_path / "demo"
    result = subprocess.run(
        [MRISYNTH, "demo", "--out", str(out), "--subjects", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "No display found" in result.stdout
    assert "simulated, not clinical" in result.stdout
    assert (out / "participants.tsv").is_file()
    assert (out / "sub-001_from_dicom.nii.gz").is_file()
    atrophy = result.stdout.split("4/8")[1].split("5/8")[0]
    rows = [line for line in atrophy.splitlines() if line.strip().startswith("sub-")]
    assert len(rows) == 2 and {"bvFTD", "control"} == {r.split()[1] for r in rows}
    # The bundled demo models segment and classify a fresh install's data at once.
    assert (out / "sub-001_seg.nii.gz").is_file()
    dice = float(re.search(r"brain mask Dice against the simulated ground truth: ([\d.]+)",
                           result.stdout).group(1))  # fmt: skip
    assert dice > 0.85, result.stdout
    verdicts = [line for line in result.stdout.splitlines() if "P(bvFTD) = " in line]
    assert len(verdicts) == 2
    # ... and the bundled generator makes synthetic volumes with provenance, none a copy.
    synthetic = out / "synthetic"
    volumes = [p for p in synthetic.glob("*.nii.gz") if not p.name.endswith("_labels.nii.gz")]
    assert len(volumes) == 4, result.stdout
    assert len(list(synthetic.glob("*.json"))) == 4
    # the default (anatomy-first) generator writes each volume's label map beside it
    for volume in volumes:
        assert volume.with_name(volume.name.replace(".nii.gz", "_labels.nii.gz")).exists()
    audit = [line for line in result.stdout.splitlines() if "nearest real sub-" in line]
    assert len(audit) == 4 and all("not a copy" in line for line in audit), result.stdout
    # ... and a blinded study of real against synthetic is ready to rate.
    from napari_mrisynth.turing.store import RatingStore

    assert "8/8 blinded visual Turing test: 2 pair trials" in result.stdout, result.stdout
    with RatingStore(out / "turing-study.db") as store:
        assert store.rater_ids("study") == ["rater1", "rater2"]
        assert store.trial_count("study", "rater1") == 2


@pytest.mark.gui
@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (xvfb-run)")
def test_gui_demo_docks_widgets_and_shows_the_sample(tmp_path):
    shot = tmp_path / "demo.png"
    result = subprocess.run(
        [MRISYNTH, "demo", "--screenshot", str(shot)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    from imageio.v3 import imread

    image = imread(shot)
    assert image.shape[0] >= 900 and image.shape[1] >= 1400  # the whole window, docks included
    # the right-hand dock area holds the widgets: not a flat background
    assert image[:, -300:, :3].std() > 10
    # the canvas shows the head: bright tissue in the middle third
    h, w = image.shape[:2]
    assert image[h // 3 : 2 * h // 3, w // 3 : 2 * w // 3, :3].mean() > 40
