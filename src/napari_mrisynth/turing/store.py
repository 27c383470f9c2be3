"""The ratings store: a study's frozen design and every rating, in one database.

What it holds is what raters may reach: nothing in it says which volume is real. The answer
key (kinds, sources, provenance, curation) is a separate database, :class:`~.key.KeyStore`,
that reports, curation and export open explicitly (``key=``); a store opened without it
refuses every question whose answer needs the truth.

SQLite in WAL mode by default (a file path), or any database SQLAlchemy reaches (a URL such
as ``postgresql+psycopg://host/db``) when several sites rate. Every write is one short
transaction committed before the call returns, so a rating survives a crash of the rater's
process the moment :meth:`RatingStore.add_rating` returns; ``synchronous=FULL`` makes it
survive a power cut as well. Ratings are never updated or deleted: a second answer to the
same trial is refused.

The schema (:mod:`.schema`) is versioned (``meta.schema_version``); opening a database
written by a newer version of the software is refused rather than risked.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.turing.schema import (
    MIGRATIONS,
    SCHEMA_VERSION,
    UNSEALED_VERSION,
    drafts,
    meta_table,
    metadata,
    raters,
    ratings,
    sign_ins,
    studies,
    trials,
    volumes,
)

#: How long a writer waits for another process's transaction (SQLite), seconds.
BUSY_TIMEOUT_S = 30.0


class StudyError(MrisynthError):
    """A study cannot be created, found, rated or reported: the message says which and why."""


# The statements a rater's clicks run, built once: a rater submits from an idle process,
# where building a SQLAlchemy statement costs far more than running it (benchmarks.md).
_KEYS = ("study_id", "rater_id")
_KEY = (sa.bindparam("study_id", type_=sa.String), sa.bindparam("rater_id", type_=sa.String))
#: One rating, its item copied from the trial in the same statement (no row: no such trial).
_RATE = ratings.insert().from_select(
    ["study_id", "rater_id", "position", "item_id", "choice", "called_synthetic",
     "confidence", "realism", "comment", "seconds", "viewer_state", "submitted_at"],
    sa.select(
        trials.c.study_id, trials.c.rater_id, trials.c.position, trials.c.item_id,
        *(sa.bindparam(name, type_=kind) for name, kind in (
            ("choice", sa.String), ("called_synthetic", sa.Text), ("confidence", sa.Integer),
            ("realism", sa.Text), ("comment", sa.Text), ("seconds", sa.Float),
            ("viewer_state", sa.Text), ("submitted_at", sa.String))),
    ).where((trials.c.study_id == _KEY[0]) & (trials.c.rater_id == _KEY[1])
            & (trials.c.position == sa.bindparam("position", type_=sa.Integer))),
)  # fmt: skip
_CLEAR_DRAFT = drafts.delete().where(
    (drafts.c.study_id == _KEY[0]) & (drafts.c.rater_id == _KEY[1])
)
_INSERT_DRAFT = drafts.insert().values({c.name: sa.bindparam(c.name) for c in drafts.columns})
_UPDATE_DRAFT = (
    drafts.update()
    .where((drafts.c.study_id == sa.bindparam("key_study"))
           & (drafts.c.rater_id == sa.bindparam("key_rater")))
    .values(position=sa.bindparam("new_position"), state=sa.bindparam("new_state"),
            seconds=sa.bindparam("new_seconds"), updated_at=sa.bindparam("new_updated_at"))
)  # fmt: skip


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def now() -> str:
    """The current UTC time, ISO 8601 to the microsecond (the order of events)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def check_id(value: str, what: str) -> str:
    """``value`` when it is a usable study or rater id, else :class:`StudyError`."""
    if not isinstance(value, str) or not _ID.match(value):
        raise StudyError(
            f"{what} {value!r}: use 1-64 letters, digits, '.', '_' or '-', starting with a "
            "letter or digit"
        )
    return value


def database_url(db: str | Path) -> str:
    """A SQLAlchemy URL for ``db``: a URL as given, a path as a SQLite file."""
    text = str(db)
    if "://" in text:
        return text
    return f"sqlite:///{Path(text).expanduser().resolve()}"


def connect(db: str | Path, *, create: bool, what: str) -> tuple[str, Path | None, sa.Engine]:
    """``(URL, SQLite path or None, engine)`` for a study database or key.

    A SQLite file must exist unless ``create`` (a mistyped path must not silently start a
    new, empty one); it gets WAL mode, full fsync and foreign keys. A server connection is
    pinged before each use: a server may drop a pooled connection while a rater looks at a
    trial (restart, idle timeout, network).
    """
    url = database_url(db)
    path: Path | None = None
    connect_args: dict[str, Any] = {}
    options: dict[str, Any] = {} if url.startswith("sqlite:") else {"pool_pre_ping": True}
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not create and not path.is_file():
            raise StudyError(f"{path}: no such {what}")
        path.parent.mkdir(parents=True, exist_ok=True)
        connect_args = {"timeout": BUSY_TIMEOUT_S}
    try:
        engine = sa.create_engine(url, connect_args=connect_args, **options)
    except (sa.exc.ArgumentError, ImportError) as exc:
        raise StudyError(f"{db}: not a database URL SQLAlchemy can use ({exc})") from exc
    if engine.dialect.name == "sqlite":
        sa.event.listen(engine, "connect", _sqlite_pragmas)
    return url, path, engine


@dataclass(frozen=True)
class RaterInfo:
    """Who rates, as they signed in."""

    rater_id: str
    name: str | None
    role: str | None
    years: float | None
    signed_in_at: str | None


class RatingStore:
    """A study database. One per process; safe to open from many processes at once.

    Parameters
    ----------
    db : path or URL
        A SQLite file (created with its folder) or a SQLAlchemy database URL.
    create : bool
        Create the schema when the database is empty; otherwise an empty database is an
        error (a mistyped path must not silently start a new study).
    key : path, URL or KeyStore, optional
        The study's answer key (:class:`~.key.KeyStore`): needed for reports, curation,
        export and adding raters, never by a rater.
    """

    def __init__(self, db: str | Path, *, create: bool = False, key: Any = None):
        self.url, self.path, self.engine = connect(db, create=create, what="ratings database")
        self._sql: dict[Any, tuple[str, tuple[str, ...] | None]] = {}
        self._writer_lock = threading.Lock()
        self._writer: Any = None
        self._integrity_errors = (
            sa.exc.IntegrityError,
            self.engine.dialect.loaded_dbapi.IntegrityError,
        )
        self.key: Any = None
        self._checked_keys: set[str] = set()
        self._open(create)
        if self.engine.dialect.name == "sqlite":
            self._writer = self.engine.raw_connection()
        if key is not None:
            from napari_mrisynth.turing.key import KeyStore

            if isinstance(key, KeyStore):
                self.key = key
            else:
                self.key = KeyStore(key, create=create, beside=self)

    def __repr__(self) -> str:
        return f"RatingStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        with self._writer_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        self.engine.dispose()
        if self.key is not None:
            self.key.close()

    def __enter__(self) -> RatingStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema -----------------------------------------------------------------------------
    def _open(self, create: bool) -> None:
        where = self.path or self.url
        try:
            with self.engine.begin() as conn:
                if create and self.engine.dialect.name == "sqlite":
                    # The driver runs CREATE TABLE outside any transaction; take the write
                    # lock first so that two processes cannot both start creating.
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                has_meta = sa.inspect(conn).has_table("meta")
                if not has_meta:
                    if not create:
                        raise StudyError(f"{where}: not a ratings database (no schema)")
                    metadata.create_all(conn)
                    conn.execute(
                        meta_table.insert(),
                        [{"key": "schema_version", "value": str(SCHEMA_VERSION)},
                         {"key": "created_at", "value": now()}],
                    )  # fmt: skip
                    return
                row = conn.execute(
                    sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
                ).first()
                version = int(row[0]) if row else 0
                if version <= UNSEALED_VERSION:
                    raise StudyError(
                        f"{where}: this study file still holds its answer key (schema "
                        f"{version}); seal it before anyone rates from it: mrisynth study "
                        f"seal --db {where} --key <new key file>"
                    )
                if version > SCHEMA_VERSION:
                    raise StudyError(
                        f"{where}: schema version {version} is newer than this software's "
                        f"{SCHEMA_VERSION}; upgrade napari-mrisynth"
                    )
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    for statement in MIGRATIONS[step]:
                        conn.execute(sa.text(statement))
                    conn.execute(
                        meta_table.update().where(meta_table.c.key == "schema_version"),
                        {"value": str(step)},
                    )
        except sa.exc.DatabaseError as exc:
            if create and self._has_schema():
                # Another process (another site) created the schema between our look and
                # our CREATE: open what it made.
                return self._open(create=False)
            raise StudyError(f"{where}: cannot open the ratings database ({exc.orig})") from exc

    def _has_schema(self) -> bool:
        try:
            with self.engine.connect() as conn:
                return bool(sa.inspect(conn).has_table("meta"))
        except sa.exc.DatabaseError:
            return False

    @property
    def schema_version(self) -> int:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(meta_table.c.value).where(meta_table.c.key == "schema_version")
            ).one()
        return int(row[0])

    @contextmanager
    def transaction(self) -> Iterator[sa.Connection]:
        """One committed transaction (rolled back on any error)."""
        with self.engine.begin() as conn:
            yield conn

    def _run_prebuilt(self, *steps: tuple[Any, dict[str, Any]]) -> list[int]:
        """Run prebuilt statements in one committed transaction, straight on the database
        driver's connection, and return their row counts.

        The SQL comes from SQLAlchemy's compiler for this database (compiled once per
        statement); only the per-call execution machinery is skipped, which is most of the
        time of a rating's commit in a process that was idle (see docs/benchmarks.md).
        """
        with self._writer_lock:
            # SQLite: one driver connection kept for this store's writes (a pool checkout
            # costs as much as the SQL); a server: a fresh checkout, pinged, every time.
            raw = self._writer or self.engine.raw_connection()
            try:
                cursor = raw.cursor()
                counts = []
                for statement, params in steps:
                    sql, order = self._compiled(statement)
                    cursor.execute(sql, [params[k] for k in order] if order else params)
                    counts.append(cursor.rowcount)
                raw.commit()
                return counts
            except BaseException:
                raw.rollback()
                raise
            finally:
                if raw is not self._writer:
                    raw.close()

    def _compiled(self, statement: Any) -> tuple[str, tuple[str, ...] | None]:
        """(SQL, parameter names in order for positional drivers) of a prebuilt statement."""
        cached = self._sql.get(statement)
        if cached is None:
            compiled = statement.compile(dialect=self.engine.dialect)
            order = compiled.positiontup
            cached = self._sql[statement] = (compiled.string, tuple(order) if order else None)
        return cached

    # -- studies ----------------------------------------------------------------------------
    def study_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.select(studies.c.study_id).order_by("study_id"))]

    def study(self, study_id: str) -> dict[str, Any]:
        """The study row, JSON columns decoded; :class:`StudyError` when there is none."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(studies).where(studies.c.study_id == study_id)).first()
        if row is None:
            known = ", ".join(self.study_ids()) or "none"
            raise StudyError(f"{self}: no study {study_id!r} (studies: {known})")
        study = dict(row._mapping)
        for key in ("grid", "design"):
            study[key] = json.loads(study[key])
        return study

    def only_study(self) -> str:
        """The id of the database's one study (for commands that omit ``--study``)."""
        ids = self.study_ids()
        if len(ids) != 1:
            raise StudyError(
                f"{self}: holds {len(ids)} studies ({', '.join(ids) or 'none'}); name one"
            )
        return ids[0]

    def answer_key(self, study_id: str) -> Any:
        """The study's key (:class:`~.key.KeyStore`), checked once to be this study's: every
        volume id with the same prepared checksum. :class:`StudyError` without one."""
        if self.key is None:
            raise StudyError(
                f"{self}: the answer key is sealed away from the ratings; pass the study's "
                "key file (--key) to see which volume is real"
            )
        if study_id not in self._checked_keys:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    sa.select(volumes.c.volume_id, volumes.c.prepared_sha256)
                    .where(volumes.c.study_id == study_id)
                ).all()  # fmt: skip
            self.key.check_binding(study_id, dict(rows), where=str(self))
            self._checked_keys.add(study_id)
        return self.key

    def volumes(self, study_id: str) -> dict[str, dict[str, Any]]:
        """volume id -> its key row (with the answer, ``kind``): needs the key."""
        return self.answer_key(study_id).volumes(study_id)

    def volume_ids(self, study_id: str) -> list[str]:
        """The study's neutral volume ids (what a rater's file holds)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(volumes.c.volume_id).where(volumes.c.study_id == study_id)
                .order_by("volume_id")
            )  # fmt: skip
            return [r[0] for r in rows]

    def prepared_digest(self, study_id: str, volume_id: str) -> str:
        """The SHA-256 of a prepared volume's file: what a rater's session checks it against
        (and, unlike :meth:`volumes`, nothing that tells real from synthetic)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(volumes.c.prepared_sha256).where(
                    (volumes.c.study_id == study_id) & (volumes.c.volume_id == volume_id)
                )
            ).first()
        if row is None:
            raise StudyError(f"study {study_id!r}: no volume {volume_id!r}")
        return str(row[0])

    # -- raters -----------------------------------------------------------------------------
    def rater_ids(self, study_id: str) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(raters.c.rater_id).where(raters.c.study_id == study_id)
                .order_by("rater_id")
            )  # fmt: skip
            return [r[0] for r in rows]

    def rater(self, study_id: str, rater_id: str) -> RaterInfo:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(raters).where(
                    (raters.c.study_id == study_id) & (raters.c.rater_id == rater_id)
                )
            ).first()
        if row is None:
            known = ", ".join(self.rater_ids(study_id)) or "none"
            raise StudyError(f"study {study_id!r}: no rater {rater_id!r} (raters: {known})")
        m = row._mapping
        return RaterInfo(m["rater_id"], m["name"], m["role"], m["years"], m["signed_in_at"])

    def set_secret(self, study_id: str, rater_id: str, secret: str) -> None:
        """Store the salted hash of a rater's new secret (the secret itself never)."""
        from napari_mrisynth.turing.accounts import hash_secret

        self.rater(study_id, rater_id)
        with self.transaction() as conn:
            conn.execute(
                raters.update().where(
                    (raters.c.study_id == study_id) & (raters.c.rater_id == rater_id)
                ),
                {"secret_hash": hash_secret(secret)},
            )

    def authenticate(self, study_id: str, rater_id: str, secret: str) -> RaterInfo:
        """The rater, when ``secret`` is theirs; :class:`StudyError` otherwise. Every
        attempt, refused or accepted, is recorded in ``sign_ins``.

        An unknown rater id and a wrong secret get the same answer, so that the message
        does not tell a guesser which rater ids exist.
        """
        from napari_mrisynth.turing.accounts import verify_secret

        with self.engine.connect() as conn:
            stored = conn.execute(
                sa.select(raters.c.secret_hash).where(
                    (raters.c.study_id == study_id) & (raters.c.rater_id == rater_id)
                )
            ).first()
        accepted = stored is not None and verify_secret(secret or "", stored[0])
        with self.transaction() as conn:
            conn.execute(sign_ins.insert(), {"study_id": study_id, "rater_id": str(rater_id),
                                             "accepted": accepted, "at": now()})  # fmt: skip
        if not accepted:
            raise StudyError(
                f"study {study_id!r}: rater id {rater_id!r} and this secret do not match; "
                "sign-in refused (the attempt is recorded). Ask the study organiser for "
                "your secret"
            )
        return self.rater(study_id, rater_id)

    def sign_in_attempts(self, study_id: str) -> list[dict[str, Any]]:
        """Every sign-in attempt (rater id as typed, accepted or not, when), oldest first."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(sign_ins).where(sign_ins.c.study_id == study_id)
                .order_by(sign_ins.c.attempt_id)
            ).all()  # fmt: skip
        return [dict(row._mapping) for row in rows]

    def sign_in(self, study_id: str, rater_id: str, *, name: str, role: str,
                years: float) -> RaterInfo:  # fmt: skip
        """Record who the rater is (name, role, years of experience) at sign-in."""
        self.rater(study_id, rater_id)
        if not name.strip():
            raise StudyError(f"rater {rater_id!r}: a name is needed to sign in")
        if not (0 <= float(years) <= 70):
            raise StudyError(f"rater {rater_id!r}: years of experience {years} is not 0-70")
        with self.transaction() as conn:
            conn.execute(
                raters.update().where(
                    (raters.c.study_id == study_id) & (raters.c.rater_id == rater_id)
                ),
                {"name": name.strip(), "role": role.strip(), "years": float(years),
                 "signed_in_at": now()},
            )  # fmt: skip
        return self.rater(study_id, rater_id)

    # -- trials and ratings -----------------------------------------------------------------
    def trial_count(self, study_id: str, rater_id: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(trials)
                    .where((trials.c.study_id == study_id) & (trials.c.rater_id == rater_id))
                ).scalar_one()
            )

    def trial(self, study_id: str, rater_id: str, position: int) -> dict[str, Any]:
        """The item and the volume ids shown, left to right, at ``position`` (0-based)."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(trials.c.item_id, trials.c.shown).where(
                    (trials.c.study_id == study_id) & (trials.c.rater_id == rater_id)
                    & (trials.c.position == position)
                )
            ).first()  # fmt: skip
        if row is None:
            raise StudyError(f"study {study_id!r}, rater {rater_id!r}: no trial {position + 1}")
        return {"item_id": row[0], "shown": json.loads(row[1]), "position": position}

    def rated_positions(self, study_id: str, rater_id: str) -> set[int]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(ratings.c.position).where(
                    (ratings.c.study_id == study_id) & (ratings.c.rater_id == rater_id)
                )
            )
            return {int(r[0]) for r in rows}

    def add_rating(self, study_id: str, rater_id: str, position: int, *, choice: str,
                   called_synthetic: Sequence[bool], confidence: int,
                   realism: Sequence[int | None], comment: str, seconds: float,
                   viewer_state: dict[str, Any]) -> str:  # fmt: skip
        """Commit one rating (and clear the rater's draft) in one transaction.

        Returns the commit time. A trial already rated is refused: ratings are never
        overwritten.
        """
        submitted = now()
        values = {"study_id": study_id, "rater_id": rater_id, "position": position,
                  "choice": choice,
                  "called_synthetic": json.dumps([bool(v) for v in called_synthetic]),
                  "confidence": int(confidence),
                  "realism": json.dumps([None if v is None else int(v) for v in realism]),
                  "comment": comment, "seconds": float(seconds),
                  "viewer_state": json.dumps(viewer_state, sort_keys=True),
                  "submitted_at": submitted}  # fmt: skip
        try:
            inserted, _ = self._run_prebuilt(
                (_RATE, values), (_CLEAR_DRAFT, {"study_id": study_id, "rater_id": rater_id})
            )
        except self._integrity_errors as exc:
            raise StudyError(
                f"study {study_id!r}, rater {rater_id!r}: trial {position + 1} is already "
                "rated; ratings are never overwritten"
            ) from exc
        if inserted != 1:
            raise StudyError(f"study {study_id!r}, rater {rater_id!r}: no trial {position + 1}")
        return submitted

    def save_draft(self, study_id: str, rater_id: str, position: int, state: dict[str, Any],
                   seconds: float) -> None:  # fmt: skip
        """Keep the answers so far and the time on the trial, for a resume after a crash."""
        row = {"study_id": study_id, "rater_id": rater_id, "position": position,
               "state": json.dumps(state, sort_keys=True), "seconds": float(seconds),
               "updated_at": now()}  # fmt: skip
        changes = {"key_study": study_id, "key_rater": rater_id,
                   **{f"new_{k}": v for k, v in row.items() if k not in _KEYS}}  # fmt: skip
        for attempt in range(3):
            try:
                (updated,) = self._run_prebuilt((_UPDATE_DRAFT, changes))
                if updated == 0:
                    self._run_prebuilt((_INSERT_DRAFT, row))
                return
            except self._integrity_errors:
                # The same rater's draft was inserted by another process between our update
                # and insert (a server runs writers side by side; SQLite serialises them):
                # the row exists now, so update it.
                if attempt == 2:
                    raise

    def draft(self, study_id: str, rater_id: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(drafts).where(
                    (drafts.c.study_id == study_id) & (drafts.c.rater_id == rater_id)
                )
            ).first()
        if row is None:
            return None
        draft = dict(row._mapping)
        draft["state"] = json.loads(draft["state"])
        return draft

    def ratings(self, study_id: str) -> list[dict[str, Any]]:
        """Every rating with its trial, the rater and the truth (needs the key), in
        submission order."""
        query = (
            sa.select(ratings, trials.c.shown, raters.c.name, raters.c.role, raters.c.years)
            .join(trials, (trials.c.study_id == ratings.c.study_id)
                  & (trials.c.rater_id == ratings.c.rater_id)
                  & (trials.c.position == ratings.c.position))
            .join(raters, (raters.c.study_id == ratings.c.study_id)
                  & (raters.c.rater_id == ratings.c.rater_id))
            .where(ratings.c.study_id == study_id)
            .order_by(ratings.c.submitted_at, ratings.c.rater_id, ratings.c.position)
        )  # fmt: skip
        kinds = self.answer_key(study_id).kinds(study_id)
        out = []
        with self.engine.connect() as conn:
            for row in conn.execute(query):
                entry = dict(row._mapping)
                for key in ("shown", "called_synthetic", "realism", "viewer_state"):
                    entry[key] = json.loads(entry[key])
                entry["synthetic"] = [kinds[v] == "synthetic" for v in entry["shown"]]
                out.append(entry)
        return out

    # -- curation (in the key) -------------------------------------------------------------
    def add_audit(self, study_id: str, rows: Sequence[dict[str, Any]], train: str) -> None:
        """Store memorization-audit results in the key (see :meth:`.key.KeyStore.add_audit`)."""
        self.answer_key(study_id).add_audit(study_id, rows, train)

    def audits(self, study_id: str) -> dict[str, dict[str, Any]]:
        return self.answer_key(study_id).audits(study_id)

    def add_decision(self, study_id: str, volume_id: str, decision: str, *, curator: str,
                     reason: str, failures: Sequence[str] = (),
                     override: bool = False) -> dict[str, Any]:  # fmt: skip
        """Append a curator's decision to the key (see :meth:`.key.KeyStore.add_decision`)."""
        return self.answer_key(study_id).add_decision(
            study_id, volume_id, decision, curator=curator, reason=reason, failures=failures,
            override=override,
        )  # fmt: skip

    def decisions(self, study_id: str) -> dict[str, dict[str, Any]]:
        """volume id -> its latest decision."""
        return self.answer_key(study_id).decisions(study_id)


@contextmanager
def opened(db: str | Path | RatingStore, key: Any = None) -> Iterator[RatingStore]:
    """``db`` itself when it is a store, else a store (with ``key``, the study's answer key,
    when given) opened for the block and closed after."""
    if isinstance(db, RatingStore):
        if key is not None and db.key is None:
            raise StudyError(f"{db}: opened without its key; open it with key={key!r}")
        yield db
        return
    store = RatingStore(db, key=key)
    try:
        yield store
    finally:
        store.close()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    # Switching a file to WAL needs a lock that SQLite may refuse at once, without waiting
    # out the busy timeout, while other processes open or create the same file (seen once
    # in six processes creating one study under load): retry until the busy timeout.
    deadline, pause = time.monotonic() + BUSY_TIMEOUT_S, 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(2 * pause, 0.25)
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
