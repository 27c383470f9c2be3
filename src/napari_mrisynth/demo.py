"""The main job, as a new user first meets it (``mrisynth demo``).

With a display: napari opens with the plugin's widgets docked and a simulated bvFTD subject
loaded. Without one: it says so and runs the same data through the headless pipeline
(simulated cohort -> DICOM series discovery -> exact load -> NIfTI -> regional volumes ->
segmentation and bvFTD classification with the bundled demo models -> synthetic bvFTD and
control volumes from the default generator (the bundled anatomy-first model), with provenance and a
memorization check against the cohort).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

PLUGIN = "napari-mrisynth"


def has_display() -> bool:
    """True where a GUI window can open (an X or Wayland display, or a desktop OS)."""
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def run_viewer(screenshot: Path | None = None):
    """Open napari with every widget of the plugin docked and a simulated subject loaded."""
    import napari
    from npe2 import PluginManager

    viewer = napari.Viewer(title="napari-mrisynth demo (simulated data)")
    manifest = PluginManager.instance().get_manifest(PLUGIN)  # discovered by the viewer
    samples = manifest.contributions.sample_data or []
    if samples:
        viewer.open_sample(PLUGIN, samples[0].key)
    docks = [
        viewer.window.add_plugin_dock_widget(PLUGIN, widget.display_name)[0]
        for widget in manifest.contributions.widgets or []
    ]
    # Eight docks stacked would make the window taller than any screen: the file widgets
    # (series browser, geometry) share one tab group, the model and study widgets another.
    window = viewer.window._qt_window
    for group in (docks[:2], docks[2:]):
        for dock in group[1:]:
            window.tabifyDockWidget(group[0], dock)
        if group:
            group[0].raise_()
    viewer.dims.current_step = tuple(s // 2 for s in viewer.dims.nsteps)
    if viewer.layers:
        viewer.layers.selection.active = viewer.layers[0]
    viewer.window.resize(1500, 950)
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()  # lay out the docks, then fit the head to the canvas
    viewer.reset_view()
    if screenshot is not None:
        from napari.qt.threading import WorkerBase

        # The docked widgets list torch's devices in worker threads; closing the viewer
        # under a running worker aborts the process (its signals outlive their widget).
        WorkerBase.await_workers(msecs=120_000)
        QApplication.processEvents()
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(screenshot), canvas_only=False)
        print(f"screenshot: {screenshot}")
        viewer.close()
        return 0
    napari.run()
    return 0


def run_headless(out: Path, subjects: int) -> int:
    """Simulated cohort -> DICOM discovery -> exact load -> NIfTI -> regional volumes."""
    import numpy as np

    from napari_mrisynth.anatomy import BRAIN_LABELS, BVFTD_LABELS, LABEL_IDS, LABELS
    from napari_mrisynth.cohort import build_cohort
    from napari_mrisynth.io.dicom import scan_folder
    from napari_mrisynth.io.files import load_volume, save_volume
    from napari_mrisynth.volume import orientation_code

    start = time.perf_counter()
    print(f"1/8 building a simulated cohort of {subjects} subjects in {out} (2 mm) ...")
    root = build_cohort(out, subjects=subjects, seed=0, spacing=2.0)
    participants = _read_participants(root / "participants.tsv")
    first = participants[0]["participant_id"]

    dicom_dir = root / first / "dicom"
    print(f"2/8 scanning {dicom_dir}")
    scan = scan_folder(dicom_dir)
    for series in scan.series:
        print(f"    {series.describe()}")
    for skipped in scan.skipped:
        print(f"    skipped {skipped.path.name}: {skipped.reason}")

    print("3/8 loading the series with exact geometry and writing NIfTI")
    volume = load_volume(dicom_dir)
    nifti = save_volume(volume, out / f"{first}_from_dicom.nii.gz")
    print(f"    {volume}")
    print(f"    orientation {orientation_code(volume.direction)}, written {nifti}")

    print("4/8 atrophy measured from the ground-truth labels (% of brain volume)")
    shown = (*BVFTD_LABELS, LABEL_IDS["frontal_gm"], LABEL_IDS["lateral_ventricles"])
    header = "".join(LABELS[k][0].replace("_gm", "")[:14].rjust(15) for k in shown)
    print("    " + "subject".ljust(9) + "diagnosis".ljust(10) + "severity".rjust(9) + header)
    for row in participants:
        sid = row["participant_id"]
        labels = np.asarray(load_volume(root / sid / "anat" / f"{sid}_labels.nii.gz").data)
        counts = np.bincount(labels.ravel(), minlength=max(LABELS) + 1)
        brain = counts[list(BRAIN_LABELS)].sum()
        cells = "".join(f"{100 * counts[k] / brain:15.2f}" for k in shown)
        severity = float(row["severity"])
        print("    " + sid.ljust(9) + row["diagnosis"].ljust(10) + f"{severity:9.2f}" + cells)
    run_models(root, participants, out)
    if run_synthesis(root, participants, out):
        run_study(root, out)
    print(f"done in {time.perf_counter() - start:.1f} s; all data here is simulated, not clinical.")
    return 0


def run_models(root: Path, participants: list[dict[str, str]], out: Path) -> None:
    """Segment the first subject's DICOM series and classify every subject."""
    import warnings

    from napari_mrisynth.errors import ModelError
    from napari_mrisynth.io.files import load_volume, save_volume
    from napari_mrisynth.models.device import CpuFallbackWarning
    from napari_mrisynth.models.inference import classify, segment
    from napari_mrisynth.reports.metrics import brain_dice

    first = participants[0]["participant_id"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = segment(root / first / "dicom")
        except ModelError as exc:
            print(f"5/8 no segmentation model: {exc}")
            return
    for warning in caught:
        print(f"    note: {warning.message}")
    mask = save_volume(result.labels, out / f"{first}_seg.nii.gz")
    truth = load_volume(root / first / "anat" / f"{first}_labels.nii.gz").data
    dice = brain_dice(truth, result.labels.data)
    print(
        f"5/8 segmented {first}'s DICOM series with {result.card.ref} on {result.device} in "
        f"{result.seconds:.2f} s -> {mask}"
    )
    print(f"    brain mask Dice against the simulated ground truth: {dice:.3f}")
    warnings.simplefilter("ignore", CpuFallbackWarning)  # announced once above
    try:
        classify(root / first / "anat" / f"{first}_T1w.nii.gz")
    except ModelError as exc:
        print(f"6/8 no classification model: {exc}")
        return
    print("6/8 bvFTD classifier (P(bvFTD) per subject)")
    for row in participants:
        sid = row["participant_id"]
        verdict = classify(root / sid / "anat" / f"{sid}_T1w.nii.gz")
        print(
            f"    {sid.ljust(9)}{row['diagnosis'].ljust(10)}P(bvFTD) = "
            f"{verdict.probabilities.get('bvFTD', float('nan')):.3f} -> {verdict.predicted}"
            f"  ({verdict.card.ref})"
        )


def run_synthesis(root: Path, participants: list[dict[str, str]], out: Path) -> bool:
    """Generate two bvFTD and two control volumes with the default generator, and check
    each against its nearest real scan of the cohort."""
    import warnings

    from napari_mrisynth.errors import ModelError
    from napari_mrisynth.models.device import CpuFallbackWarning
    from napari_mrisynth.synthesis import generate

    warnings.simplefilter("ignore", CpuFallbackWarning)
    folder = out / "synthetic"
    made = []
    try:
        from napari_mrisynth.models.registry import default_model

        card = default_model("generation")
        for condition in ("bvftd", "control"):
            made += generate(card, 2, condition=condition, seed=0, out=folder)
    except ModelError as exc:
        print(f"7/8 no generator: {exc}")
        return False
    sampling = made[0].provenance["sampling"]
    steps = f", {sampling['sampler']} {sampling['steps']} steps" if "steps" in sampling else ""
    print(f"7/8 generated {len(made)} volumes with {card.ref}{steps} -> {folder}")
    for item in made:
        print(
            f"    {item.path.name}  {item.provenance['seconds']:.2f} s  "
            f"(provenance: {item.sidecar.name})"
        )
    from napari_mrisynth.evaluation import audit_memorization
    from napari_mrisynth.io.files import load_volume

    real = []
    for row in participants:
        sid = row["participant_id"]
        volume = load_volume(root / sid / "anat" / f"{sid}_T1w.nii.gz").compute()
        volume.metadata["name"] = sid
        real.append(volume)
    audit = audit_memorization(real, [m.volume for m in made])
    for entry in audit.entries:
        flag = "FLAGGED as a possible copy" if entry["flagged"] else "not a copy"
        print(
            f"    {entry['synthetic']}: nearest real {entry['nearest']} "
            f"(similarity {entry['similarity']:.3f}; threshold {audit.threshold:.3f}): {flag}"
        )
    return True


def run_study(root: Path, out: Path) -> None:
    """Freeze a blinded pair study of the cohort's scans against the synthetic volumes."""
    from napari_mrisynth.turing.design import create_study, find_real, find_synthetic

    db, key = out / "turing-study.db", out / "turing-study-KEY.db"
    for old in (db, key):
        for stale in (old, old.with_name(old.name + "-wal"), old.with_name(old.name + "-shm")):
            stale.unlink(missing_ok=True)
    real, synthetic = find_real(root), find_synthetic(out / "synthetic")
    trials = min(len(real), len(synthetic))
    study = create_study(db, key=key, real=root, synthetic=out / "synthetic",
                         raters=["rater1", "rater2"], mode="pair", trials=trials, seed=0,
                         spacing=2.0)  # fmt: skip
    print(f"8/8 blinded visual Turing test: {trials} pair trials for rater1 and rater2, "
          f"prepared identically ({study['grid']['spacing']:g} mm grid, "
          f"{study['grid']['resolution']:g} mm resolution) -> {db}")  # fmt: skip
    print(f"    answer key (keep it from the raters): {key}")
    for rater, secret in study["secrets"].items():
        print(f"    {rater}'s secret (shown once): {secret}")
    print(f"    rate in napari: mrisynth study rate --db {db} --rater rater1")
    print(f"    then: mrisynth study report --db {db} --key {key} --out {out / 'turing-report'}")


def _read_participants(path: Path) -> list[dict[str, str]]:
    lines = path.read_text().splitlines()
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:] if line]
