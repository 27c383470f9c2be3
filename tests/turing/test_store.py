"""The ratings store, the study design and the rater session, on real SQLite files.

No mocks: studies are frozen from the small simulated cohort of
``tests.support.study_inputs``, raters run in separate processes (``sys.executable -c``),
crashes are real ``SIGKILL``\\ s, and the database is inspected afterwards through a plain
:mod:`sqlite3` connection.
"""

from __future__ import annotations

import dataclasses
import json
import re
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest

from napari_mrisynth.turing.design import add_rater, create_study
from napari_mrisynth.turing.schema import SCHEMA_VERSION
from napari_mrisynth.turing.session import Answer, Panel, Presentation, RaterSession
from napari_mrisynth.turing.store import RatingStore, StudyError
from tests.support import study_inputs
from tests.support.study_inputs import read_line, run_python

RATERS = [f"r{k}" for k in range(1, 9)]
TRIALS = 6
#: Every rater's secret per study fixture name, as ``create_study`` and ``add_rater`` issued
#: them (the raters' secrets of a copy of a study are the original's).
SECRETS: dict[str, dict[str, str]] = {}


# -- helpers -------------------------------------------------------------------------------
def _sql(db: Path, query: str, *args) -> list[tuple]:
    con = sqlite3.connect(db, timeout=30)
    try:
        return con.execute(query, args).fetchall()
    finally:
        con.close()


def _trials(db: Path, study: str = "study") -> dict[tuple[str, int], tuple[str, str]]:
    rows = _sql(db, "SELECT rater_id, position, item_id, shown FROM trials WHERE study_id = ?",
                study)  # fmt: skip
    return {(r, p): (item, shown) for r, p, item, shown in rows}


def _copy_db(src: Path, dst: Path) -> Path:
    """A consistent copy of a study database (SQLite's online backup); the prepared volumes
    stay where the study row says (shared, read only)."""
    source, target = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        source.backup(target)
    finally:
        source.close()
        target.close()
    return dst


def _integrity(db: Path) -> str:
    return _sql(db, "PRAGMA integrity_check")[0][0]


def _key(db: Path) -> Path:
    """The answer key written beside a fixture study (the organiser's file)."""
    return db.with_name(f"{db.stem}-KEY.db")


def _session(db: Path, rater: str, study: str = "a", **options) -> RaterSession:
    return RaterSession(db, rater, secret=SECRETS[study][rater], **options)


def _answer(mode: str, k: int) -> Answer:
    if mode == "pair":
        return Answer("AB"[k % 2], 1 + k % 5, [1 + k % 5, 1 + (k + 2) % 5], f"c{k}")
    return Answer(("real", "synthetic")[k % 2], 1 + k % 5, [1 + k % 5], f"c{k}")


# -- fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tests.support.study_inputs import build_study_inputs

    return build_study_inputs(tmp_path_factory.mktemp("turing-inputs"))


@pytest.fixture(scope="module")
def studies(inputs, tmp_path_factory):
    """Four frozen studies on the 6 real + 6 synthetic fixture at 4 mm:

    * ``a``: pair, seed 0, raters r1-r8 (then ``zed`` added with :func:`add_rater`);
    * ``b``: pair, seed 0, raters r1-r8 and ``zed`` from the start;
    * ``c``: pair, seed 1, raters r1-r8;
    * ``single``: single, seed 0, 6 trials, raters r1-r8.
    """
    real, synthetic = inputs
    root = tmp_path_factory.mktemp("turing-studies")
    dbs = {}
    for name, mode, seed, raters in (("a", "pair", 0, RATERS), ("b", "pair", 0, RATERS + ["zed"]),
                                     ("c", "pair", 1, RATERS),
                                     ("single", "single", 0, RATERS)):  # fmt: skip
        dbs[name] = root / f"{name}.db"
        made = create_study(dbs[name], key=_key(dbs[name]), real=real, synthetic=synthetic,
                            raters=raters, mode=mode, trials=TRIALS, seed=seed,
                            spacing=4.0)  # fmt: skip
        SECRETS[name] = made["secrets"]
    SECRETS["a"]["zed"] = add_rater(dbs["a"], "zed", key=_key(dbs["a"]))
    return dbs


@pytest.fixture
def pair_db(studies, tmp_path):
    """A private copy of study ``a`` (and its key) to rate in."""
    _copy_db(_key(studies["a"]), _key(tmp_path / "ratings.db"))
    return _copy_db(studies["a"], tmp_path / "ratings.db")


# -- schema --------------------------------------------------------------------------------
def test_new_database_has_the_current_schema_in_wal_mode(tmp_path):
    db = tmp_path / "sub" / "new.db"
    with RatingStore(db, create=True) as store:
        assert store.schema_version == SCHEMA_VERSION
    assert db.is_file()
    assert _sql(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    assert _sql(db, "PRAGMA journal_mode")[0][0] == "wal"  # persistent: set in the file
    with RatingStore(db) as store:  # reopening without create is fine
        assert store.schema_version == SCHEMA_VERSION
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_a_missing_database_is_not_created_silently(tmp_path):
    db = tmp_path / "typo.db"
    with pytest.raises(StudyError, match=re.escape(str(db))):
        RatingStore(db)
    assert not db.exists()
    sqlite3.connect(tmp_path / "empty.db").close()  # an empty SQLite file: no schema
    with pytest.raises(StudyError, match="not a ratings database"):
        RatingStore(tmp_path / "empty.db")


def test_a_database_from_a_newer_version_is_refused(tmp_path):
    db = tmp_path / "future.db"
    RatingStore(db, create=True).close()
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                    (str(SCHEMA_VERSION + 1),))  # fmt: skip
    con.close()
    with pytest.raises(StudyError) as info:
        RatingStore(db)
    message = str(info.value)
    assert str(db) in message
    assert f"schema version {SCHEMA_VERSION + 1} is newer" in message
    assert "upgrade napari-mrisynth" in message
    assert _sql(db, "SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION + 1),)
    ]  # untouched


# -- design --------------------------------------------------------------------------------
def test_same_seed_gives_identical_trials_for_every_rater(studies):
    a, b = _trials(studies["a"]), _trials(studies["b"])
    assert len(a) == len(b) == 9 * TRIALS
    assert a == b  # r1-r8 and zed, every position: item and volumes shown, left to right
    assert _sql(studies["a"], "SELECT item_id, volumes FROM items ORDER BY item_id") == _sql(
        studies["b"], "SELECT item_id, volumes FROM items ORDER BY item_id"
    )
    query = "SELECT volume_id, kind, source FROM key_volumes ORDER BY 1"
    assert _sql(_key(studies["a"]), query) == _sql(_key(studies["b"]), query)


def test_a_different_seed_gives_a_different_order(studies):
    a, c = _trials(studies["a"]), _trials(studies["c"])
    for rater in RATERS:
        shown_a = [json.loads(a[rater, p][1]) for p in range(TRIALS)]
        shown_c = [json.loads(c[rater, p][1]) for p in range(TRIALS)]
        assert shown_a != shown_c, rater
    # and the raters' orders differ from one another within a study
    orders = {tuple(a[r, p][0] for p in range(TRIALS)) for r in RATERS}
    assert len(orders) > 1


def test_pair_design_is_balanced_and_never_reuses_a_volume(studies):
    with RatingStore(studies["a"], key=_key(studies["a"])) as store:
        kinds = {v: row["kind"] for v, row in store.volumes("study").items()}
    items = {i: json.loads(v) for i, v in _sql(studies["a"], "SELECT item_id, volumes FROM items")}
    assert len(items) == TRIALS
    used = [v for vols in items.values() for v in vols]
    assert len(used) == len(set(used)) == 2 * TRIALS  # no volume in two items
    for vols in items.values():
        assert sorted(kinds[v] for v in vols) == ["real", "synthetic"]
    trials = _trials(studies["a"])
    for rater in RATERS + ["zed"]:
        rows = [trials[rater, p] for p in range(TRIALS)]
        assert sorted(item for item, _ in rows) == sorted(items)  # the same item set
        for item, shown in rows:
            assert sorted(json.loads(shown)) == sorted(items[item])
        real_left = sum(kinds[json.loads(shown)[0]] == "real" for _, shown in rows)
        assert real_left == TRIALS // 2, rater


def test_single_design_is_half_real_half_synthetic(studies):
    with RatingStore(studies["single"], key=_key(studies["single"])) as store:
        kinds = {v: row["kind"] for v, row in store.volumes("study").items()}
        assert store.study("study")["mode"] == "single"
    items = [json.loads(v) for (v,) in _sql(studies["single"], "SELECT volumes FROM items")]
    assert all(len(vols) == 1 for vols in items)
    shown = [vols[0] for vols in items]
    assert len(set(shown)) == TRIALS
    assert sorted(kinds[v] for v in shown) == ["real"] * 3 + ["synthetic"] * 3
    trials = _trials(studies["single"])
    for rater in RATERS:
        assert sorted(json.loads(trials[rater, p][1])[0] for p in range(TRIALS)) == sorted(shown)


@pytest.mark.parametrize(
    ("mode", "trials", "needed"),
    [("pair", 7, "7 real and 7 synthetic"), ("single", 14, "7 real and 7 synthetic")],
)
def test_more_trials_than_volumes_is_refused_with_the_counts(inputs, tmp_path, mode, trials,
                                                             needed):  # fmt: skip
    real, synthetic = inputs
    with pytest.raises(StudyError) as info:
        create_study(tmp_path / "big.db", key=tmp_path / "big-KEY.db", real=real,
                     synthetic=synthetic, raters=["r1"], mode=mode, trials=trials,
                     spacing=4.0)  # fmt: skip
    message = str(info.value)
    assert f"--trials {trials}" in message
    assert needed in message
    assert "there are 6 real and 6 synthetic" in message


def test_an_added_rater_gets_a_reproducible_order(studies):
    added = _trials(studies["a"])
    from_start = _trials(studies["b"])
    zed = [added["zed", p] for p in range(TRIALS)]
    assert zed == [from_start["zed", p] for p in range(TRIALS)]
    with pytest.raises(StudyError, match="already exists"):
        add_rater(studies["a"], "zed", key=_key(studies["a"]))


# -- ratings -------------------------------------------------------------------------------
def test_a_rating_is_never_overwritten(pair_db):
    kwargs = dict(called_synthetic=[False, True], realism=[4, 2], comment="first",
                  seconds=12.5, viewer_state={"zoom": 1.0})  # fmt: skip
    with RatingStore(pair_db, key=_key(pair_db)) as store:
        store.add_rating("study", "r1", 0, choice="A", confidence=4, **kwargs)
        before = _sql(pair_db, "SELECT * FROM ratings")
        store.save_draft("study", "r1", 0, {"choice": "B"}, 3.0)
        second = dict(kwargs, comment="second", realism=[1, 5])
        with pytest.raises(StudyError, match="already rated; ratings are never overwritten"):
            store.add_rating("study", "r1", 0, choice="B", confidence=1, **second)
        assert _sql(pair_db, "SELECT * FROM ratings") == before
        (rating,) = store.ratings("study")
        assert (rating["choice"], rating["confidence"], rating["comment"]) == ("A", 4, "first")
        assert store.draft("study", "r1")["state"] == {"choice": "B"}  # the failed one kept it
    assert _integrity(pair_db) == "ok"


CONCURRENT_RATER = """
    import sys
    from napari_mrisynth.turing.session import Answer, RaterSession

    db, rater, secret = sys.argv[1], sys.argv[2], sys.argv[3]
    session = RaterSession(db, rater, secret=secret)
    print("OPEN", flush=True)
    sys.stdin.readline()  # the starting gun: every process opened before the first write
    k = 0
    while not session.finished:
        for d in range(5):  # drafts as the rater clicks, then the answer
            session.save_draft({"choice": "A", "confidence": 1 + d % 5, "step": d})
        session.submit(Answer("AB"[k % 2], 1 + k % 5, [1 + k % 5, 5 - k % 5], f"{rater}-{k}"),
                       {"k": k})
        k += 1
    session.close()
    print("DONE", k, flush=True)
"""


def test_eight_raters_in_separate_processes_lose_no_write(pair_db):
    scripts = {
        rater: CONCURRENT_RATER.replace(
            "sys.argv[1], sys.argv[2], sys.argv[3]",
            f"{str(pair_db)!r}, {rater!r}, {SECRETS['a'][rater]!r}",
        )
        for rater in RATERS
    }
    study_inputs.rate_concurrently(scripts, f"DONE {TRIALS}", timeout=180)
    rows = _sql(pair_db, "SELECT rater_id, position, choice, confidence, comment, "
                         "viewer_state FROM ratings")  # fmt: skip
    assert len(rows) == len(RATERS) * TRIALS
    assert {(r, p) for r, p, *_ in rows} == {(r, p) for r in RATERS for p in range(TRIALS)}
    for rater, position, choice, confidence, comment, state in rows:
        k = position  # each process rates its positions in order
        assert (choice, confidence, comment) == ("AB"[k % 2], 1 + k % 5, f"{rater}-{k}")
        assert json.loads(state) == {"k": k}
    assert _sql(pair_db, "SELECT count(*) FROM drafts") == [(0,)]  # each submit cleared it
    assert _integrity(pair_db) == "ok"
    with RatingStore(pair_db, key=_key(pair_db)) as store:
        assert len(store.ratings("study")) == len(RATERS) * TRIALS


CRASHING_RATER = """
    import sys, time
    from napari_mrisynth.turing.session import Answer, RaterSession

    session = RaterSession({db!r}, "r3", secret={secret!r})
    for k in range({k}):
        session.submit(Answer("AB"[k % 2], 2 + k % 4, [3, 1 + k % 5], "k%d" % k), {{"k": k}})
    time.sleep(0.4)  # time on trial k+1 before the draft
    session.save_draft({draft!r})
    print("READY", session.position, repr(session.seconds_on_trial()), flush=True)
    time.sleep(600)
"""


def test_a_killed_rater_resumes_on_the_same_trial_with_the_draft(pair_db):
    k = 3
    draft = {"choice": "B", "confidence": 4, "realism": [2, None], "comment": "hmm",
             "viewer": {"current_step": [5, 6, 7], "zoom": 1.5}}  # fmt: skip
    proc = run_python(CRASHING_RATER.format(db=str(pair_db), k=k, draft=draft,
                                            secret=SECRETS["a"]["r3"]))  # fmt: skip
    try:
        line = read_line(proc).split()
        assert line[:2] == ["READY", str(k)], proc.stderr.read() if not line else line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    with RatingStore(pair_db) as store:
        saved = store.draft("study", "r3")
    assert saved["position"] == k
    assert 0.4 <= saved["seconds"] < 5.0
    time.sleep(0.2)
    session = _session(pair_db, "r3")
    try:
        assert session.position == k
        assert session.done == k
        assert session.draft_state == draft
        elapsed = session.seconds_on_trial()
        assert saved["seconds"] <= elapsed < saved["seconds"] + 2.0  # continues, not from 0
        rows = _sql(
            pair_db,
            "SELECT position, choice, confidence, realism, comment, "
            "viewer_state FROM ratings WHERE rater_id = 'r3' ORDER BY position",
        )
        assert rows == [
            (j, "AB"[j % 2], 2 + j % 4, json.dumps([3, 1 + j % 5]), f"k{j}",
             json.dumps({"k": j}))
            for j in range(k)
        ]  # fmt: skip
        assert session.presentation().position == k
        session.submit(Answer("A", 5, [5, 1]))  # and the database is writable again
        assert session.position == k + 1
        assert session.draft_state == {}
    finally:
        session.close()
    assert _integrity(pair_db) == "ok"


TIGHT_LOOP = """
    from napari_mrisynth.turing.store import RatingStore

    store = RatingStore({db!r})
    print("START", flush=True)
    for rater in {raters!r}:
        for position in range({trials}):
            store.save_draft("study", rater, position, {{"choice": "A", "pad": "x" * 4000}}, 1.0)
            store.add_rating("study", rater, position, choice="A",
                             called_synthetic=[False, True], confidence=3, realism=[3, 3],
                             comment="x" * 2000, seconds=1.0, viewer_state={{"p": position}})
            print(rater, position, flush=True)
"""


@pytest.mark.parametrize("kill_after", [5, 17])
def test_killing_a_writer_mid_loop_leaves_a_consistent_database(pair_db, kill_after):
    proc = run_python(TIGHT_LOOP.format(db=str(pair_db), raters=RATERS, trials=TRIALS))
    committed = []
    try:
        assert read_line(proc).strip() == "START", proc.stderr.read()
        while len(committed) < kill_after:
            line = proc.stdout.readline()  # the writer never falls silent while alive
            assert line, proc.stderr.read()
            rater, position = line.split()
            committed.append((rater, int(position)))
    finally:
        proc.send_signal(signal.SIGKILL)  # while it drafts or commits the next one
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _integrity(pair_db) == "ok"
    rows = _sql(pair_db, "SELECT rater_id, position FROM ratings")
    assert len(rows) == len(set(rows))
    stored = set(rows)
    assert set(committed) <= stored  # every rating reported as committed survived
    order = [(r, p) for r in RATERS for p in range(TRIALS)]
    assert stored == set(order[: len(stored)])  # a prefix of the writer's order, no hole
    # (the writer may have committed a few more before the signal landed: it does not wait)
    assert len(stored) < len(order), "the writer finished before it was killed"
    rater, position = order[len(stored)]
    session = _session(pair_db, rater, prefetch=False)
    try:
        assert session.position == position  # the first unrated trial of that rater
        assert session.draft_state in ({}, {"choice": "A", "pad": "x" * 4000})
        session.submit(_answer("pair", 0))
        assert (rater, position) in set(_sql(pair_db, "SELECT rater_id, position FROM ratings"))
    finally:
        session.close()
    assert _integrity(pair_db) == "ok"


# -- blinding ------------------------------------------------------------------------------
def _strings(value) -> list[str]:
    """Every string reachable from a presentation (field values, recursively)."""
    if isinstance(value, str):
        return [value]
    if dataclasses.is_dataclass(value):
        return [s for v in vars(value).values() for s in _strings(v)]
    if isinstance(value, (tuple, list)):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in _strings(k) + _strings(v)]
    return []


@pytest.mark.parametrize("study", ["a", "single"])
def test_a_presentation_gives_nothing_away(studies, tmp_path, study):
    db = _copy_db(studies[study], tmp_path / "blind.db")
    with RatingStore(db, key=_key(studies[study])) as store:
        truth = store.volumes("study")
        cache = Path(store.study("study")["cache"])
    secrets = set(truth) | {row["source"] for row in truth.values()}
    secrets |= {Path(row["source"]).name for row in truth.values()} | {str(cache)}
    assert {f.name for f in dataclasses.fields(Presentation)} == {
        "position",
        "total",
        "case",
        "mode",
        "panels",
        "scale",
    }
    assert {f.name for f in dataclasses.fields(Panel)} == {"label", "name", "data"}
    pattern = r"^Case \d+ · [AB]$" if study == "a" else r"^Case \d+$"
    session = _session(db, "r5", study)
    seen = {"real": [], "synthetic": []}
    try:
        k = 0
        while not session.finished:
            shown = session.presentation()
            assert set(vars(shown)) == {"position", "total", "case", "mode", "panels", "scale"}
            strings = _strings(shown)
            assert not [s for s in strings if s in secrets or s in ("real", "synthetic")
                        or re.search(r"V\d{3}|/|\\\\|nii|ldm|sub-", s)]  # fmt: skip
            assert shown.scale == (4.0, 4.0, 4.0)
            trial = session.store.trial("study", "r5", shown.position)
            for panel, volume_id in zip(shown.panels, trial["shown"], strict=True):
                assert set(vars(panel)) == {"label", "name", "data"}
                assert re.match(r"^Case \d+( · [AB])?$", panel.name)
                assert re.match(pattern, panel.name)
                assert panel.data.dtype == np.uint8
                assert not panel.data.flags.writeable
                seen[truth[volume_id]["kind"]].append(panel.data)
            session.submit(_answer(shown.mode, k))
            k += 1
    finally:
        session.close()
    assert len(seen["real"]) == len(seen["synthetic"]) == (TRIALS if study == "a" else 3)
    shapes = {a.shape for kind in seen.values() for a in kind}
    assert len(shapes) == 1 and len(next(iter(shapes))) == 3
    for kind in seen.values():  # both kinds use the full uint8 range the same way
        assert all(a.max() > 200 and a.min() == 0 for a in kind)
    for path in cache.glob("V*.npy"):  # and so does every file in the cache
        data = np.load(path)
        assert data.dtype == np.uint8 and data.shape in shapes


def test_a_prepared_file_changed_on_disk_is_refused(studies, tmp_path):
    import shutil

    db = _copy_db(studies["a"], tmp_path / "tamper.db")
    with RatingStore(db) as store:
        cache = Path(store.study("study")["cache"])
        first = store.trial("study", "r2", 0)["shown"][0]
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    con = sqlite3.connect(db)
    with con:
        con.execute("UPDATE studies SET cache = ?", (str(copy),))
    con.close()
    target = copy / f"{first}.npy"
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 0x01  # one voxel, one bit
    target.write_bytes(bytes(raw))
    session = _session(db, "r2", prefetch=False)
    try:
        with pytest.raises(StudyError, match=re.escape(str(target)) + ".*changed"):
            session.presentation()
    finally:
        session.close()
    target.unlink()
    session = _session(db, "r2", prefetch=False)
    try:
        with pytest.raises(StudyError, match=re.escape(str(target)) + ".*missing"):
            session.presentation()
    finally:
        session.close()


CREATING_SITE = """
import sys
from napari_mrisynth.turing.store import RatingStore
print("OPEN", flush=True)
sys.stdin.readline()
with RatingStore({db!r}, create=True) as store:
    print("DONE", store.schema_version)
"""


def test_processes_creating_the_schema_at_once_share_one(tmp_path):
    db = tmp_path / "new.db"
    scripts = {f"p{k}": CREATING_SITE.format(db=str(db)) for k in range(6)}
    study_inputs.rate_concurrently(scripts, f"DONE {SCHEMA_VERSION}", timeout=120)
    assert _sql(db, "SELECT count(*) FROM meta WHERE key = 'schema_version'") == [(1,)]
