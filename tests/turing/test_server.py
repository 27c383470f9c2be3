"""The ratings store on a real PostgreSQL server (the "several sites rate" setup).

No mocks: the module starts a throwaway PostgreSQL cluster (``initdb`` + ``pg_ctl``, a unix
socket and a free TCP port on 127.0.0.1, trust authentication, ``fsync=on``), freezes a study
into it through ``postgresql+psycopg://`` URLs, lets raters in separate processes rate it,
and checks the database afterwards through a plain :mod:`psycopg` connection. The cluster
is stopped (``pg_ctl stop -m fast``) when the module ends, whatever happened.

Skipped, with the reason, where PostgreSQL's server binaries (Debian package ``postgresql``,
installed by ``scripts/setup.sh --test``) or psycopg (the ``test`` / ``server`` extras) are
missing. Run as root, the server runs as the unprivileged ``postgres`` user (PostgreSQL
refuses to run as root).
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from napari_mrisynth.turing.design import add_rater, create_study
from napari_mrisynth.turing.prepare import load_prepared
from napari_mrisynth.turing.schema import SCHEMA_VERSION
from napari_mrisynth.turing.session import Answer, RaterSession
from napari_mrisynth.turing.store import RatingStore, StudyError
from tests.support import study_inputs
from tests.support.study_inputs import read_line, run_python

RATERS = [f"r{k}" for k in range(1, 5)]
TRIALS = 6
#: The server study's rater secrets, as create_study and add_rater issued them.
SECRETS: dict[str, str] = {}
_names = itertools.count(1)


# -- the server ----------------------------------------------------------------------------
def _pg_bin(name: str) -> str | None:
    """``initdb`` / ``pg_ctl``: on PATH, else the newest /usr/lib/postgresql/<ver>/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = glob.glob(f"/usr/lib/postgresql/*/bin/{name}")

    def version(path: str) -> tuple[int, ...]:
        parts = re.findall(r"\d+", Path(path).parts[-3])
        return tuple(int(p) for p in parts)

    return max(candidates, key=version) if candidates else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """A running throwaway PostgreSQL cluster."""

    def __init__(self, bindir: Path, base: Path, port: int, as_user: dict):
        self.bindir, self.base, self.port, self._as_user = bindir, base, port, as_user
        self.data, self.run_dir = base / "data", base / "run"
        self.log = self.run_dir / "server.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def pg(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run a server binary (as the unprivileged user when we are root)."""
        env = dict(os.environ, HOME=str(self.base), LC_ALL="C", LANG="C")
        return subprocess.run(
            [str(self.bindir / args[0]), *args[1:]], cwd=self.base, env=env,
            capture_output=True, text=True, timeout=timeout, **self._as_user,
        )  # fmt: skip

    def connect(self, database: str = "postgres"):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                               dbname=database, autocommit=True)  # fmt: skip

    def sql(self, database: str, query: str, *args) -> list[tuple]:
        with self.connect(database) as con:
            cur = con.execute(query, args or None)
            return cur.fetchall() if cur.description else []

    def create_database(self) -> str:
        name = f"study_{os.getpid()}_{next(_names)}"
        with self.connect() as con:
            con.execute(f'CREATE DATABASE "{name}"')
        return name

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-4000:]
        except OSError:
            return "(no server log)"


@pytest.fixture(scope="module")
def pg():
    try:
        import psycopg  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"psycopg is not importable ({exc}); pip install 'napari-mrisynth[server]'")
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                    "/usr/lib/postgresql/*/bin; apt-get install postgresql "
                    "(scripts/setup.sh --test)")  # fmt: skip
    if Path(initdb).parent != Path(pg_ctl).parent:
        pytest.skip(f"initdb ({initdb}) and pg_ctl ({pg_ctl}) come from different installs")
    as_user: dict = {}
    owner = None
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root: run it as "postgres"
        import pwd

        try:
            entry = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server as")
        owner = (entry.pw_uid, entry.pw_gid)
        as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    # Under /tmp, traversable by the server's user (pytest's tmp dirs are mode 0700).
    base = Path(tempfile.mkdtemp(prefix="mrisynth-pg-", dir="/tmp"))
    base.chmod(0o755)
    cluster = None
    started = False
    try:
        for sub in ("data", "run"):
            (base / sub).mkdir(mode=0o700)
            if owner:
                os.chown(base / sub, *owner)
        cluster = Cluster(Path(initdb).parent, base, _free_port(), as_user)
        done = cluster.pg("initdb", "-D", str(cluster.data), "-A", "trust", "-U", "postgres",
                          "--encoding=UTF8", "--locale=C")  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"initdb failed:\n{done.stdout}\n{done.stderr}")
        for _attempt in range(3):
            options = (f"-c listen_addresses=127.0.0.1 -c port={cluster.port} "
                       f"-c unix_socket_directories={cluster.run_dir} -c fsync=on "
                       "-c max_connections=100")  # fmt: skip
            done = cluster.pg("pg_ctl", "-D", str(cluster.data), "-l", str(cluster.log),
                              "-w", "-t", "60", "-o", options, "start")  # fmt: skip
            if done.returncode == 0:
                started = True
                break
            # most likely the free port was taken in between: stop whatever started, retry
            cluster.pg("pg_ctl", "-D", str(cluster.data), "-m", "immediate", "-w", "stop")
            cluster.port = _free_port()
        if not started:
            pytest.fail(f"pg_ctl start failed:\n{done.stdout}\n{done.stderr}\n"
                        f"{cluster.server_log()}")  # fmt: skip
        assert cluster.sql("postgres", "SHOW fsync") == [("on",)]
        yield cluster
    finally:
        if cluster is not None and (cluster.data / "postmaster.pid").exists():
            stopped = cluster.pg("pg_ctl", "-D", str(cluster.data), "-m", "fast", "-w", "-t",
                                 "60", "stop")  # fmt: skip
            if stopped.returncode != 0:
                cluster.pg("pg_ctl", "-D", str(cluster.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def pg_db(pg):
    """A fresh, empty database on the server: its name."""
    return pg.create_database()


# -- helpers -------------------------------------------------------------------------------
def _sqlite(db: Path, query: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(query).fetchall()
    finally:
        con.close()


# -- schema --------------------------------------------------------------------------------
def test_schema_on_the_server(pg, pg_db):
    url = pg.url(pg_db)
    with pytest.raises(StudyError, match="not a ratings database"):
        RatingStore(url)  # an empty database is not silently made a study
    assert pg.sql(pg_db, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == [(0,)]
    with RatingStore(url, create=True) as store:
        assert store.schema_version == SCHEMA_VERSION
        assert store.engine.dialect.name == "postgresql"
        assert store.path is None
    tables = {t for (t,) in pg.sql(pg_db, "SELECT tablename FROM pg_tables "
                                          "WHERE schemaname = 'public'")}  # fmt: skip
    assert tables == {
        "meta",
        "studies",
        "volumes",
        "items",
        "raters",
        "sign_ins",
        "trials",
        "ratings",
        "drafts",
    }  # fmt: skip (the key's tables come with a key)
    assert pg.sql(pg_db, "SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]
    with RatingStore(url) as store:  # reopening without create
        assert store.schema_version == SCHEMA_VERSION
        assert store.study_ids() == []
    with RatingStore(url, create=True) as store:  # create on an existing schema: no-op
        assert store.schema_version == SCHEMA_VERSION
    assert pg.sql(pg_db, "SELECT count(*) FROM meta WHERE key = 'schema_version'") == [(1,)]
    # a database written by a newer version is refused, and left alone
    pg.sql(pg_db, "UPDATE meta SET value = %s WHERE key = 'schema_version'",
           str(SCHEMA_VERSION + 1))  # fmt: skip
    with pytest.raises(StudyError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        RatingStore(url)
    assert pg.sql(pg_db, "SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION + 1),)
    ]


def test_an_unreachable_or_missing_server_database_is_a_study_error(pg):
    with pytest.raises(StudyError, match="cannot open the ratings database"):
        RatingStore(pg.url("no_such_database"), create=True)
    with pytest.raises(StudyError, match="cannot open the ratings database"):
        RatingStore(f"postgresql+psycopg://postgres@127.0.0.1:{_free_port()}/postgres")


# -- a study on the server -----------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from tests.support.study_inputs import build_study_inputs

    return build_study_inputs(tmp_path_factory.mktemp("turing-server-inputs"))


@pytest.fixture(scope="module")
def server_study(pg, inputs, tmp_path_factory):
    """A pair study (seed 0, raters r1-r4, 6 trials) frozen into a server database, its key
    in the same database's ``key_*`` tables: its database name, its URL, the cache folder
    (and the raters' secrets in ``SECRETS``)."""
    real, synthetic = inputs
    name = pg.create_database()
    url = pg.url(name)
    cache = tmp_path_factory.mktemp("turing-server") / "cache"
    made = create_study(url, key=url, real=real, synthetic=synthetic, raters=RATERS,
                        mode="pair", trials=TRIALS, seed=0, spacing=4.0, cache=cache)  # fmt: skip
    SECRETS.update(made["secrets"])
    return name, url, cache


def test_a_server_study_needs_a_cache_folder(pg, pg_db, inputs):
    real, synthetic = inputs
    with pytest.raises(StudyError, match="server database needs --cache"):
        create_study(pg.url(pg_db), key=pg.url(pg_db), real=real, synthetic=synthetic,
                     raters=["r1"], trials=2, spacing=4.0)  # fmt: skip


def test_the_server_study_matches_the_same_study_on_sqlite(pg, server_study, inputs, tmp_path):
    name, url, cache = server_study
    real, synthetic = inputs
    db, key = tmp_path / "same.db", tmp_path / "same-KEY.db"
    create_study(db, key=key, real=real, synthetic=synthetic, raters=RATERS, mode="pair",
                 trials=TRIALS, seed=0, spacing=4.0)  # fmt: skip
    for query, sqlite_file in (
        ("SELECT rater_id, position, item_id, shown FROM trials", db),
        ("SELECT item_id, volumes FROM items", db),
        ("SELECT volume_id, kind, source, source_sha256, condition, provenance "
         "FROM key_volumes", key),
        ("SELECT study_id, mode, seed, trials_per_rater, grid FROM studies", db),
    ):  # fmt: skip
        ordered = query + " ORDER BY 1, 2"
        assert pg.sql(name, ordered) == _sqlite(sqlite_file, ordered), query
    with RatingStore(url, key=url) as store:
        study = store.study("study")
        assert study["cache"] == str(Path(cache).resolve())
        assert study["seed"] == 0 and isinstance(study["seed"], int)
        assert sorted(p.name for p in Path(cache).glob("V*.npy")) == [
            f"V{k:03d}.npy" for k in range(1, 2 * TRIALS + 1)
        ]
        # (the prepared files are not compared with the SQLite study's: preparing the same
        # volumes twice is not bit-identical; each store holds the digests of its own cache)
        for volume_id in store.volumes("study"):
            digest = store.prepared_digest("study", volume_id)
            assert load_prepared(cache, volume_id, digest).dtype == np.uint8


CONCURRENT_RATER = """
    import sys
    from napari_mrisynth.turing.session import Answer, RaterSession

    url, rater = {url!r}, {rater!r}
    session = RaterSession(url, rater, secret={secret!r})
    print("OPEN", flush=True)
    sys.stdin.readline()  # the starting gun: every process connected before the first write
    k = 0
    while not session.finished:
        shown = session.presentation()
        assert shown.position == k, (shown.position, k)
        for d in range(5):  # drafts as the rater clicks, then the answer
            session.save_draft({{"choice": "A", "confidence": 1 + d % 5, "step": d}})
        session.submit(Answer("AB"[k % 2], 1 + k % 5, [1 + k % 5, 5 - k % 5], f"{{rater}}-{{k}}"),
                       {{"k": k}})
        k += 1
    session.close()
    print("DONE", k, flush=True)
"""


def test_four_rater_processes_on_the_server_lose_no_write(pg, server_study):
    name, url, _ = server_study
    scripts = {rater: CONCURRENT_RATER.format(url=url, rater=rater, secret=SECRETS[rater])
               for rater in RATERS}  # fmt: skip
    study_inputs.rate_concurrently(scripts, f"DONE {TRIALS}", timeout=300,
                                      diagnostics=pg.server_log)  # fmt: skip
    rows = pg.sql(name, "SELECT rater_id, position, choice, confidence, realism, comment, "
                        "viewer_state, called_synthetic FROM ratings")  # fmt: skip
    assert len(rows) == len(RATERS) * TRIALS  # no lost write
    keys = [(r, p) for r, p, *_ in rows]
    assert len(set(keys)) == len(keys)  # no duplicate
    assert set(keys) == {(r, p) for r in RATERS for p in range(TRIALS)}
    for rater, position, choice, confidence, realism, comment, state, called in rows:
        k = position  # each process rates its positions in order
        assert (choice, confidence, comment) == ("AB"[k % 2], 1 + k % 5, f"{rater}-{k}")
        assert json.loads(realism) == [1 + k % 5, 5 - k % 5]
        assert json.loads(state) == {"k": k}
        assert json.loads(called) == [choice != "A", choice != "B"]
    assert pg.sql(name, "SELECT count(*) FROM drafts") == [(0,)]  # each submit cleared it
    with RatingStore(url, key=url) as store:
        stored = store.ratings("study")
        assert len(stored) == len(RATERS) * TRIALS
        assert [r["submitted_at"] for r in stored] == sorted(r["submitted_at"] for r in stored)
        for rater in RATERS:
            assert store.rated_positions("study", rater) == set(range(TRIALS))


def test_a_rated_trial_is_never_overwritten_on_the_server(pg, server_study):
    name, url, _ = server_study
    with RatingStore(url) as store:
        SECRETS["r9"] = add_rater(url, "r9", key=url)
        assert store.rater_ids("study") == RATERS + ["r9"]
        kwargs = dict(called_synthetic=[False, True], realism=[4, 2], comment="first",
                      seconds=12.5, viewer_state={"zoom": 1.0})  # fmt: skip
        store.add_rating("study", "r9", 0, choice="A", confidence=4, **kwargs)
        query = "SELECT * FROM ratings WHERE rater_id = 'r9' ORDER BY position"
        before = pg.sql(name, query)
        assert len(before) == 1
        store.save_draft("study", "r9", 0, {"choice": "B"}, 3.0)
        second = dict(kwargs, comment="second", realism=[1, 5])
        with pytest.raises(StudyError, match="already rated; ratings are never overwritten"):
            store.add_rating("study", "r9", 0, choice="B", confidence=1, **second)
        assert pg.sql(name, query) == before
        assert store.draft("study", "r9")["state"] == {"choice": "B"}  # rolled back: kept
        with pytest.raises(StudyError, match="no trial 99"):
            store.add_rating("study", "r9", 98, choice="B", confidence=1, **second)
        # the store is still usable after the refused writes (no transaction left aborted)
        store.add_rating("study", "r9", 1, choice="B", confidence=2, **second)
        assert store.rated_positions("study", "r9") == {0, 1}
    # and through a session: the rated trials are skipped, a second answer is refused
    session = RaterSession(url, "r9", secret=SECRETS["r9"], prefetch=False)
    try:
        assert session.position == 2 and session.done == 2
        with pytest.raises(StudyError, match="already rated"):
            session.store.add_rating("study", "r9", 1, choice="A", confidence=5, **kwargs)
    finally:
        session.close()


def test_a_draft_on_the_server_survives_a_new_session(pg, server_study):
    name, url, _ = server_study
    SECRETS["r7"] = add_rater(url, "r7", key=url)
    draft = {"choice": "B", "confidence": 4, "realism": [2, None], "comment": "hmm · é",
             "viewer": {"current_step": [5, 6, 7], "zoom": 1.5}}  # fmt: skip
    session = RaterSession(url, "r7", secret=SECRETS["r7"], prefetch=False)
    try:
        session.submit(Answer("A", 3, [3, 3], "one"))
        assert session.position == 1
        time.sleep(0.3)
        session.save_draft(draft)
        session.save_draft(draft)  # the second save updates the one row
    finally:
        session.close()
    rows = pg.sql(name, "SELECT position, state, seconds FROM drafts WHERE rater_id = 'r7'")
    assert len(rows) == 1
    position, state, seconds = rows[0]
    assert position == 1 and json.loads(state) == draft and 0.3 <= seconds < 10
    session = RaterSession(url, "r7", secret=SECRETS["r7"])
    try:
        assert session.position == 1 and session.done == 1
        assert session.draft_state == draft
        assert session.seconds_on_trial() >= seconds
        assert session.presentation().position == 1
        session.submit(Answer("B", 5, [1, 5]))
        assert session.draft_state == {}
    finally:
        session.close()
    assert pg.sql(name, "SELECT count(*) FROM drafts WHERE rater_id = 'r7'") == [(0,)]
    assert pg.sql(name, "SELECT position, comment FROM ratings WHERE rater_id = 'r7' "
                        "ORDER BY position") == [(0, "one"), (1, "")]  # fmt: skip


def test_report_and_csv_from_the_server(pg, server_study, tmp_path):
    from napari_mrisynth.turing.results import ratings_csv, study_report, study_status

    name, url, _ = server_study
    expected = pg.sql(name, "SELECT count(*) FROM ratings")[0][0]
    if expected < len(RATERS) * TRIALS:  # run alone: rate first
        test_four_rater_processes_on_the_server_lose_no_write(pg, server_study)
        expected = pg.sql(name, "SELECT count(*) FROM ratings")[0][0]
    status = study_status(url)
    assert status["rated"] == expected
    assert status["total"] == pg.sql(name, "SELECT count(*) FROM trials")[0][0]
    out = ratings_csv(url, tmp_path / "csv" / "ratings.csv", key=url)
    import csv

    with open(out, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert len(rows) == expected
    truth = {v: k for v, k in pg.sql(name, "SELECT volume_id, kind FROM key_volumes")}
    for row in rows:
        shown = row["shown"].split(";")
        assert row["truth"].split(";") == [truth[v] for v in shown]
        assert row["correct"] == str(
            row["called_synthetic"].split(";") == [str(t == "synthetic").lower()
                                                   for t in row["truth"].split(";")]
        ).lower()  # fmt: skip
    query = "SELECT rater_id, position, choice, confidence FROM ratings"
    stored = {(r, p + 1): (c, conf) for r, p, c, conf in pg.sql(name, query)}
    assert {(r["rater_id"], int(r["position"])): (r["choice"], int(r["confidence"]))
            for r in rows} == stored  # fmt: skip
    result = study_report(url, tmp_path / "report", key=url)
    statistics = result["statistics"]
    assert statistics["pooled"]["n_trials"] == expected
    files = result["files"]
    for key in ("markdown", "html", "json"):
        assert Path(files[key]).is_file() and Path(files[key]).stat().st_size > 0, key
    assert json.loads(Path(files["json"]).read_text())["pooled"]["n_trials"] == expected
    assert "study" in Path(files["markdown"]).read_text(encoding="utf-8")


def test_a_session_survives_the_server_dropping_its_connections(pg, server_study):
    """A rater's session outlives its database connections: an idle connection cut by the
    server (restart, idle timeout, a network blip) must not fail the next write."""
    name, url, _ = server_study
    SECRETS["r8"] = add_rater(url, "r8", key=url)
    session = RaterSession(url, "r8", secret=SECRETS["r8"], prefetch=False)
    try:
        session.submit(Answer("A", 3, [3, 3]))
        cut = pg.sql("postgres", "SELECT count(pg_terminate_backend(pid)) "
                                 "FROM pg_stat_activity WHERE datname = %s "
                                 "AND pid <> pg_backend_pid()", name)  # fmt: skip
        assert cut[0][0] >= 1  # the session's pooled connection, at least
        session.save_draft({"choice": "B"})
        session.submit(Answer("B", 4, [2, 4]))
        assert session.position == 2
    finally:
        session.close()
    assert pg.sql(name, "SELECT position FROM ratings WHERE rater_id = 'r8' "
                        "ORDER BY position") == [(0,), (1,)]  # fmt: skip


DRAFTING_TWICE = """
    import sys
    import sqlalchemy as sa
    from napari_mrisynth.turing import store as tables
    from napari_mrisynth.turing.store import RatingStore

    store = RatingStore({url!r})
    print("OPEN", flush=True)
    sys.stdin.readline()
    for k in range({n}):
        store.save_draft("study", "r6", 0, {{"who": {who!r}, "k": k}}, float(k))
        if k % 2:  # as a submit does: the next trial starts without a draft
            with store.transaction() as conn:
                conn.execute(tables.drafts.delete().where(tables.drafts.c.rater_id == "r6"))
    store.close()
    print("DONE", flush=True)
"""


def test_two_windows_of_one_rater_saving_drafts_at_once(pg, server_study):
    """The same rater open twice (two machines, two sites): concurrent draft saves where no
    draft row exists yet must not fail with a duplicate key (SQLite serialises the writers;
    a server runs them side by side)."""
    name, url, _ = server_study
    add_rater(url, "r6", key=url)
    procs = [run_python(DRAFTING_TWICE.format(url=url, n=400, who=who), stdin=subprocess.PIPE)
             for who in ("left", "right")]  # fmt: skip
    try:
        for proc in procs:
            assert read_line(proc).strip() == "OPEN", proc.stderr.read()
        for proc in procs:
            proc.stdin.write("\n")
            proc.stdin.flush()
        for proc in procs:
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err
            assert out.strip() == "DONE"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
    assert pg.sql(name, "SELECT count(*) FROM drafts WHERE rater_id = 'r6'")[0][0] <= 1


CREATING_SITE = """
import sys
from napari_mrisynth.turing.store import RatingStore
print("OPEN", flush=True)
sys.stdin.readline()
with RatingStore({url!r}, create=True) as store:
    print("DONE", store.schema_version)
"""


def test_sites_creating_the_schema_at_once_share_one(pg, pg_db):
    url = pg.url(pg_db)
    scripts = {f"site{k}": CREATING_SITE.format(url=url) for k in range(6)}
    study_inputs.rate_concurrently(scripts, f"DONE {SCHEMA_VERSION}", timeout=120,
                                      diagnostics=pg.server_log)  # fmt: skip
    assert pg.sql(pg_db, "SELECT count(*) FROM meta WHERE key = 'schema_version'") == [(1,)]


# -- the key, sealed from the raters' role -------------------------------------------------
def test_the_raters_role_can_rate_but_not_read_the_key(pg, server_study):
    """A real PostgreSQL role with the grants ``mrisynth study grant`` gives: it signs in,
    reads its trials and commits ratings; every read of the key is refused by the server."""
    import psycopg

    from napari_mrisynth.turing.key import grant_rater_role
    from napari_mrisynth.turing.schema import key_metadata

    name, url, _ = server_study
    secret = add_rater(url, "r5", key=url)
    pg.sql(name, "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                 "'site_raters') THEN CREATE ROLE site_raters LOGIN; END IF; END $$")  # fmt: skip
    grant_rater_role(url, "site_raters")
    rater_url = url.replace("://postgres@", "://site_raters@")
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="site_raters", dbname=name) as con:
        for table in key_metadata.sorted_tables:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                con.execute(f"SELECT * FROM {table.name}")
            con.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):  # nor a secret's hash
            con.execute("UPDATE raters SET secret_hash = 'x' WHERE rater_id = 'r1'")
        con.rollback()
        assert con.execute("SELECT count(*) FROM trials").fetchone()[0] > 0
    with pytest.raises(StudyError, match="do not match"):
        RaterSession(rater_url, "r5", secret=SECRETS["r1"])
    session = RaterSession(rater_url, "r5", secret=secret, prefetch=False)
    try:
        session.sign_in("Dr Five", "radiologist", 6)
        assert session.presentation().position == 0
        session.save_draft({"choice": "A"})
        session.submit(Answer("A", 3, [3, 3]))
        assert session.done == 1
    finally:
        session.close()
    with pytest.raises(StudyError, match="cannot|permission denied"):
        with RatingStore(rater_url, key=rater_url) as store:
            store.volumes("study")
    assert pg.sql(name, "SELECT accepted FROM sign_ins WHERE rater_id = 'r5' "
                        "ORDER BY attempt_id") == [(False,), (True,)]  # fmt: skip


def test_a_raters_own_role_sees_and_rates_only_that_raters_trials(pg, server_study):
    """Row-level security: a role granted for one rater reads only that rater's trials,
    ratings and drafts, cannot sign in or rate as another rater, and cannot write a row of
    another rater's even with its own SQL."""
    import psycopg

    from napari_mrisynth.turing.key import grant_rater_role

    name, url, _ = server_study
    secrets = {r: add_rater(url, r, key=url) for r in ("rls1", "rls2")}
    for rater in secrets:
        pg.sql(
            name,
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
            f"'{rater}_role') THEN CREATE ROLE {rater}_role LOGIN; END IF; END $$",
        )
        grant_rater_role(url, f"{rater}_role", rater=rater)
    own = url.replace("://postgres@", "://rls1_role@")
    with psycopg.connect(host="127.0.0.1", port=pg.port, user="rls1_role", dbname=name) as con:
        assert {r for (r,) in con.execute("SELECT DISTINCT rater_id FROM trials")} == {"rls1"}
        assert {r for (r,) in con.execute("SELECT rater_id FROM raters")} == {"rls1"}
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="row-level security"):
            con.execute(
                "INSERT INTO ratings SELECT study_id, 'rls2', position, item_id, 'A', "
                "'[false, true]', 3, '[3, 3]', '', 1.0, '{}', 'x' FROM trials LIMIT 1"
            )
        con.rollback()
    with pytest.raises(StudyError, match="do not match"):  # rls2's own secret, through rls1's role
        RaterSession(own, "rls2", secret=secrets["rls2"])
    session = RaterSession(own, "rls1", secret=secrets["rls1"], prefetch=False)
    try:
        session.sign_in("Dr One", "radiologist", 4)
        session.save_draft({"choice": "A"})
        session.submit(Answer("B", 4, [2, 5]))
        assert session.done == 1
        with pytest.raises(StudyError, match="no trial 1"):
            session.store.add_rating("study", "rls2", 0, choice="A", confidence=3,
                                     called_synthetic=[False, True], realism=[3, 3],
                                     comment="", seconds=1.0, viewer_state={})  # fmt: skip
    finally:
        session.close()
    assert pg.sql(name, "SELECT rater_id, position FROM ratings WHERE rater_id LIKE 'rls%'") == [
        ("rls1", 0)
    ]
    # the shared role of the other test still rates every rater's trials
    assert pg.sql(name, "SELECT count(*) FROM rater_roles WHERE rater_id = '*'")[0][0] <= 1
