"""Regenerate the screenshots of docs/napari.md from the real plugin in a real viewer.

Usage (from the repository root)::

    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/napari_screenshots.py
    xvfb-run -a -s "-screen 0 1400x1000x24" python docs/napari_screenshots.py synthesize

Name views (sample, browser, models, synthesize, turing) to regenerate only those. The Synthesize
view uses the generator ``ldm-bvftd-demo`` when the registry has it (point
``MRISYNTH_MODEL_PATH`` at its folder), else the best-ranked latent diffusion model, else
the best-ranked generator found.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"
PLUGIN = "napari-mrisynth"


def _settle(viewer, qapp, rounds: int = 30) -> None:
    import time

    for _ in range(rounds):
        qapp.processEvents()
        time.sleep(0.02)


def _save(viewer, name: str, *, canvas_only: bool = False) -> None:
    from imageio.v3 import imwrite

    shot = viewer.screenshot(canvas_only=canvas_only, flash=False)
    imwrite(IMAGES / name, shot)
    print("wrote", IMAGES / name)


def sample_views(viewer, qapp) -> None:
    """Simulated bvFTD subject: axial slice through the ventricles, labels over the T1."""
    from napari_mrisynth.anatomy.labels import LABEL_IDS

    t1, labels, _ = viewer.open_sample(PLUGIN, "simulated_bvftd")
    viewer.window.add_plugin_dock_widget(PLUGIN, "Volume geometry")
    ventricles = np.argwhere(np.asarray(labels.data) == LABEL_IDS["lateral_ventricles"])
    world = labels.data_to_world(ventricles.mean(0).astype(float))
    viewer.dims.set_point(0, float(world[0]))
    viewer.layers.selection.active = t1
    _settle(viewer, qapp)
    _save(viewer, "napari_sample_axial.png")
    labels.visible = False
    _settle(viewer, qapp)
    _save(viewer, "napari_sample_axial_t1.png", canvas_only=True)


def browser_view(viewer, qapp, folder: Path) -> None:
    """Series browser on a folder with regular, oblique and irregular series plus junk."""
    from qtpy.QtCore import Qt

    dock, browser = viewer.window.add_plugin_dock_widget(PLUGIN, "DICOM series browser")
    viewer.window._qt_window.resizeDocks([dock], [620], Qt.Orientation.Horizontal)
    browser.folder.setText(str(folder))
    worker = browser.start_scan()
    while worker.is_running:
        _settle(viewer, qapp, 5)
    _settle(viewer, qapp)
    browser.resample.setChecked(True)
    descriptions = [browser.table.item(r, 1).text() for r in range(browser.table.rowCount())]
    browser.table.selectRow(descriptions.index("SIMULATED oblique"))
    worker = browser.load_selected()
    while worker.is_running:
        _settle(viewer, qapp, 5)
    _settle(viewer, qapp)
    _save(viewer, "napari_series_browser.png")


def model_views(viewer, qapp, scan: Path) -> None:
    """Segment and Classify docks with the bundled demo models on a simulated 1 mm head."""
    from napari_mrisynth.anatomy.labels import LABEL_IDS

    (image,) = viewer.open(str(scan), plugin=PLUGIN)
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    segment.threaded = False
    segment.run()
    _settle(viewer, qapp)
    labels = viewer.layers[-1]
    region = np.argwhere(np.asarray(labels.data) == LABEL_IDS["anterior_temporal_gm"])
    world = labels.data_to_world(region.mean(0).astype(float))
    viewer.dims.set_point(0, float(world[0]))
    labels.opacity = 0.55
    viewer.layers.selection.active = image
    _settle(viewer, qapp)
    _save(viewer, "napari_segment.png")
    labels.visible = False
    _, classify = viewer.window.add_plugin_dock_widget(PLUGIN, "Classify")
    classify.threaded = False
    classify.run()
    _settle(viewer, qapp)
    _save(viewer, "napari_classify.png")


#: Generator shown in the Synthesize and Turing screenshots when the registry has it (the
#: bundled default generator).
SYNTHESIZE_MODEL = "anatomy-bvftd-demo"


def synthesize_views(viewer, qapp) -> None:
    """Synthesize dock: three synthetic bvFTD volumes beside a simulated subject, grid mode."""
    from qtpy.QtCore import Qt

    from napari_mrisynth._widgets._layer_data import image_layer_data
    from napari_mrisynth.cohort import simulate_subject
    from napari_mrisynth.synthesis.generate import rank_generators

    ranked = [card for card, _ in rank_generators("fid")]
    if not ranked:
        print("no generator in the registry: Synthesize screenshot skipped")
        return
    card = next((c for c in ranked if c.id == SYNTHESIZE_MODEL), ranked[0])
    subject = simulate_subject("sub-compare", "bvFTD", 20261129, 2.0, severity=0.9)
    data, kwargs, _ = image_layer_data(subject.t1, name="simulated bvFTD T1")
    viewer.add_image(data, **kwargs)
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Synthesize")
    viewer.window._qt_window.resizeDocks([dock], [430], Qt.Orientation.Horizontal)
    widget.threaded = False
    refs = [widget.model.itemData(i).ref for i in range(widget.model.count())]
    widget.model.setCurrentIndex(refs.index(card.ref))
    widget.image.setCurrentIndex(widget.image.findText("simulated bvFTD T1"))
    widget.n.setValue(3)
    widget.seed.setValue(7)
    widget.label_maps.setChecked(False)  # first the images alone, as a rater sees them
    widget.run()
    print("synthesize:", widget.status.text())
    _settle(viewer, qapp)
    _save(viewer, "napari_synthesize.png")
    if widget.label_maps.isEnabled():  # then each volume's label map over it
        widget.label_maps.setChecked(True)
        widget.run()
        print("synthesize with label maps:", widget.status.text())
        _settle(viewer, qapp)
        _save(viewer, "napari_synthesize_labels.png")


def turing_views(viewer, qapp, tmp: Path) -> None:
    """Visual Turing test: a pair trial mid-answer; then the Curation dock after rating."""
    import nibabel as nib
    from qtpy.QtCore import Qt

    from napari_mrisynth.cohort import simulate_subject
    from napari_mrisynth.synthesis.generate import generate, rank_generators
    from napari_mrisynth.turing.design import create_study
    from napari_mrisynth.turing.session import Answer, RaterSession
    from napari_mrisynth.turing.store import RatingStore
    from napari_mrisynth.volume import volume_to_nifti

    ranked = [card for card, _ in rank_generators("fid")]
    if not ranked:
        print("no generator in the registry: Turing screenshots skipped")
        return
    card = next((c for c in ranked if c.id == SYNTHESIZE_MODEL), ranked[0])
    real = tmp / "turing-real"
    real.mkdir()
    for k, diagnosis in enumerate(("bvFTD", "control", "bvFTD", "control")):
        severity = 0.8 if diagnosis == "bvFTD" else 0.0
        subject = simulate_subject(f"sub-{k}", diagnosis, 7000 + k, 2.0, severity=severity)
        nib.save(volume_to_nifti(subject.t1), real / f"sub-{k}_T1w.nii.gz")
    synthetic = tmp / "turing-synthetic"
    for condition in ("bvftd", "control"):
        generate(card.id, n=2, condition=condition, seed=3, out=synthetic)
    db, key = tmp / "turing.db", tmp / "turing-KEY.db"
    secrets = create_study(db, key=key, real=real, synthetic=synthetic,
                           raters=["reader1", "reader2"], mode="pair", trials=4, seed=1,
                           spacing=2.0)["secrets"]  # fmt: skip
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Visual Turing test")
    viewer.window._qt_window.resizeDocks([dock], [400], Qt.Orientation.Horizontal)
    _settle(viewer, qapp, 5)
    widget.db_path.setText(str(db))
    widget.rater_id.setText("reader1")
    widget.secret.setText(secrets["reader1"])
    widget.name.setText("Reader One")
    widget.years.setValue(12)
    widget.start()
    widget.choose(0)
    widget.set_score(widget.confidence, 3)
    widget.set_score(widget.realism[0], 4)
    _settle(viewer, qapp)
    _save(viewer, "napari_turing.png")
    widget.sign_out()
    viewer.window.remove_dock_widget(dock)
    with RatingStore(db, key=key) as store:
        kinds = {v: r["kind"] for v, r in store.volumes("study").items()}
    for rater in ("reader1", "reader2"):
        session = RaterSession(db, rater, secret=secrets[rater], prefetch=False)
        session.sign_in(rater, "radiologist", 10)
        while not session.finished:
            shown = session.store.trial("study", rater, session.position)["shown"]
            fooled = rater == "reader2" and session.position % 2 == 0
            real_panel = "A" if kinds[shown[0]] == "real" else "B"
            choice = ("B" if real_panel == "A" else "A") if fooled else real_panel
            session.submit(Answer(choice, 3, [4, 4] if fooled else [4, 2]))
        session.close()
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Curate synthetic volumes")
    viewer.window._qt_window.resizeDocks([dock], [520], Qt.Orientation.Horizontal)
    widget.db_path.setText(str(db))
    widget.key_field.line.setText(str(key))
    widget.rules.setText("realism>=3,fooled>=0.5")
    widget.curator.setText("Curator")
    widget.load()
    widget.table.selectRow(0)
    _settle(viewer, qapp)
    viewer.reset_view()  # the dock was resized after the volume was shown
    _settle(viewer, qapp)
    _save(viewer, "napari_curation.png")


#: Views main() can regenerate, in order.
VIEWS = ("sample", "browser", "models", "synthesize", "turing")


def main(views: list[str] | None = None) -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    sys.path.insert(0, str(ROOT))  # the test suite's builders: tests/support
    from tests.support import dicom_corpus

    views = views or list(VIEWS)
    unknown = sorted(set(views) - set(VIEWS))
    if unknown:
        print(f"unknown view(s) {', '.join(unknown)}: choose from {', '.join(VIEWS)}")
        return 2
    IMAGES.mkdir(parents=True, exist_ok=True)

    def fresh_viewer():
        viewer = napari.Viewer(show=True)
        viewer.window.resize(1400, 960)
        return viewer

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "sample" in views:
            viewer = fresh_viewer()
            sample_views(viewer, QApplication.instance())
            viewer.close()
        if "browser" in views:
            corpus = dicom_corpus.build_corpus(tmp / "corpus")
            folder = tmp / "export"
            for name in ("axial", "sagittal", "oblique", "gap", "tilt"):
                shutil.copytree(corpus[name].folder, folder / name)
            (folder / "notes.txt").write_text("not an image\n")
            viewer = fresh_viewer()
            browser_view(viewer, QApplication.instance(), folder)
            viewer.close()
        if "models" in views:
            from napari_mrisynth.cohort import simulate_subject
            from napari_mrisynth.io.dicom_write import write_dicom_series

            subject = simulate_subject("sub-demo", "bvFTD", 20261123, 1.0, severity=0.9)
            scan = tmp / "sub-demo-dicom"
            write_dicom_series(subject.t1, scan, description="SIMULATED T1 MPRAGE", series_number=2)
            viewer = fresh_viewer()
            model_views(viewer, QApplication.instance(), scan)
            viewer.close()
        if "synthesize" in views:
            viewer = fresh_viewer()
            synthesize_views(viewer, QApplication.instance())
            viewer.close()
        if "turing" in views:
            viewer = fresh_viewer()
            turing_views(viewer, QApplication.instance(), tmp)
            viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
