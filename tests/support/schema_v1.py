"""The study database schema of napari-mrisynth before the answer key was sealed (schema 1),
frozen here so the tests can write a study file as that version did and check that
:func:`napari_mrisynth.turing.key.seal` moves its key out. Do not change it: it is a record
of files that exist, not of the current schema."""

from __future__ import annotations

import sqlalchemy as sa

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
    sa.Column("design", sa.Text, nullable=False),  # JSON: how it was made (sources, counts)
)  # fmt: skip

volumes = sa.Table(
    "volumes", metadata,
    sa.Column("study_id", sa.String(64), sa.ForeignKey("studies.study_id"), primary_key=True),
    sa.Column("volume_id", sa.String(16), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # "real" or "synthetic": the answer
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("source_sha256", sa.String(64), nullable=False),
    sa.Column("prepared_sha256", sa.String(64), nullable=False),
    sa.Column("condition", sa.Text, nullable=False),  # JSON
    sa.Column("provenance", sa.Text, nullable=False),  # JSON: the generator's sidecar, or {}
    sa.Column("mask", sa.Text),  # a corrected mask on the volume's grid, when there is one
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

audits = sa.Table(
    "audits", metadata,
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
    "decisions", metadata,
    sa.Column("decision_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("study_id", sa.String(64), nullable=False),
    sa.Column("volume_id", sa.String(16), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),  # "approved" or "rejected"
    sa.Column("curator", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("decided_at", sa.String(32), nullable=False),
)  # fmt: skip
