"""``mrisynth evaluate downstream``: splits that never leak, a tiny protocol run end to end
on a simulated cohort (generators fitted per unit, every arm trained and scored, MLflow runs
in a real SQLite store), resuming and extending a run, and refusing another design."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import pytest

pytest.importorskip("torch")
pytest.importorskip("lightning")
pytest.importorskip("SimpleITK")

from napari_mrisynth.errors import MrisynthError  # noqa: E402
from napari_mrisynth.synthesis.downstream import (  # noqa: E402
    ARMS,
    Protocol,
    check_cohort,
    repeat_split,
    run_downstream,
    start_folder,
    training_subjects,
)
from napari_mrisynth.training.budget import Budget  # noqa: E402


def _participants(per_class: int):
    return [{"participant_id": f"sub-{i:03d}", "diagnosis": ("control", "bvFTD")[i % 2]}
            for i in range(2 * per_class)]  # fmt: skip


def test_repeat_splits_are_stratified_disjoint_nested_and_seeded():
    rows = _participants(20)
    diagnosis = {r["participant_id"]: r["diagnosis"] for r in rows}
    protocol = Protocol(sizes=(3, 6), test_per_class=5, val_per_class=2)
    first = repeat_split(rows, protocol, 0)
    assert first == repeat_split(list(reversed(rows)), protocol, 0)  # row order is irrelevant
    assert first != repeat_split(rows, protocol, 1)
    assert first != repeat_split(rows, Protocol(seed=1, test_per_class=5, val_per_class=2), 0)
    small, large = training_subjects(first, 3), training_subjects(first, 6)
    assert set(small) < set(large)  # nested
    for ids, per_class in ((first["test"], 5), (first["val"], 2), (small, 3), (large, 6)):
        assert sorted(diagnosis[s] for s in ids) == ["bvFTD"] * per_class + ["control"] * per_class
    assert not set(first["test"]) & (set(first["val"]) | set(large))
    assert not set(first["val"]) & set(large)


def test_a_cohort_too_small_for_the_protocol_is_refused_by_name(tmp_path):
    message = r"participants.tsv: 12 control subjects, the protocol needs 30 \(10 test \+ 4 "
    with pytest.raises(MrisynthError, match=message + r"validation \+ 16 training\)"):
        check_cohort(_participants(12), Protocol(), tmp_path)


def test_protocol_rejects_unknown_tasks_and_arms():
    with pytest.raises(MrisynthError, match="unknown or missing tasks/arms"):
        Protocol(tasks=("registration",))
    with pytest.raises(MrisynthError, match="unknown or missing tasks/arms"):
        Protocol(arms=("real", "mixup"))


def test_a_folder_accepts_more_repeats_but_not_another_design(tmp_path):
    cohort = tmp_path / "cohort"
    cohort.mkdir()
    (cohort / "participants.tsv").write_text("participant_id\tdiagnosis\nsub-1\tcontrol\n")
    out = tmp_path / "out"
    start_folder(out, cohort, Protocol(repeats=2))
    start_folder(out, cohort, Protocol(repeats=5, sizes=(10,)))  # a selection: accepted
    saved = json.loads((out / "protocol.json").read_text())
    assert [s["repeats"] for s in saved["selections"]] == [2, 5]
    with pytest.raises(MrisynthError, match=r"differs in budget, synthetic_per_class"):
        start_folder(out, cohort, Protocol(synthetic_per_class=5, budget=Budget(steps=10)))
    (cohort / "participants.tsv").write_text("participant_id\tdiagnosis\nsub-2\tcontrol\n")
    with pytest.raises(MrisynthError, match="participants_sha256"):
        start_folder(out, cohort, Protocol())


TINY = Protocol(
    tasks=("classification", "segmentation"), sizes=(2,), repeats=2, test_per_class=1,
    val_per_class=1, synthetic_per_class=2, spacing=8.0,
    budget=Budget(steps=4, batch_size=2, val_every=2, patience=1, init_filters=4, patch_size=16,
                  patches_per_volume=1),
    generator={"rounds": 1, "node_mm": 16.0, "registration_mm": 8.0}, resamples=200,
)  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(simulated_cohort, tmp_path_factory, tracking_uri):
    cohort = simulated_cohort(10, 5, 8.0)
    out = tmp_path_factory.mktemp("downstream")
    seen: list[tuple[int, int]] = []
    report = run_downstream(cohort, out, TINY, tracking={"uri": tracking_uri,
                                                         "experiment": "downstream-tests"},
                            progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    return cohort, out, report, seen


@pytest.mark.slow
def test_tiny_protocol_runs_every_arm_and_reports(tiny_run, tracking_uri):
    cohort, out, report, seen = tiny_run
    assert seen[0] == (0, 20) and seen[-1] == (20, 20)
    assert report["complete"] and report["arms_done"] == 20
    assert report["splits"] == {"units": 2, "disjoint": True, "violations": []}
    for task, score in (("classification", "auc"), ("segmentation", "dice")):
        entry = report["results"][task]["2"]
        assert set(entry["arms"]) == set(ARMS)
        for arm in entry["arms"].values():
            assert arm["n"] == 2 and all(0.0 <= v <= 1.0 for v in arm["values"])
        assert entry["score"] == score and len(entry["contrasts"]) == 5
    assert report["primary"]["met"] is None  # the primary size (10) was not asked for
    text = (out / "report.md").read_text()
    assert "### classification, 2 real training subjects per class" in text
    assert (out / "scores.png").read_bytes()[:4] == b"\x89PNG"
    # every arm is an MLflow run in the real SQLite store, plus the summary run
    store = sqlite3.connect(tracking_uri[len("sqlite:///") :])
    names = {row[0] for row in store.execute("select name from runs")}
    assert "classification real+synthetic r01 n02" in names and "downstream report" in names


@pytest.mark.slow
def test_each_unit_generator_learned_from_its_training_subjects_only(tiny_run):
    from napari_mrisynth.models.card import read_card

    cohort, out, _, _ = tiny_run
    for repeat in range(2):
        unit = out / f"r{repeat:02d}-n02"
        splits = json.loads((unit / "splits.json").read_text())
        card = read_card(unit / "generator" / f"anatomy-downstream-r{repeat:02d}-n02-1.0.0")
        assert sorted(card.training["splits"]["train"]) == sorted(splits["train"])
        assert not set(card.training["splits"]["train"]) & set(splits["test"] + splits["val"])
        record = json.loads((unit / "classification" / "real+synthetic.json").read_text())
        real = [s for s in record["subjects"]["train"] if not s.startswith("sub-syn")]
        assert sorted(real) == sorted(splits["train"]) and record["n_synthetic"] == 4
        assert {s["id"] for s in record["test"]["subjects"]} == set(splits["test"])
        only = json.loads((unit / "classification" / "synthetic.json").read_text())
        assert only["n_real"] == 0 and all(s.startswith("sub-syn") for s in
                                           only["subjects"]["train"])  # fmt: skip
        augmented = json.loads((unit / "segmentation" / "real+classical.json").read_text())
        assert augmented["augment"] is True and augmented["fit"]["steps"] <= 4
        # the synthetic heads come with label maps in the cohort's label schema
        labels = sorted((unit / "synthetic").glob("sub-syn*/anat/*_labels.nii.gz"))
        assert len(labels) == 4


@pytest.mark.slow
def test_a_rerun_continues_where_the_run_stopped(tiny_run):
    cohort, out, _, _ = tiny_run
    unit = out / "r01-n02"
    kept = unit / "classification" / "real.json"
    before = kept.stat().st_mtime_ns
    lost = unit / "segmentation" / "synthetic.json"
    lost.unlink()  # as if the run had been killed during this arm
    seen: list[tuple[int, int]] = []
    report = run_downstream(cohort, out, TINY, progress=lambda d, t: seen.append((d, t)))
    assert seen[0] == (19, 20) and seen[-1] == (20, 20)
    assert lost.exists() and kept.stat().st_mtime_ns == before
    assert report["complete"]


@pytest.mark.slow
def test_cli_report_only_and_json(tiny_run, capsys):
    from napari_mrisynth.cli import main

    _, out, _, _ = tiny_run
    assert main(["evaluate", "downstream", "--cohort", "unused", "--out", str(out),
                 "--report-only", "--json", "-"]) == 0  # fmt: skip
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["arms_done"] == 20 and "| synthetic − real |" in captured.err
    assert main(["evaluate", "downstream", "--cohort", "x", "--out", str(out / "none"),
                 "--report-only"]) == 1  # fmt: skip
    assert "no downstream run here" in capsys.readouterr().err


@pytest.mark.slow
def test_the_report_covers_every_run_of_the_folder(tiny_run):
    """A later run that asks for less (here one task, one repeat) adds nothing to do, and
    the report still holds what the earlier runs measured."""
    cohort, out, _, _ = tiny_run
    fewer = replace(TINY, tasks=("classification",), repeats=1)
    report = run_downstream(cohort, out, fewer)
    assert report["arms_done"] == report["arms_expected"] == 20 and report["complete"]
    assert set(report["results"]) == {"classification", "segmentation"}
    assert report["results"]["segmentation"]["2"]["arms"]["real"]["n"] == 2
    assert len(report["selections"]) == 2 and report["protocol"]["repeats"] == 1
    assert "### segmentation, 2 real training subjects per class" in (out / "report.md").read_text()


@pytest.mark.slow
def test_curated_arms_train_only_on_heads_the_audit_keeps(simulated_cohort, tmp_path):
    from dataclasses import replace

    cohort = simulated_cohort(10, 5, 8.0)
    protocol = replace(TINY, tasks=("classification",), arms=("synthetic",), repeats=1,
                       curate=True)  # fmt: skip
    report = run_downstream(cohort, tmp_path, protocol)
    unit = tmp_path / "r00-n02"
    curation = json.loads((unit / "curation.json").read_text())
    made = sorted(p.name for p in (unit / "synthetic").glob("sub-syn*"))
    assert sorted(curation["kept"] + curation["flagged"]) == made
    assert 0 < curation["max_similarity"] <= 1 and curation["threshold"] > 0
    record = json.loads((unit / "classification" / "synthetic.json").read_text())
    assert sorted(record["subjects"]["train"]) == sorted(curation["kept"])
    assert report["arms_done"] == 1


def test_a_resumed_runs_progress_bar_starts_at_the_work_already_done(capsys):
    from napari_mrisynth.cli._options import ProgressBar

    with ProgressBar("downstream", unit="arm") as progress:
        progress(50, 150)  # a run resumed with 50 arms done
        progress(51, 150)
        bar = progress.bar
        assert (bar.initial, bar.n, bar.total) == (50, 51, 150)
    assert "51/150" in capsys.readouterr().err


@pytest.mark.slow
def test_the_disjointness_check_reads_what_each_model_was_trained_on(tiny_run, tmp_path):
    import shutil

    from napari_mrisynth.models.card import read_card, write_card
    from napari_mrisynth.synthesis.downstream import disjointness

    _, out, _, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    assert disjointness(copy)["disjoint"]
    splits = json.loads((copy / "r00-n02" / "splits.json").read_text())
    leaked = splits["test"][0]
    # a generator that was (somehow) fitted on a test subject is caught from its own card
    folder = copy / "r00-n02" / "generator" / "anatomy-downstream-r00-n02-1.0.0"
    card = read_card(folder)
    training = {**card.training, "splits": {"train": card.training["splits"]["train"] + [leaked]}}
    write_card(card.replace(training=training), folder)
    assert disjointness(copy) == {"units": 2, "disjoint": False, "violations": ["r00-n02"]}
    # and so is an arm whose network saw a test subject
    shutil.rmtree(copy)
    shutil.copytree(out, copy)
    arm = copy / "r01-n02" / "classification" / "real.json"
    record = json.loads(arm.read_text())
    record["subjects"]["train"].append(json.loads((copy / "r01-n02" / "splits.json")
                                                  .read_text())["test"][0])  # fmt: skip
    arm.write_text(json.dumps(record))
    assert disjointness(copy)["violations"] == ["r01-n02"]
