"""The schemas of a study: what raters reach (``metadata``) and its sealed key (``key_metadata``).

What a rater's file (SQLite) or database role (a server) holds, one table per fact:
``studies`` (mode, seed, grid, cache and counts), ``volumes`` (neutral id and the prepared
file's checksum, nothing else), ``items`` and ``trials`` (the frozen design, per rater and
position), ``raters`` (with a salted hash of each rater's secret), ``sign_ins`` (every
attempt, refused ones too), ``ratings`` (insert-only) and ``drafts`` (the only rows that
change). Nothing in them says which volume is real.

The answer key lives apart: a separate SQLite file, or ``key_*`` tables that a server's
rater role is not granted (:func:`napari_mrisynth.turing.key.grant_rater_role`):
``key_studies`` (where the volumes came from), ``key_volumes`` (each volume's ``kind``,
source, checksums, condition, provenance, mask), ``key_audits`` and ``key_decisions``
(curation). :mod:`.store` and :mod:`.key` read and write them.
"""

from __future__ import annotations

import sqlalchemy as sa

#: Bump with a migration in ``MIGRATIONS`` whenever a table changes. Version 1 held the
#: answer key in the raters' file; :func:`napari_mrisynth.turing.key.seal` moves it out.
SCHEMA_VERSION = 2

#: The last version that held the answer key beside the ratings.
UNSEALED_VERSION = 1

#: version -> statements that bring a database from ``version - 1`` to ``version`` (from
#: version 2 on; 1 -> 2 needs a place for the key and is :func:`~.key.seal`).
MIGRATIONS: dict[int, tuple[str, ...]] = {}

#: The key's own schema version (``key_meta.schema_version``).
KEY_SCHEMA_VERSION = 1

metadata = sa.MetaData()

meta_table = sa.Table(
    "meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)  # fmt: skip

studies = sa.Table(
    "studies", metadata,
    sa.Column("study_id", sa.String(64), primary_key=True),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("mode", sa.String(8), nullable=False),
    sa.Column("seed", sa.BigInteger, nullable=False),
    sa.Column("trials_per_rater", sa.Integer, nullable=False),
    sa.Column("grid", sa.Text, nullable=False),  # JSON: spacing, shape, preparation
    sa.Column("cache", sa.Text, nullable=False),  # folder of prepared volumes
    sa.Column("design", sa.Text, nullable=False),  # JSON: counts and raters, no source
)  # fmt: skip

volumes = sa.Table(
    "volumes", metadata,
    sa.Column("study_id", sa.String(64), sa.ForeignKey("studies.study_id"), primary_key=True),
    sa.Column("volume_id", sa.String(16), primary_key=True),
    sa.Column("prepared_sha256", sa.String(64), nullable=False),
)  # fmt: skip

items = sa.Table(
    "items", metadata,
    sa.Column("study_id", sa.String(64), sa.ForeignKey("studies.study_id"), primary_key=True),
    sa.Column("item_id", sa.String(16), primary_key=True),
    sa.Column("volumes", sa.Text, nullable=False),  # JSON list of volume ids
)  # fmt: skip

raters = sa.Table(
    "raters", metadata,
    sa.Column("study_id", sa.String(64), sa.ForeignKey("studies.study_id"), primary_key=True),
    sa.Column("rater_id", sa.String(64), primary_key=True),
    sa.Column("name", sa.Text),
    sa.Column("role", sa.Text),
    sa.Column("years", sa.Float),
    sa.Column("added_at", sa.String(32), nullable=False),
    sa.Column("signed_in_at", sa.String(32)),
    sa.Column("secret_hash", sa.Text),  # "scrypt$n$r$p$salt$hash" (see .accounts)
)  # fmt: skip

sign_ins = sa.Table(
    "sign_ins", metadata,
    sa.Column("attempt_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_id", sa.String(64), nullable=False),
    sa.Column("rater_id", sa.String(64), nullable=False),  # as typed, known or not
    sa.Column("accepted", sa.Boolean, nullable=False),
    sa.Column("at", sa.String(32), nullable=False),
    # no RETURNING: a server's row-level security lets a rater's role record an attempt under
    # any id typed but read back only its own
    implicit_returning=False,
)  # fmt: skip

trials = sa.Table(
    "trials", metadata,
    sa.Column("study_id", sa.String(64), primary_key=True),
    sa.Column("rater_id", sa.String(64), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.String(16), nullable=False),
    sa.Column("shown", sa.Text, nullable=False),  # JSON list of volume ids, left to right
    sa.ForeignKeyConstraint(["study_id", "rater_id"], ["raters.study_id", "raters.rater_id"]),
)  # fmt: skip

ratings = sa.Table(
    "ratings", metadata,
    sa.Column("study_id", sa.String(64), primary_key=True),
    sa.Column("rater_id", sa.String(64), primary_key=True),
    sa.Column("position", sa.Integer, primary_key=True),
    sa.Column("item_id", sa.String(16), nullable=False),
    sa.Column("choice", sa.String(16), nullable=False),  # "A"/"B" (pair) or "real"/"synthetic"
    sa.Column("called_synthetic", sa.Text, nullable=False),  # JSON list of bool per shown volume
    sa.Column("confidence", sa.Integer, nullable=False),
    sa.Column("realism", sa.Text, nullable=False),  # JSON list of int|None per shown volume
    sa.Column("comment", sa.Text, nullable=False),
    sa.Column("seconds", sa.Float, nullable=False),
    sa.Column("viewer_state", sa.Text, nullable=False),  # JSON
    sa.Column("submitted_at", sa.String(32), nullable=False),
    sa.ForeignKeyConstraint(
        ["study_id", "rater_id", "position"],
        ["trials.study_id", "trials.rater_id", "trials.position"],
    ),
)  # fmt: skip

drafts = sa.Table(
    "drafts", metadata,
    sa.Column("study_id", sa.String(64), primary_key=True),
    sa.Column("rater_id", sa.String(64), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("state", sa.Text, nullable=False),  # JSON: answers so far, viewer state
    sa.Column("seconds", sa.Float, nullable=False),  # time on the trial so far
    sa.Column("updated_at", sa.String(32), nullable=False),
)  # fmt: skip

# -- the answer key ---------------------------------------------------------------------------
key_metadata = sa.MetaData()

key_meta = sa.Table(
    "key_meta", key_metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)  # fmt: skip

key_studies = sa.Table(
    "key_studies", key_metadata,
    sa.Column("study_id", sa.String(64), primary_key=True),
    sa.Column("design", sa.Text, nullable=False),  # JSON: the folders offered and counts
)  # fmt: skip

key_volumes = sa.Table(
    "key_volumes", key_metadata,
    sa.Column("study_id", sa.String(64), primary_key=True),
    sa.Column("volume_id", sa.String(16), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "real" or "synthetic": the answer
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("source_sha256", sa.String(64), nullable=False),
    sa.Column("prepared_sha256", sa.String(64), nullable=False),  # binds the key to its study
    sa.Column("condition", sa.Text, nullable=False),  # JSON
    sa.Column("provenance", sa.Text, nullable=False),  # JSON: the generator's sidecar, or {}
    sa.Column("mask", sa.Text),  # a corrected mask on the volume's grid, when there is one
)  # fmt: skip

audits = sa.Table(
    "key_audits", key_metadata,
    sa.Column("study_id", sa.String(64), primary_key=True),
    sa.Column("volume_id", sa.String(16), primary_key=True),
    sa.Column("nearest", sa.Text, nullable=False),
    sa.Column("similarity", sa.Float, nullable=False),
    sa.Column("threshold", sa.Float, nullable=False),
    sa.Column("flagged", sa.Boolean, nullable=False),
    sa.Column("train", sa.Text, nullable=False),
    sa.Column("audited_at", sa.String(32), nullable=False),
)  # fmt: skip

decisions = sa.Table(
    "key_decisions", key_metadata,
    sa.Column("decision_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_id", sa.String(64), nullable=False),
    sa.Column("volume_id", sa.String(16), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),  # "approved" or "rejected"
    sa.Column("curator", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decided_at", sa.String(32), nullable=False),
    # an approval against the study's rules: the rules it failed, as the curator saw them
    sa.Column("override", sa.Boolean, nullable=False, default=False),
    sa.Column("failures", sa.Text, nullable=False, default="[]"),  # JSON list of str
)  # fmt: skip
