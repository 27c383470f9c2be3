"""A study's answer key, sealed away from what raters can open.

The key says which volume is real, where each came from (sources, checksums, provenance,
conditions, masks) and holds curation (memorization audits, curators' decisions). It is a
database of its own, :class:`KeyStore`:

* a **separate SQLite file** for a SQLite study: the organiser keeps it, raters get only the
  study file (and the prepared volumes, named by neutral id);
* **``key_*`` tables on a server**, in the study's database or another one. The role raters
  connect as is granted only the rater tables (:func:`grant_rater_role`), so their
  credentials cannot read the key even with a SQL shell.

Reports, curation, export and adding raters open the key explicitly (``key=``). A key is
bound to its study: on first use every volume id must carry the same prepared-file checksum
in both, so a key from another study (or another version of it) is refused.

:func:`seal` moves the key out of a study file written before the key was sealed (schema 1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from napari_mrisynth.turing.schema import (
    KEY_SCHEMA_VERSION,
    SCHEMA_VERSION,
    UNSEALED_VERSION,
    audits,
    decisions,
    key_meta,
    key_metadata,
    key_studies,
    key_volumes,
    metadata,
)
from napari_mrisynth.turing.store import StudyError, connect, database_url, now

#: The tables a rater's role may use, and how (everything else, the key, it may not).
RATER_GRANTS = {
    "meta": "SELECT",
    "studies": "SELECT",
    "volumes": "SELECT",
    "items": "SELECT",
    "trials": "SELECT",
    # sign-in writes who the rater is; never the secret's hash
    "raters": 'SELECT, UPDATE ("name", "role", "years", "signed_in_at")',
    "sign_ins": "SELECT, INSERT",
    "ratings": "SELECT, INSERT",
    "drafts": "SELECT, INSERT, UPDATE, DELETE",
}


class KeyStore:
    """The answer key of one or more studies.

    Parameters
    ----------
    key : path or URL
        A SQLite file (created with ``create``) or a SQLAlchemy database URL.
    create : bool
        Create the key's tables when missing.
    beside : RatingStore, optional
        The study database it belongs to: a SQLite key may not be that same file.
    """

    def __init__(self, key: str | Path, *, create: bool = False, beside: Any = None):
        url = database_url(key)
        if beside is not None and beside.path is not None and url == beside.url:
            raise StudyError(
                f"{key}: the key must be a file of its own, not the study file raters open"
            )
        self.url, self.path, self.engine = connect(key, create=create, what="study key file")
        where = self.path or self.url
        try:
            with self.engine.begin() as conn:
                if create and self.engine.dialect.name == "sqlite":
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
                if not sa.inspect(conn).has_table("key_meta"):
                    if not create:
                        raise StudyError(f"{where}: not a study key (no key tables)")
                    key_metadata.create_all(conn)
                    conn.execute(key_meta.insert(), [
                        {"key": "schema_version", "value": str(KEY_SCHEMA_VERSION)},
                        {"key": "created_at", "value": now()},
                    ])  # fmt: skip
                    return
                row = conn.execute(
                    sa.select(key_meta.c.value).where(key_meta.c.key == "schema_version")
                ).first()
                if row is None or int(row[0]) > KEY_SCHEMA_VERSION:
                    raise StudyError(
                        f"{where}: key schema {row[0] if row else '?'} is not one this "
                        f"software reads ({KEY_SCHEMA_VERSION}); upgrade napari-mrisynth"
                    )
        except sa.exc.DatabaseError as exc:
            raise StudyError(f"{where}: cannot open the study key ({exc.orig})") from exc

    def __repr__(self) -> str:
        return f"KeyStore({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- a study's key ----------------------------------------------------------------------
    def study_ids(self) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(key_studies.c.study_id).order_by("study_id"))
            return [r[0] for r in rows]

    def add_study(self, study_id: str, design: Mapping[str, Any],
                  volume_rows: Sequence[Mapping[str, Any]]) -> None:  # fmt: skip
        """Write a study's key: its design (sources) and one row per volume."""
        if study_id in self.study_ids():
            raise StudyError(f"{self}: already holds the key of a study {study_id!r}")
        with self.engine.begin() as conn:
            conn.execute(key_studies.insert(), {"study_id": study_id,
                                                "design": json.dumps(dict(design))})  # fmt: skip
            conn.execute(key_volumes.insert(), [
                {**row, "study_id": study_id,
                 "condition": json.dumps(row.get("condition") or {}, sort_keys=True),
                 "provenance": json.dumps(row.get("provenance") or {}, sort_keys=True)}
                for row in volume_rows
            ])  # fmt: skip

    def remove_study(self, study_id: str) -> None:
        """Delete a study's key rows (a study whose creation failed after its key)."""
        with self.engine.begin() as conn:
            for table in (key_volumes, key_studies, audits, decisions):
                conn.execute(table.delete().where(table.c.study_id == study_id))

    def check_binding(self, study_id: str, prepared: Mapping[str, str], *, where: str) -> None:
        """Refuse a key that is not this study's: the same volume ids, each with the same
        prepared-file checksum (``prepared``: volume id -> SHA-256, from the study file)."""
        mine = {v: r["prepared_sha256"] for v, r in self.volumes(study_id).items()}
        if mine != dict(prepared):
            differ = sorted(set(mine) ^ set(prepared)) or sorted(
                v for v in mine if mine[v] != prepared[v]
            )
            raise StudyError(
                f"{self}: not the key of study {study_id!r} in {where} (volumes "
                f"{', '.join(differ[:5])} differ); use the key written when the study was made"
            )

    def volumes(self, study_id: str) -> dict[str, dict[str, Any]]:
        """volume id -> key row (kind, source, checksums, condition, provenance, mask)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(key_volumes).where(key_volumes.c.study_id == study_id)
                .order_by("volume_id")
            ).all()  # fmt: skip
        if not rows:
            raise StudyError(f"{self}: holds no key of study {study_id!r}")
        out = {}
        for row in rows:
            entry = dict(row._mapping)
            entry["condition"] = json.loads(entry["condition"])
            entry["provenance"] = json.loads(entry["provenance"])
            out[entry["volume_id"]] = entry
        return out

    def kinds(self, study_id: str) -> dict[str, str]:
        """volume id -> "real" or "synthetic"."""
        return {v: row["kind"] for v, row in self.volumes(study_id).items()}

    # -- curation ---------------------------------------------------------------------------
    def add_audit(self, study_id: str, rows: Sequence[dict[str, Any]], train: str) -> None:
        """Store memorization-audit results (one row per synthetic volume), replacing any
        earlier audit of the same volumes."""
        stamp = now()
        with self.engine.begin() as conn:
            for row in rows:
                conn.execute(
                    audits.delete().where(
                        (audits.c.study_id == study_id) & (audits.c.volume_id == row["volume_id"])
                    )
                )
                conn.execute(
                    audits.insert(),
                    {"study_id": study_id, "volume_id": row["volume_id"],
                     "nearest": str(row["nearest"]), "similarity": float(row["similarity"]),
                     "threshold": float(row["threshold"]), "flagged": bool(row["flagged"]),
                     "train": train, "audited_at": stamp},
                )  # fmt: skip

    def audits(self, study_id: str) -> dict[str, dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(audits).where(audits.c.study_id == study_id)).all()
        return {row.volume_id: dict(row._mapping) for row in rows}

    def add_decision(self, study_id: str, volume_id: str, decision: str, *, curator: str,
                     reason: str, failures: Sequence[str] = (),
                     override: bool = False) -> dict[str, Any]:  # fmt: skip
        """Append a curator's decision; the latest decision per volume counts.

        ``failures`` are the study's rules the volume fails as the curator saw them. An
        approval despite any needs ``override`` and a reason: both go into the record (and
        the export manifest).
        """
        if decision not in ("approved", "rejected"):
            raise StudyError(f"decision {decision!r}: use 'approved' or 'rejected'")
        if not curator.strip():
            raise StudyError("a decision needs the curator's name")
        if decision == "rejected" and not reason.strip():
            raise StudyError(f"{volume_id}: a rejection needs a reason")
        if self.kinds(study_id).get(volume_id) != "synthetic":
            raise StudyError(f"study {study_id!r}: {volume_id!r} is not a synthetic volume")
        failures = [str(f) for f in failures]
        if decision == "approved" and failures:
            if not override:
                raise StudyError(
                    f"{volume_id} fails the study's rules ({'; '.join(failures)}); approving "
                    "it needs an explicit override with a reason (--override --reason ...)"
                )
            if not reason.strip():
                raise StudyError(f"{volume_id}: an override needs a reason")
        row = {"study_id": study_id, "volume_id": volume_id, "decision": decision,
               "curator": curator.strip(), "reason": reason.strip(), "decided_at": now(),
               "override": bool(decision == "approved" and failures),
               "failures": json.dumps(failures)}  # fmt: skip
        with self.engine.begin() as conn:
            conn.execute(decisions.insert(), row)
        return {**row, "failures": failures}

    def decisions(self, study_id: str) -> dict[str, dict[str, Any]]:
        """volume id -> its latest decision."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(decisions).where(decisions.c.study_id == study_id)
                .order_by(decisions.c.decision_id)
            ).all()  # fmt: skip
        latest = {}
        for row in rows:
            entry = dict(row._mapping)
            entry["failures"] = json.loads(entry["failures"] or "[]")
            entry["override"] = bool(entry["override"])
            latest[row.volume_id] = entry
        return latest


# -- a server's rater role ----------------------------------------------------------------------
#: Row-level security on a server: which rater's rows a role may see and write. ``rater_id``
#: ``*`` is a role shared by every rater of a study (the software then keeps them apart).
RATER_ROLES_DDL = """CREATE TABLE IF NOT EXISTS rater_roles (
    role_name TEXT NOT NULL, study_id VARCHAR(64) NOT NULL, rater_id VARCHAR(64) NOT NULL,
    PRIMARY KEY (role_name, study_id, rater_id))"""

#: table -> (command, USING?, WITH CHECK?) of its row policies for rater roles. Sign-in
#: attempts may be recorded under any id typed (a wrong one too) but read only for one's own.
_RLS = {
    "raters": (("SELECT", True, False), ("UPDATE", True, True)),
    "trials": (("SELECT", True, False),),
    "ratings": (("SELECT", True, False), ("INSERT", False, True)),
    "drafts": (("ALL", True, True),),
    "sign_ins": (("SELECT", True, False), ("INSERT", None, None)),
}


def _own_rows(table: str) -> str:
    return (
        f"EXISTS (SELECT 1 FROM rater_roles r WHERE r.role_name = current_user "
        f"AND r.study_id = {table}.study_id AND r.rater_id IN ({table}.rater_id, '*'))"
    )


def grant_rater_role(db: str, role: str, *, rater: str | None = None,
                     study_id: str | None = None) -> None:  # fmt: skip
    """Let the PostgreSQL role ``role`` rate a study in ``db`` and read nothing of its key.

    Run with an owner's credentials. The role gets the rater tables (:data:`RATER_GRANTS`)
    and nothing on the ``key_*`` tables, from which PUBLIC's rights are revoked too. Row-level
    security on the raters' tables then shows a role only its own rater's rows: with
    ``rater``, the role is that rater's alone (it can neither read nor rate another rater's
    trials, whatever SQL it runs); without, it is shared by every rater of the study.
    """
    from napari_mrisynth.turing.store import check_id

    check_id(role, "role")
    if rater is not None:
        check_id(rater, "rater id")
    url, path, engine = connect(db, create=False, what="ratings database")
    if path is not None or engine.dialect.name != "postgresql":
        engine.dispose()
        raise StudyError(
            f"{db}: rater roles are a server's (PostgreSQL); a SQLite study keeps its key "
            "in a separate file instead"
        )
    quote = engine.dialect.identifier_preparer.quote
    try:
        with engine.begin() as conn:
            studies = [r[0] for r in conn.exec_driver_sql("SELECT study_id FROM studies")]
            if study_id is None:
                if len(studies) != 1:
                    raise StudyError(f"{db}: holds {len(studies)} studies; name one (--study)")
                study_id = studies[0]
            elif study_id not in studies:
                raise StudyError(f"{db}: no study {study_id!r}")
            if rater is not None:
                known = conn.execute(
                    sa.text("SELECT 1 FROM raters WHERE study_id = :s AND rater_id = :r"),
                    {"s": study_id, "r": rater},
                ).first()
                if known is None:
                    raise StudyError(f"study {study_id!r}: no rater {rater!r}")
            names = sa.inspect(conn).get_table_names()
            for table in key_metadata.sorted_tables:
                if table.name in names:
                    conn.exec_driver_sql(f"REVOKE ALL ON {quote(table.name)} FROM PUBLIC")
                    conn.exec_driver_sql(f"REVOKE ALL ON {quote(table.name)} FROM {quote(role)}")
            for table, rights in RATER_GRANTS.items():
                conn.exec_driver_sql(f"GRANT {rights} ON {quote(table)} TO {quote(role)}")
            # sign-in attempts: the serial behind attempt_id
            conn.exec_driver_sql(
                f"GRANT USAGE ON SEQUENCE {quote('sign_ins_attempt_id_seq')} TO {quote(role)}"
            )
            conn.exec_driver_sql(RATER_ROLES_DDL)
            conn.exec_driver_sql("REVOKE ALL ON rater_roles FROM PUBLIC")
            conn.exec_driver_sql(f"GRANT SELECT ON rater_roles TO {quote(role)}")
            conn.execute(
                sa.text("INSERT INTO rater_roles VALUES (:role, :study, :rater) "
                        "ON CONFLICT DO NOTHING"),
                {"role": role, "study": study_id, "rater": rater or "*"},
            )  # fmt: skip
            for table, policies in _RLS.items():
                conn.exec_driver_sql(f"ALTER TABLE {quote(table)} ENABLE ROW LEVEL SECURITY")
                for command, using, check in policies:
                    name = quote(f"mrisynth_{command.lower()}")
                    conn.exec_driver_sql(f"DROP POLICY IF EXISTS {name} ON {quote(table)}")
                    rule = f"CREATE POLICY {name} ON {quote(table)} FOR {command}"
                    if using:
                        rule += f" USING ({_own_rows(table)})"
                    if check:
                        rule += f" WITH CHECK ({_own_rows(table)})"
                    elif check is None:
                        rule += " WITH CHECK (true)"
                    conn.exec_driver_sql(rule)
    except sa.exc.DatabaseError as exc:
        raise StudyError(f"{db}: cannot grant role {role!r} ({exc.orig})") from exc
    finally:
        engine.dispose()


# -- sealing a study file written before the key was sealed -------------------------------------
_KEY_COLUMNS = ("kind", "source", "source_sha256", "condition", "provenance", "mask")


def seal(db: str | Path, key: str | Path) -> dict[str, dict[str, str]]:
    """Move the answer key out of a study database written with schema 1 into ``key``.

    The kinds, sources, provenance, conditions, masks, audits and decisions go to the key;
    the study file keeps neutral ids and checksums, its items list their volumes in id
    order (schema 1 listed the real one first), and every rater gets a secret. A SQLite
    file is vacuumed and its write-ahead log truncated, so no deleted page still holds the
    key. Returns study id -> rater id -> the new secret (shown once; only hashes are kept).
    """
    from napari_mrisynth.turing.accounts import hash_secret, new_secret

    url, path, engine = connect(db, create=False, what="ratings database")
    where = path or url
    try:
        with engine.connect() as conn:
            names = set(sa.inspect(conn).get_table_names())
            if "meta" not in names:
                raise StudyError(f"{where}: not a ratings database (no schema)")
            version = int(conn.exec_driver_sql(
                "SELECT value FROM meta WHERE key = 'schema_version'").scalar_one())  # fmt: skip
            if version > UNSEALED_VERSION:
                raise StudyError(f"{where}: already sealed (schema {version})")
            old = sa.MetaData()
            old.reflect(conn, only=[n for n in ("studies", "volumes", "audits", "decisions",
                                                "items", "raters") if n in names])  # fmt: skip

            def rows(name: str) -> list[dict[str, Any]]:
                if name not in old.tables:
                    return []
                return [dict(r._mapping) for r in conn.execute(sa.select(old.tables[name]))]

            studies_rows, volume_rows = rows("studies"), rows("volumes")
            audit_rows, decision_rows = rows("audits"), rows("decisions")
            item_rows, rater_rows = rows("items"), rows("raters")
    except sa.exc.DatabaseError as exc:
        engine.dispose()
        raise StudyError(f"{where}: cannot read the study to seal it ({exc.orig})") from exc

    keystore = KeyStore(key, create=True)
    if keystore.url == url:
        keystore.close()
        engine.dispose()
        raise StudyError(f"{key}: the key must be a file of its own, not the study file")
    try:
        for study in studies_rows:
            sid = study["study_id"]
            keystore.add_study(sid, json.loads(study["design"]), [
                {k: v[k] for k in ("volume_id", "prepared_sha256", *_KEY_COLUMNS)}
                | {"condition": json.loads(v["condition"]),
                   "provenance": json.loads(v["provenance"])}
                for v in volume_rows if v["study_id"] == sid
            ])  # fmt: skip
        with keystore.engine.begin() as conn:
            if audit_rows:
                conn.execute(audits.insert(), audit_rows)
            if decision_rows:
                conn.execute(decisions.insert(), [
                    {**{k: v for k, v in row.items() if k != "decision_id"},
                     "override": False, "failures": "[]"} for row in decision_rows
                ])  # fmt: skip
    finally:
        keystore.close()

    secrets_out: dict[str, dict[str, str]] = {}
    with engine.begin() as conn:
        for column in _KEY_COLUMNS:
            conn.exec_driver_sql(f"ALTER TABLE volumes DROP COLUMN {column}")
        for table in ("audits", "decisions"):
            if table in names:
                conn.exec_driver_sql(f"DROP TABLE {table}")
        for study in studies_rows:
            design = json.loads(study["design"])
            neutral = {k: design[k] for k in ("raters", "items") if k in design}
            conn.execute(sa.text("UPDATE studies SET design = :d WHERE study_id = :s"),
                         {"d": json.dumps(neutral), "s": study["study_id"]})  # fmt: skip
        for item in item_rows:
            conn.execute(
                sa.text("UPDATE items SET volumes = :v WHERE study_id = :s AND item_id = :i"),
                {"v": json.dumps(sorted(json.loads(item["volumes"]))),
                 "s": item["study_id"], "i": item["item_id"]},
            )  # fmt: skip
        conn.exec_driver_sql("ALTER TABLE raters ADD COLUMN secret_hash TEXT")
        metadata.tables["sign_ins"].create(conn)
        for rater in rater_rows:
            secret = new_secret()
            secrets_out.setdefault(rater["study_id"], {})[rater["rater_id"]] = secret
            conn.execute(
                sa.text("UPDATE raters SET secret_hash = :h WHERE study_id = :s AND rater_id = :r"),
                {"h": hash_secret(secret), "s": rater["study_id"], "r": rater["rater_id"]},
            )
        conn.execute(sa.text("UPDATE meta SET value = :v WHERE key = 'schema_version'"),
                     {"v": str(SCHEMA_VERSION)})  # fmt: skip
    if engine.dialect.name == "sqlite":
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.exec_driver_sql("VACUUM")
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    engine.dispose()
    return secrets_out
