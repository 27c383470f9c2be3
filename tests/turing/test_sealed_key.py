"""The sealed answer key and rater accounts, on real SQLite files.

What a rater opens (the study file, with the ``sqlite3`` module as anyone could) must hold
no kind, source or provenance, in any table or in any byte of the file; the key is a file of
its own that reports, curation and export open explicitly; raters sign in with their own
secret; a study file written before the key was sealed (schema 1, frozen in
``tests.support.schema_v1``) is sealed by ``seal``; approving a volume that fails the rules
needs an override with a reason, which the export manifest carries.
"""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa

from napari_mrisynth.turing import schema
from napari_mrisynth.turing.accounts import hash_secret, new_secret, verify_secret
from napari_mrisynth.turing.curation import (
    CurationRules,
    apply_rules,
    approved_volumes,
    candidates,
    decide,
)
from napari_mrisynth.turing.design import create_study, reissue_secret
from napari_mrisynth.turing.key import seal
from napari_mrisynth.turing.results import rated_trials, ratings_csv, study_report
from napari_mrisynth.turing.session import RaterSession
from napari_mrisynth.turing.statistics import study_statistics
from napari_mrisynth.turing.store import RatingStore, StudyError
from tests.support import schema_v1
from tests.support.study_inputs import WEIGHTS_SHA

TRIALS = 4


def _rows(db: Path, table: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(f"SELECT * FROM {table}").fetchall()
    finally:
        con.close()


def _file_bytes(db: Path) -> bytes:
    """The study file and its WAL and shared-memory files, as someone copying them gets."""
    return b"".join(
        p.read_bytes()
        for p in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm"))
        if p.exists()
    )


def _answers(key_rows: dict, store: RatingStore, rater: str, right: bool) -> None:
    """Rate every trial of ``rater`` (every answer right, or every one wrong); realism 5 on
    even positions, 2 on odd ones."""
    for position in range(store.trial_count("study", rater)):
        shown = store.trial("study", rater, position)["shown"]
        synthetic = [key_rows[v]["kind"] == "synthetic" for v in shown]
        called = synthetic if right else [not s for s in synthetic]
        realism = [2, 2] if position % 2 else [5, 5]
        store.add_rating("study", rater, position, choice="AB"[called.index(False)],
                         called_synthetic=called, confidence=4, realism=realism, comment="",
                         seconds=3.0, viewer_state={})  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tests.support.study_inputs import build_study_inputs

    return build_study_inputs(tmp_path_factory.mktemp("sealed-inputs"))


@pytest.fixture(scope="module")
def made(inputs, tmp_path_factory):
    """A pair study of 4 trials for raters r1 (every answer right) and r2 (every answer
    wrong), with its key beside it."""
    real, synthetic = inputs
    root = tmp_path_factory.mktemp("sealed-study")
    db, key = root / "study.db", root / "organiser" / "study-KEY.db"
    study = create_study(db, key=key, real=real, synthetic=synthetic, raters=["r1", "r2"],
                         trials=TRIALS, seed=3, spacing=4.0)  # fmt: skip
    with RatingStore(db, key=key) as store:
        truth = store.volumes("study")
        _answers(truth, store, "r1", right=True)
        _answers(truth, store, "r2", right=False)
    return {"db": db, "key": key, "secrets": study["secrets"], "truth": truth}


def _copy(made: dict, folder: Path) -> tuple[Path, Path]:
    """A private copy of the study file and its key."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("db", "key"):
        source, target = sqlite3.connect(made[name]), sqlite3.connect(folder / made[name].name)
        source.backup(target)
        source.close()
        target.close()
    return folder / made["db"].name, folder / made["key"].name


def _secrets_of(truth: dict) -> list[str]:
    """What a rater must not find: sources (paths and names), checksums, generator ids."""
    out = [WEIGHTS_SHA, "ldm-test", "LatentDiffusion", "noise_seed"]
    for row in truth.values():
        source = Path(row["source"])
        out += [str(source), source.name, source.name.split(".")[0], row["source_sha256"]]
    return out


def _assert_sealed(db: Path, truth: dict) -> None:
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        assert not [t for t in tables if t.startswith("key_") or t in ("audits", "decisions")]
        cells, per_volume = [], []
        for table in tables:
            for row in con.execute(f"SELECT * FROM {table}"):
                cells += [str(v) for v in row if v is not None]
                if table != "studies":  # the grid's description speaks of "the real scans"
                    per_volume += [str(v) for v in row if v is not None]
        volume_columns = [r[1] for r in con.execute("PRAGMA table_info(volumes)")]
        items = [json.loads(v) for (v,) in con.execute("SELECT volumes FROM items")]
    finally:
        con.close()
    assert volume_columns == ["study_id", "volume_id", "prepared_sha256"]
    hidden = _secrets_of(truth)
    assert not [c for c in cells for s in hidden if s in c]
    assert not [c for c in per_volume if re.search(r"\b(real|synthetic|bvFTD|control)\b", c)]
    assert all(vols == sorted(vols) for vols in items)  # never the real one first
    raw = _file_bytes(db)
    assert not [s for s in hidden if s.encode() in raw], "a source or provenance in the bytes"
    # not even the key's column names: no page, current or freed, of a key table is left
    assert b"kind" not in raw and b"provenance" not in raw and b"source_sha256" not in raw


# -- the sealed key -------------------------------------------------------------------------
def test_a_raters_study_file_holds_no_kind_source_or_provenance(made):
    _assert_sealed(made["db"], made["truth"])
    kinds = sorted(row["kind"] for row in made["truth"].values())
    assert kinds == ["real"] * TRIALS + ["synthetic"] * TRIALS
    key_cells = json.dumps(_rows(made["key"], "key_volumes"))
    assert all(Path(row["source"]).name in key_cells for row in made["truth"].values())
    assert WEIGHTS_SHA in key_cells  # the provenance went to the key


def test_the_truth_needs_the_key(made):
    with RatingStore(made["db"]) as store:
        for ask in (lambda: store.volumes("study"), lambda: store.ratings("study"),
                    lambda: store.decisions("study")):  # fmt: skip
            with pytest.raises(StudyError, match=r"sealed away.*--key"):
                ask()
        assert store.volume_ids("study") == sorted(made["truth"])  # neutral ids are fine
    for call in (lambda: rated_trials(made["db"]), lambda: candidates(made["db"]),
                 lambda: study_report(made["db"], made["db"].parent / "r"),
                 lambda: approved_volumes(made["db"])):  # fmt: skip
        with pytest.raises(StudyError, match="sealed away"):
            call()
    assert len(rated_trials(made["db"], key=made["key"])) == 2 * TRIALS


def test_a_key_that_is_not_the_studys_is_refused(made, inputs, tmp_path):
    real, synthetic = inputs
    create_study(tmp_path / "other.db", key=tmp_path / "other-KEY.db", real=real,
                 synthetic=synthetic, raters=["r1"], trials=TRIALS, seed=4,
                 spacing=4.0)  # fmt: skip
    with pytest.raises(StudyError, match="not the key of study 'study'"):
        rated_trials(made["db"], key=tmp_path / "other-KEY.db")
    with pytest.raises(StudyError, match="a file of its own"):
        rated_trials(made["db"], key=made["db"])
    with pytest.raises(StudyError, match="not a study key"):
        rated_trials(made["db"], key=tmp_path / "other.db")  # a study file is no key
    with pytest.raises(StudyError, match="a file of its own"):
        create_study(tmp_path / "same.db", key=tmp_path / "same.db", real=real,
                     synthetic=synthetic, raters=["r1"], trials=2, spacing=4.0)  # fmt: skip
    with pytest.raises(StudyError, match="no such study key file"):
        rated_trials(made["db"], key=tmp_path / "typo-KEY.db")
    assert not (tmp_path / "typo-KEY.db").exists()


# -- rater accounts -------------------------------------------------------------------------
def test_scrypt_secrets_against_rfc_7914():
    # RFC 7914 section 12, second vector: P="password", S="NaCl", N=1024, r=8, p=16.
    expected = bytes.fromhex(
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
        "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
    )
    import base64

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    stored = f"scrypt$1024$8$16${b64(b'NaCl')}${b64(expected)}"
    assert verify_secret("password", stored)
    assert not verify_secret("Password", stored)
    assert not verify_secret("", stored) and not verify_secret("password", None)
    assert not verify_secret("password", "md5$abc")
    secret = new_secret()
    assert len(secret) == 16 and secret != new_secret()
    stored = hash_secret(secret)
    assert stored.startswith("scrypt$16384$8$1$") and secret not in stored
    assert stored != hash_secret(secret)  # a fresh salt every time
    assert verify_secret(secret, stored) and not verify_secret(secret + "x", stored)


def test_sign_in_needs_the_raters_own_secret_and_every_attempt_is_recorded(made, tmp_path):
    db, key = _copy(made, tmp_path)
    r1, r2 = made["secrets"]["r1"], made["secrets"]["r2"]
    refused = r"rater id '(r1|nobody)' and this secret do not match; sign-in refused"
    for rater, secret in (("r1", r2), ("r1", ""), ("nobody", r1), ("r1", r1.upper())):
        with pytest.raises(StudyError, match=refused):
            RaterSession(db, rater, secret=secret)
    session = RaterSession(db, "r1", secret=r1, prefetch=False)
    try:
        assert session.rater.rater_id == "r1"
        assert session.done == TRIALS
    finally:
        session.close()
    with RatingStore(db) as store:
        attempts = [(a["rater_id"], a["accepted"]) for a in store.sign_in_attempts("study")]
    assert attempts == [("r1", False), ("r1", False), ("nobody", False), ("r1", False),
                        ("r1", True)]  # fmt: skip
    hashes = [h for (h,) in sqlite3.connect(db).execute("SELECT secret_hash FROM raters")]
    assert all(h.startswith("scrypt$") for h in hashes) and len(set(hashes)) == 2
    raw = _file_bytes(db)
    assert r1.encode() not in raw and r2.encode() not in raw  # only hashes are kept
    # a rater who lost their secret gets a new one from the organiser (who holds the key)
    with pytest.raises(StudyError, match="sealed away"):
        reissue_secret(db, "r2", key=None)  # type: ignore[arg-type]
    fresh = reissue_secret(db, "r2", key=key)
    with pytest.raises(StudyError, match="do not match"):
        RaterSession(db, "r2", secret=r2)
    RaterSession(db, "r2", secret=fresh, prefetch=False).close()


# -- sealing a schema-1 file ---------------------------------------------------------------
def _write_schema_1(made: dict, target: Path) -> dict:
    """The same study as schema 1 wrote it: the key inside, items real first, no secrets;
    plus one audit and one decision. Returns the key rows."""
    engine = sa.create_engine(f"sqlite:///{target}")
    source = sqlite3.connect(made["db"])
    key = sqlite3.connect(made["key"])
    try:
        schema_v1.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                schema_v1.meta_table.insert(),
                [{"key": "schema_version", "value": "1"}, {"key": "created_at", "value": "x"}],
            )
            (study,) = source.execute("SELECT * FROM studies").fetchall()
            (key_design,) = key.execute("SELECT design FROM key_studies").fetchone()
            conn.execute(
                schema_v1.studies.insert(),
                dict(zip([c.name for c in schema_v1.studies.columns], study, strict=True))
                | {"design": key_design},
            )
            truth = made["truth"]
            conn.execute(
                schema_v1.volumes.insert(),
                [
                    {
                        k: row[k]
                        for k in (
                            "study_id",
                            "volume_id",
                            "kind",
                            "source",
                            "source_sha256",
                            "prepared_sha256",
                            "mask",
                        )
                    }
                    | {
                        "condition": json.dumps(row["condition"]),
                        "provenance": json.dumps(row["provenance"]),
                    }
                    for row in truth.values()
                ],
            )
            for item_id, vols in source.execute("SELECT item_id, volumes FROM items"):
                real_first = sorted(json.loads(vols), key=lambda v: truth[v]["kind"] != "real")
                conn.execute(
                    schema_v1.items.insert(),
                    {"study_id": "study", "item_id": item_id, "volumes": json.dumps(real_first)},
                )
            for table in ("raters", "trials", "ratings"):
                columns = [c.name for c in schema_v1.metadata.tables[table].columns]
                rows = source.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
                conn.execute(
                    schema_v1.metadata.tables[table].insert(),
                    [dict(zip(columns, r, strict=True)) for r in rows],
                )
            synthetic = sorted(v for v, r in truth.items() if r["kind"] == "synthetic")
            conn.execute(
                schema_v1.audits.insert(),
                {
                    "study_id": "study",
                    "volume_id": synthetic[0],
                    "nearest": "sub-x",
                    "similarity": 0.5,
                    "threshold": 0.9,
                    "flagged": False,
                    "train": "/t",
                    "audited_at": "t",
                },
            )
            conn.execute(
                schema_v1.decisions.insert(),
                {
                    "study_id": "study",
                    "volume_id": synthetic[0],
                    "decision": "rejected",
                    "curator": "Dr Old",
                    "reason": "blurred",
                    "decided_at": "t",
                },
            )
    finally:
        engine.dispose()
        source.close()
        key.close()
    return truth  # fmt: skip


def test_a_schema_1_study_file_is_refused_until_sealed_then_reports_the_same(made, tmp_path):
    old = tmp_path / "old.db"
    truth = _write_schema_1(made, old)
    assert b"synthetic" in old.read_bytes()  # as schema 1 left it: the answer inside
    with pytest.raises(StudyError, match="still holds its answer key.*mrisynth study seal"):
        RatingStore(old)
    key = tmp_path / "old-KEY.db"
    issued = seal(old, key)
    assert set(issued["study"]) == {"r1", "r2"}
    _assert_sealed(old, truth)
    with RatingStore(old, key=key) as store:
        assert store.schema_version == schema.SCHEMA_VERSION
        assert {v: r["kind"] for v, r in store.volumes("study").items()} == {
            v: r["kind"] for v, r in truth.items()
        }
        (decision,) = store.decisions("study").values()
        assert (decision["curator"], decision["reason"], decision["override"]) == (
            "Dr Old", "blurred", False)  # fmt: skip
        assert [a["nearest"] for a in store.audits("study").values()] == ["sub-x"]
    before = study_statistics(rated_trials(made["db"], key=made["key"]))
    after = study_statistics(rated_trials(old, key=key))
    assert json.dumps(after, sort_keys=True) == json.dumps(before, sort_keys=True)
    session = RaterSession(old, "r1", secret=issued["study"]["r1"], prefetch=False)
    session.close()
    with pytest.raises(StudyError, match="already sealed"):
        seal(old, tmp_path / "again-KEY.db")


# -- curation overrides ---------------------------------------------------------------------
def test_approving_against_the_rules_needs_an_override_with_a_reason(made, tmp_path):
    db, key = _copy(made, tmp_path / "study")
    rules = CurationRules.parse("realism>=4,fooled>=0.5")  # (no audit in this study)
    ranked = candidates(db, key=key, rules=rules)
    failing = [c for c in ranked if not c.preselected]
    passing = [c for c in ranked if c.preselected]
    # fooled 50 % each (r1 never, r2 always); realism 5 or 2 by position: some fail
    assert failing and passing
    volume = failing[0].volume_id
    with pytest.raises(StudyError, match=rf"{volume} fails the study's rules.*override"):
        decide(db, volume, "approved", curator="Dr Cur", rules=rules, key=key)
    with pytest.raises(StudyError, match="an override needs a reason"):
        decide(db, volume, "approved", curator="Dr Cur", rules=rules, key=key, override=True)
    row = decide(db, volume, "approved", curator="Dr Cur", rules=rules, key=key, override=True,
                 reason="rare anatomy we need")  # fmt: skip
    assert row["override"] is True and row["failures"] == failing[0].failures
    ok = decide(db, passing[0].volume_id, "approved", curator="Dr Cur", rules=rules, key=key)
    assert ok["override"] is False and ok["failures"] == []
    assert apply_rules(db, rules, curator="Dr Cur", key=key)  # the rest, by the rules
    approved = {v.volume_id: v for v in approved_volumes(db, key=key)}
    assert approved[volume].curation["override"] is True
    assert approved[volume].curation["failures"] == failing[0].failures
    assert approved[volume].curation["reason"] == "rare anatomy we need"
    assert approved[passing[0].volume_id].curation["override"] is False

    from napari_mrisynth.export import export_set

    result = export_set([approved[volume]], tmp_path / "export", formats=("bids",),
                        study={"id": "study"})  # fmt: skip
    manifest = json.loads(Path(result.manifest).read_text())
    (entry,) = manifest["volumes"]
    assert entry["curation"]["override"] is True
    assert entry["curation"]["failures"] == failing[0].failures


def test_the_ratings_csv_comes_from_the_key(made, tmp_path):
    out = ratings_csv(made["db"], tmp_path / "ratings.csv", key=made["key"])
    rows = out.read_text().splitlines()
    assert len(rows) == 1 + 2 * TRIALS
    header = rows[0].split(",")
    correct = [r.split(",")[header.index("correct")] for r in rows[1:]]
    raters = [r.split(",")[header.index("rater_id")] for r in rows[1:]]
    assert {(r, c) for r, c in zip(raters, correct, strict=True)} == {("r1", "true"),
                                                                       ("r2", "false")}  # fmt: skip


def test_a_study_rated_perfectly_produces_its_report(made, tmp_path):
    """r1 is right on every trial and r2 wrong on every one: the report is written whole."""
    result = study_report(made["db"], tmp_path / "report", key=made["key"])
    raters = result["statistics"]["raters"]
    assert raters["r1"]["accuracy"]["value"] == 1.0 and raters["r1"]["accuracy"]["ci95"][1] == 1.0
    assert raters["r2"]["accuracy"]["value"] == 0.0 and raters["r2"]["accuracy"]["ci95"][0] == 0.0
    files = result["files"]
    assert "accuracy" in " ".join(files["plots"])
    for path in files["plots"].values():
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = Path(files["json"]).read_text()
    json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))
    assert "nan" not in Path(files["markdown"]).read_text().lower()
