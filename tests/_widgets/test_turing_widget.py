"""Visual Turing test end to end: a study rated by scripted raters in a real napari viewer,
the blinding-leak probe, pause and resume, curation, and the CLI from create to export.

The real scans are a simulated 4 mm cohort; the "synthetic" volumes are other simulated
subjects written the way a generator writes its output
(``tests.support.study_inputs``), so real and
synthetic differ only in their origin. GUI tests need Xvfb; they are marked ``gui``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from napari_mrisynth.turing.design import create_study
from napari_mrisynth.turing.session import Answer, RaterSession
from napari_mrisynth.turing.store import RatingStore
from tests.support import study_inputs

PLUGIN = "napari-mrisynth"
TURING = "Visual Turing test"
CURATE = "Curate synthetic volumes"
NEUTRAL = re.compile(r"^Case \d+( · [AB])?$")
TRIALS = 6
#: Each study's rater secrets, by study file, as create_study issued them.
SECRETS: dict[Path, dict[str, str]] = {}


def _key(db: Path) -> Path:
    """The study's answer key, which the organiser keeps beside the study file here."""
    return db.with_name(f"{db.stem}-KEY.db")


def _create(db: Path, **options) -> Path:
    SECRETS[db] = create_study(db, key=_key(db), **options)["secrets"]
    return db


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return study_inputs.build_study_inputs(tmp_path_factory.mktemp("turing_inputs"))


@pytest.fixture
def pair_study(inputs, tmp_path):
    real, synthetic = inputs
    return _create(tmp_path / "ratings.db", real=real, synthetic=synthetic,
                   raters=["ann", "ben"], mode="pair", trials=TRIALS, seed=11,
                   spacing=4.0)  # fmt: skip


@pytest.fixture
def viewer(make_napari_viewer):
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 900)
    return viewer


def _truth(db: Path) -> dict[str, str]:
    with RatingStore(db, key=_key(db)) as store:
        return {v: row["kind"] for v, row in store.volumes("study").items()}


def _start(viewer, qtbot, db, rater, years=12.0):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, TURING)
    qtbot.wait(10)  # the dock is laid out before the first view is fitted
    widget.db_path.setText(str(db))
    widget.rater_id.setText(rater)
    widget.secret.setText(SECRETS[db][rater])
    widget.name.setText(f"Dr {rater.title()}")
    widget.years.setValue(years)
    assert widget.start(), widget.last_error
    assert widget.secret.text() == "", "the secret is not kept in the widget"
    return widget


def _exposed(viewer, layer, position: int, side: int) -> dict:
    """Everything the viewer shows about a layer that could carry a hint."""
    data = np.asarray(layer.data)
    return {
        "name": layer.name, "metadata": dict(layer.metadata),
        "source": (layer.source.path, layer.source.reader_plugin), "dtype": str(data.dtype),
        "shape": data.shape, "scale": tuple(layer.scale), "translate": tuple(layer.translate),
        "contrast": tuple(layer.contrast_limits), "colormap": layer.colormap.name,
        "stats": [float(data.mean()), float(data.std()),
                  *np.percentile(data, [1, 5, 25, 50, 75, 95, 99]).tolist()],
        "histogram": np.bincount(data.ravel(), minlength=256),
        "position": position, "side": side, "title": viewer.title,
    }  # fmt: skip


# -- a whole study in a real viewer ---------------------------------------------------------
@pytest.mark.gui
def test_scripted_raters_rate_a_whole_pair_study_in_napari(viewer, qtbot, pair_study):
    from napari.layers import Image

    db = pair_study
    truth = _truth(db)
    sample = viewer.add_image(np.zeros((4, 4, 4), np.float32), name="sub-007_T1w.nii.gz")
    scripted = {}
    exposed = []
    for rater, correct_every in (("ann", 1), ("ben", 2)):
        widget = _start(viewer, qtbot, db, rater)
        assert not sample.visible, "other layers are hidden during the study"
        session = widget.session
        for step in range(TRIALS):
            shown = session.store.trial("study", rater, session.position)["shown"]
            layers = [layer for layer in viewer.layers if layer.visible]
            assert [layer.name for layer in layers] == [f"Case {step + 1} · A",
                                                        f"Case {step + 1} · B"]  # fmt: skip
            assert all(isinstance(layer, Image) for layer in layers)
            assert widget.progress.format().startswith(f"Trial {step + 1} of {TRIALS}")
            grid = viewer.canvas.grid
            assert grid.enabled and tuple(grid.shape) == (1, 2) and grid.stride == 1
            for side, layer in enumerate(layers):
                exposed.append((_exposed(viewer, layer, step, side), truth[shown[side]]))
            # linked windowing: changing A's contrast changes B's
            layers[0].contrast_limits = (10.0, 200.0)
            assert tuple(layers[1].contrast_limits) == (10.0, 200.0)
            real_side = 0 if truth[shown[0]] == "real" else 1
            pick = real_side if step % correct_every == 0 else 1 - real_side
            realism = [int(1 + (step + k) % 5) for k in range(2)]
            widget.choose(pick)
            widget.set_score(widget.confidence, 1 + step % 5)
            widget.set_score(widget.realism[0], realism[0])
            assert not widget.submit(), "submitting without every answer is refused"
            assert "realism" in widget.status.text()
            widget.set_score(widget.realism[1], realism[1])
            viewer.dims.set_current_step(0, 3)
            assert widget.submit(), widget.last_error
            scripted[(rater, step)] = ("AB"[pick], 1 + step % 5, realism, pick == real_side)
        assert widget.session.finished
        assert "Thank you" in widget.question.text()
        assert sample.visible, "the viewer is given back as it was"
        assert not any(layer.name.startswith("Case") for layer in viewer.layers)
        viewer.window.remove_dock_widget(widget)

    # every answer is in the database, as given
    with RatingStore(db, key=_key(db)) as store:
        rows = store.ratings("study")
        assert len(rows) == 2 * TRIALS
        for row in rows:
            choice, confidence, realism, correct = scripted[(row["rater_id"], row["position"])]
            assert (row["choice"], row["confidence"], row["realism"]) == (choice, confidence,
                                                                          realism)  # fmt: skip
            assert (row["called_synthetic"] == row["synthetic"]) == correct
            assert row["viewer_state"]["current_step"][0] == 3
            assert row["viewer_state"]["layers"][0]["contrast_limits"] == [10.0, 200.0]
            assert row["seconds"] >= 0
        assert store.rater("study", "ben").years == 12.0

    # the blinding-leak probe: nothing the viewer exposes tells real from synthetic
    _probe(exposed)


def _probe(exposed: list[tuple[dict, str]]) -> None:
    labels = np.array([kind == "synthetic" for _, kind in exposed])
    for key in ("metadata", "source", "dtype", "shape", "scale", "translate", "contrast",
                "colormap", "title"):  # fmt: skip
        real = {repr(e[key]) for e, kind in exposed if kind == "real"}
        synth = {repr(e[key]) for e, kind in exposed if kind == "synthetic"}
        assert real == synth and len(real) == 1, f"{key} differs: {real} vs {synth}"
    for e, _ in exposed:
        assert NEUTRAL.match(e["name"]), e["name"]
        assert e["metadata"] == {} and e["source"] == (None, None)
    # presentation order and side: balanced by design
    for key in ("side", "position"):
        values = np.array([e[key] for e, _ in exposed])
        table = [[int(np.sum((values == v) & labels)), int(np.sum((values == v) & ~labels))]
                 for v in np.unique(values)]  # fmt: skip
        assert all(a == b for a, b in table), f"{key} is not balanced: {table}"
    # intensity statistics: a leave-one-out nearest-centroid probe stays at chance
    features = np.array([e["stats"] for e, _ in exposed])
    spread = features.std(axis=0)
    # identical histograms give means and spreads equal up to float summation order (1e-13):
    # standardising that rounding noise would make the probe a coin toss that fails 5 % of runs
    real_spread = spread > 1e-9 * (1.0 + np.abs(features).max(axis=0))
    features = np.where(real_spread, (features - features.mean(axis=0)) / np.where(
        real_spread, spread, 1.0), 0.0)  # fmt: skip
    hits = 0
    for i in range(len(features)):
        keep = np.arange(len(features)) != i
        centroid = {c: features[keep & (labels == c)].mean(axis=0) for c in (True, False)}
        guess = min(centroid, key=lambda c: np.linalg.norm(features[i] - centroid[c]))
        hits += guess == labels[i]
    p = stats.binomtest(hits, len(features), 0.5, alternative="greater").pvalue
    assert p > 0.05, f"intensity statistics give it away: {hits}/{len(features)} (p={p:.3g})"
    # exact histogram matching: every volume shown has the same 256-bin histogram
    histograms = np.array([e["histogram"] for e, _ in exposed])
    assert (histograms == histograms[0]).all()
    means = {kind: np.mean([e["stats"][:2] for e, k in exposed if k == kind], axis=0)
             for kind in ("real", "synthetic")}  # fmt: skip
    assert np.allclose(means["real"], means["synthetic"], atol=0.01), means


@pytest.mark.gui
def test_keys_pause_and_resume_after_a_crash(viewer, qtbot, pair_study):
    from qtpy.QtCore import Qt

    db = pair_study
    widget = _start(viewer, qtbot, db, "ann")
    window = widget.window()
    window.activateWindow()
    qtbot.waitUntil(window.isActiveWindow, timeout=3000)
    qtbot.keyClick(window, Qt.Key.Key_B)
    qtbot.keyClick(window, Qt.Key.Key_4)
    qtbot.keyClick(window, Qt.Key.Key_2, Qt.KeyboardModifier.ControlModifier)
    qtbot.keyClick(window, Qt.Key.Key_5, Qt.KeyboardModifier.AltModifier)
    assert widget._state() == {"choice": "B", "confidence": 4, "realism": [2, 5], "comment": ""}
    # typing a comment does not trigger the keys
    widget.comment.setFocus()
    qtbot.keyClicks(widget.comment, "a 5 p")
    assert widget.comment.text() == "a 5 p"
    assert widget._state()["choice"] == "B" and widget._state()["confidence"] == 4
    assert not widget.session.paused
    widget.comment.clear()
    window.setFocus()
    # pause: volumes hidden, answers locked, the clock stops
    qtbot.keyClick(window, Qt.Key.Key_P)
    assert widget.session.paused and not widget.trial_box.isEnabled()
    assert not any(layer.visible for layer in viewer.layers)
    frozen = widget.session.seconds_on_trial()
    qtbot.wait(300)
    assert widget.session.seconds_on_trial() == frozen
    qtbot.keyClick(window, Qt.Key.Key_P)
    assert not widget.session.paused and all(layer.visible for layer in viewer.layers)
    qtbot.wait(200)
    assert widget.session.seconds_on_trial() > frozen
    # "crash": the widget and its session go away without a submit
    draft_seconds = widget.session.seconds_on_trial()
    widget._changed()
    position = widget.session.position
    widget.session = None  # nothing is flushed on the way out
    viewer.window.remove_dock_widget(widget)
    for layer in list(viewer.layers):
        viewer.layers.remove(layer)
    resumed = _start(viewer, qtbot, db, "ann")
    assert resumed.session.position == position
    assert resumed._state() == {"choice": "B", "confidence": 4, "realism": [2, 5],
                                "comment": ""}  # fmt: skip
    assert resumed.session.seconds_on_trial() >= draft_seconds - 0.05
    qtbot.keyClick(resumed.window(), Qt.Key.Key_Return)
    with RatingStore(db, key=_key(db)) as store:
        (row,) = store.ratings("study")
    assert (row["choice"], row["confidence"], row["realism"]) == ("B", 4, [2, 5])
    assert row["seconds"] >= draft_seconds - 0.05
    # signing out keeps the answers so far and gives the viewer back
    resumed.choose(0)
    resumed.sign_out()
    assert len(viewer.layers) == 0 and not viewer.canvas.grid.enabled
    with RatingStore(db) as store:
        assert store.draft("study", "ann")["state"]["choice"] == "A"


@pytest.mark.gui
def test_single_mode_shows_one_neutral_volume(viewer, qtbot, inputs, tmp_path):
    real, synthetic = inputs
    db = _create(tmp_path / "single.db", real=real, synthetic=synthetic, raters=["cat"],
                 mode="single", trials=4, seed=2, spacing=4.0)  # fmt: skip
    truth = _truth(db)
    widget = _start(viewer, qtbot, db, "cat")
    assert not viewer.canvas.grid.enabled
    assert widget.realism[1].isHidden()
    answers = []
    while not widget.session.finished:
        (layer,) = [layer for layer in viewer.layers if layer.visible]
        assert NEUTRAL.match(layer.name) and " · " not in layer.name
        shown = widget.session.store.trial("study", "cat", widget.session.position)["shown"]
        answers.append(truth[shown[0]])
        widget.choose(1)  # "synthetic" every time
        widget.set_score(widget.confidence, 3)
        widget.set_score(widget.realism[0], 2)
        assert widget.submit(), widget.last_error
    assert sorted(answers) == ["real", "real", "synthetic", "synthetic"]
    with RatingStore(db, key=_key(db)) as store:
        rows = store.ratings("study")
    assert all(r["called_synthetic"] == [True] and r["choice"] == "synthetic" for r in rows)


@pytest.mark.gui
def test_the_widget_refuses_another_raters_secret_and_records_it(viewer, qtbot, pair_study):
    from qtpy.QtWidgets import QLineEdit

    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, TURING)
    assert widget.secret.echoMode() == QLineEdit.EchoMode.Password
    widget.db_path.setText(str(pair_study))
    widget.rater_id.setText("ann")
    widget.secret.setText(SECRETS[pair_study]["ben"])  # ben's secret, typed as ann
    widget.name.setText("Dr Ann")
    assert not widget.start()
    assert "do not match" in widget.last_error and widget.session is None
    assert widget.sign_in_box.isEnabled() and not widget.trial_box.isEnabled()
    assert not [layer for layer in viewer.layers if layer.name.startswith("Case")]
    widget.secret.setText(SECRETS[pair_study]["ann"])
    assert widget.start(), widget.last_error
    assert widget.session.rater_id == "ann"
    with RatingStore(pair_study) as store:
        attempts = [(a["rater_id"], a["accepted"]) for a in store.sign_in_attempts("study")]
    assert attempts == [("ann", False), ("ann", True)]
    widget.sign_out()


def test_the_next_trial_is_read_in_the_background(pair_study):
    session = RaterSession(pair_study, "ben", secret=SECRETS[pair_study]["ben"])
    first = session.presentation()
    assert session._pending, "the next trial is being read while this one is rated"
    session.submit(Answer("A", 3, [3, 3]))
    second = session.presentation()
    assert second.position == first.position + 1
    assert second.panels[0].data.dtype == np.uint8
    assert not second.panels[0].data.flags.writeable
    session.close()


# -- curation -------------------------------------------------------------------------------
def _rate_all(db: Path, raters: dict[str, float], seed: int = 0) -> None:
    truth = _truth(db)
    rng = np.random.default_rng(seed)
    for rater, skill in raters.items():
        session = RaterSession(db, rater, secret=SECRETS[db][rater], prefetch=False)
        session.sign_in(rater.title(), "radiologist", 8)
        while not session.finished:
            shown = session.store.trial("study", rater, session.position)["shown"]
            real = "A" if truth[shown[0]] == "real" else "B"
            choice = real if rng.random() < skill else ("B" if real == "A" else "A")
            realism = [int(v) for v in rng.integers(2, 6, size=2)]
            session.submit(Answer(choice, int(rng.integers(1, 6)), realism))
        session.close()


@pytest.mark.gui
def test_curation_widget_ranks_shows_and_records_decisions(viewer, pair_study):
    db = pair_study
    _rate_all(db, {"ann": 0.8, "ben": 0.5})
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, CURATE)
    widget.db_path.setText(str(db))
    widget.rules.setText("realism>=3,fooled>=0.5")
    assert not widget.load(), "the ranking needs the key"
    assert "--key" in widget.last_error or "key" in widget.last_error
    widget.key_field.line.setText(str(_key(db)))
    assert widget.load(), widget.last_error
    assert widget.table.rowCount() == TRIALS
    pre = [c.preselected for c in widget.candidates]
    assert pre == sorted(pre, reverse=True), "preselected volumes come first"
    widget.table.selectRow(0)
    first = widget.candidates[0]
    (layer,) = viewer.layers
    assert layer.name == f"{first.volume_id} (synthetic)"
    assert layer.data.shape == (48, 56, 48) and tuple(layer.scale) == (4.0, 4.0, 4.0)
    widget.curator.setText("Dr Cur")
    assert not widget.decide("rejected"), "a rejection needs a reason"
    assert "reason" in widget.last_error
    widget.reason.setText("ventricles look painted")
    assert widget.decide("rejected")
    failing = [row for row, c in enumerate(widget.candidates) if not c.preselected]
    passing = [row for row, c in enumerate(widget.candidates) if c.preselected]
    widget.table.selectRow(passing[0] if passing[0] != 0 else passing[1])
    second = widget.selected().volume_id
    assert widget.decide("approved")
    if failing:  # approving against the rules needs the override and a reason
        widget.table.selectRow(failing[-1])
        third = widget.selected().volume_id
        widget.reason.clear()
        assert not widget.decide("approved") and "override" in widget.last_error
        widget.override.setChecked(True)
        assert not widget.decide("approved") and "reason" in widget.last_error
        widget.reason.setText("the only example of this anatomy")
        assert widget.decide("approved"), widget.last_error
        assert not widget.override.isChecked(), "the override is per decision"
    with RatingStore(db, key=_key(db)) as store:
        decisions = store.decisions("study")
    if failing:
        assert decisions[third]["override"] and decisions[third]["failures"]
    assert decisions[first.volume_id]["decision"] == "rejected"
    assert decisions[first.volume_id]["reason"] == "ventricles look painted"
    assert decisions[second]["decision"] == "approved"
    assert decisions[second]["curator"] == "Dr Cur"
    assert widget.apply_rules()
    with RatingStore(db, key=_key(db)) as store:
        assert len(store.decisions("study")) == TRIALS


# -- the command line, from create to export ------------------------------------------------
def _mrisynth(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "napari_mrisynth.cli", *args], cwd=cwd,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result


def test_cli_create_rate_report_curate_export(inputs, tmp_path):
    real, synthetic = inputs
    run = _mrisynth("study", "create", "--real", str(real), "--synthetic", str(synthetic),
                    "--raters", "ann,ben,cat", "--mode", "pair", "--trials", str(TRIALS),
                    "--seed", "5", "--db", "st.db", "--key", "st-KEY.db",
                    "--spacing", "4", cwd=tmp_path)  # fmt: skip
    assert "pair mode, 6 trials for each of 3 rater(s)" in run.stdout
    db = tmp_path / "st.db"
    SECRETS[db] = dict(re.findall(r"^ {4}(ann|ben|cat) +(\S{16})$", run.stdout, re.M))
    assert sorted(SECRETS[db]) == ["ann", "ben", "cat"], run.stdout
    key = ("--key", "st-KEY.db")
    _rate_all(db, {"ann": 1.0, "ben": 0.5, "cat": 0.5})
    sealed = subprocess.run([sys.executable, "-m", "napari_mrisynth.cli", "study", "report",
                             "--db", "st.db", "--out", "report"], cwd=tmp_path,
                            capture_output=True, text=True)  # fmt: skip
    assert sealed.returncode == 2 and "--key" in sealed.stderr  # the truth needs the key
    status = json.loads(_mrisynth("study", "status", "--db", "st.db", "--json",
                                  cwd=tmp_path).stdout)  # fmt: skip
    assert status["rated"] == status["total"] == 3 * TRIALS
    report = _mrisynth("study", "report", "--db", "st.db", *key, "--out", "report", "--json",
                       cwd=tmp_path)  # fmt: skip
    statistics = json.loads(report.stdout)
    assert statistics["raters"]["ann"]["accuracy"]["value"] == 1.0
    assert statistics["agreement"]["method"] == "fleiss"
    assert {p.name for p in (tmp_path / "report").iterdir()} >= {
        "report.html", "report.md", "statistics.json", "accuracy_by_rater.png"}  # fmt: skip
    _mrisynth("study", "csv", "--db", "st.db", *key, "--out", "ratings.csv", cwd=tmp_path)
    lines = (tmp_path / "ratings.csv").read_text().splitlines()
    assert len(lines) == 1 + 3 * TRIALS and lines[0].startswith("study_id,rater_id")
    audit = _mrisynth("curate", "audit", "--db", "st.db", *key, "--train", str(real),
                      cwd=tmp_path)  # fmt: skip
    assert audit.stdout.count("not a copy") == TRIALS
    listing = json.loads(_mrisynth("curate", "list", "--db", "st.db", *key, "--rules", "none",
                                   "--json", cwd=tmp_path).stdout)["volumes"]  # fmt: skip
    assert len(listing) == TRIALS and all(v["preselected"] for v in listing)
    keep = [v["volume_id"] for v in listing[:2]]
    _mrisynth("curate", "approve", *keep, "--db", "st.db", *key, "--rules", "none",
              "--curator", "Dr Cur", cwd=tmp_path)  # fmt: skip
    # an annotator corrected the first approved volume's mask after the rating
    import nibabel as nib

    source = Path(listing[0]["source"])
    image = nib.load(source)
    mask = (np.asarray(image.dataobj) > 0.3).astype(np.uint8)
    (tmp_path / "masks").mkdir()
    stem = source.name[: -len(".nii.gz")]
    nib.save(nib.Nifti1Image(mask, image.affine), tmp_path / "masks" / f"{stem}_labels.nii.gz")
    export = _mrisynth("export", "--db", "st.db", *key, "--out", "approved", "--masks",
                       "masks", "--json", cwd=tmp_path)  # fmt: skip
    files = json.loads(export.stdout)["files"]
    assert "bids/sub-synth002/anat/sub-synth002_T1w.nii.gz" in files
    assert not any("synth003" in f for f in files)
    masks = [f for f in files if f.endswith("_dseg.nii.gz")]
    assert len(masks) == 1, files
    exported = nib.load(tmp_path / "approved" / masks[0])
    assert np.array_equal(np.asarray(exported.dataobj), mask)
    manifest = json.loads((tmp_path / "approved" / "manifest.json").read_text())
    exported = sorted(v["volume_id"] for v in manifest["volumes"])
    assert exported == sorted(keep)
    failed = subprocess.run(
        [sys.executable, "-m", "napari_mrisynth.cli", "export", "--db", "st.db", *key, "--out",
         "approved"], cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert failed.returncode == 1 and "approved" in failed.stderr


def test_candidates_carry_their_generators_test_metrics():
    from napari_mrisynth.turing.curation import _generator_metrics

    bundled = _generator_metrics({"generator": {"id": "ldm-bvftd-demo", "version": "2.0.0"}})
    assert bundled["fid"] == pytest.approx(73.6, abs=0.05)
    assert _generator_metrics({"generator": {"id": "no-such-model", "version": "1.0.0"}}) == {}
    assert _generator_metrics({}) == {}


GUI_RATER = """
import napari
from qtpy.QtWidgets import QApplication
viewer = napari.Viewer(show=True)
_, widget = viewer.window.add_plugin_dock_widget("napari-mrisynth", "Visual Turing test")
QApplication.processEvents()
widget.db_path.setText({db!r})
widget.rater_id.setText("ben")
widget.secret.setText({secret!r})
widget.name.setText("Dr Ben")
widget.years.setValue(3)
assert widget.start(), widget.last_error
for _ in range(2):
    widget.choose(0)
    widget.set_score(widget.confidence, 5)
    widget.set_score(widget.realism[0], 4)
    widget.set_score(widget.realism[1], 1)
    assert widget.submit(), widget.last_error
widget.choose(1)
widget.set_score(widget.confidence, 2)
widget.set_score(widget.realism[1], 3)
QApplication.processEvents()
print("READY", flush=True)
napari.run()
"""


@pytest.mark.gui
def test_a_napari_rater_killed_mid_trial_resumes_there(viewer, qtbot, pair_study):
    import os
    import signal

    from tests.support.study_inputs import read_line, run_python

    proc = run_python(GUI_RATER.format(db=str(pair_study), secret=SECRETS[pair_study]["ben"]))
    try:
        line = read_line(proc, timeout=180).strip()
        assert line == "READY", proc.stderr.read() if proc.poll() is not None else line
        os.kill(proc.pid, signal.SIGKILL)  # no chance to flush or close anything
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    resumed = _start(viewer, qtbot, pair_study, "ben", years=3.0)
    assert resumed.session.position == 2 and resumed.session.done == 2
    assert resumed._state() == {"choice": "B", "confidence": 2, "realism": [None, 3],
                                "comment": ""}  # fmt: skip
    assert resumed.progress.format().startswith(f"Trial 3 of {TRIALS}")
    with RatingStore(pair_study, key=_key(pair_study)) as store:
        rows = store.ratings("study")
    assert [(r["position"], r["choice"], r["confidence"], r["realism"]) for r in rows] == [
        (0, "A", 5, [4, 1]), (1, "A", 5, [4, 1])]  # fmt: skip
