"""Curation: review the study's synthetic volumes by their scores, approve or reject them.

Each synthetic volume is ranked by what the raters said (fooled rate, mean realism), by the
memorization audit (similarity to its nearest training scan) and by its generator's
metrics. :class:`CurationRules` preselect (e.g. mean realism >= 4, fooled >= 50 %, not
flagged by the audit); a named curator decides, with a reason for every rejection. Every
decision is appended to the store; the latest one per volume counts.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_mrisynth.turing.store import RatingStore, StudyError, opened


@dataclass(frozen=True)
class CurationRules:
    """What a volume must reach to be preselected (None: no rule)."""

    min_realism: float | None = 4.0
    min_fooled: float | None = 0.5
    unflagged: bool = True
    min_judgments: int = 1

    _TERMS = {"realism": "min_realism", "fooled": "min_fooled", "judgments": "min_judgments"}

    @classmethod
    def parse(cls, text: str) -> CurationRules:
        """``"realism>=4,fooled>=0.5,unflagged"`` (``judgments>=N`` too; ``none``: no rule)."""
        values: dict[str, Any] = {
            "min_realism": None,
            "min_fooled": None,
            "unflagged": False,
            "min_judgments": 1,
        }
        for term in (t.strip() for t in text.split(",") if t.strip()):
            if term == "unflagged":
                values["unflagged"] = True
                continue
            if term == "none":
                continue
            match = re.fullmatch(r"(realism|fooled|judgments)\s*>=\s*([0-9.]+)%?", term)
            if not match:
                raise StudyError(
                    f"rule {term!r}: use realism>=X, fooled>=X (0-1 or %), judgments>=N, unflagged"
                )
            name, number = match.group(1), float(match.group(2))
            if name == "fooled" and (term.endswith("%") or number > 1):
                number /= 100.0
            values[cls._TERMS[name]] = int(number) if name == "judgments" else number
        return cls(**values)

    def describe(self) -> str:
        parts = []
        if self.min_realism is not None:
            parts.append(f"mean realism >= {self.min_realism:g}")
        if self.min_fooled is not None:
            parts.append(f"fooled >= {self.min_fooled:.0%}")
        if self.unflagged:
            parts.append("not flagged by the memorization audit")
        if self.min_judgments > 1:
            parts.append(f"at least {self.min_judgments} judgments")
        return ", ".join(parts) or "no rule"

    def failures(self, scores: dict[str, Any], audit: dict[str, Any]) -> list[str]:
        """Why a volume with these scores and audit is not preselected (empty: it is)."""
        out = []
        n = int(scores.get("n_judgments") or 0)
        if n < max(self.min_judgments, 1):
            out.append(f"{n} judgment(s), fewer than {max(self.min_judgments, 1)}")
        realism = scores.get("mean_realism")
        if self.min_realism is not None and (realism is None or realism < self.min_realism):
            shown = "no realism score" if realism is None else f"mean realism {realism:.2f}"
            out.append(f"{shown} < {self.min_realism:g}")
        fooled = scores.get("fooled_rate")
        if self.min_fooled is not None and (fooled is None or fooled < self.min_fooled):
            shown = "not rated" if fooled is None else f"fooled {fooled:.0%}"
            out.append(f"{shown} < {self.min_fooled:.0%}")
        if self.unflagged:
            if not audit:
                out.append("not audited for memorization")
            elif audit.get("flagged"):
                out.append(
                    f"flagged as a possible copy of {audit.get('nearest')} "
                    f"(similarity {audit.get('similarity', float('nan')):.3f})"
                )
        return out


@dataclass
class Candidate:
    """A synthetic volume under review."""

    volume_id: str
    source: str
    condition: dict[str, Any]
    provenance: dict[str, Any]
    scores: dict[str, Any]
    audit: dict[str, Any]
    decision: dict[str, Any] | None
    failures: list[str] = field(default_factory=list)
    mask: str | None = None
    generator_metrics: dict[str, float | None] = field(default_factory=dict)

    @property
    def preselected(self) -> bool:
        return not self.failures

    @property
    def generator(self) -> str:
        g = self.provenance.get("generator") or {}
        return f"{g.get('id', '?')}@{g.get('version', '?')}" if g else "unknown"

    def row(self) -> dict[str, Any]:
        """JSON-ready summary (for the CLI and the widget)."""
        return {
            "volume_id": self.volume_id,
            "diagnosis": self.condition.get("diagnosis"),
            "generator": self.generator,
            "n_judgments": self.scores.get("n_judgments", 0),
            "fooled_rate": self.scores.get("fooled_rate"),
            "mean_realism": self.scores.get("mean_realism"),
            "audit_similarity": self.audit.get("similarity"),
            "audit_flagged": self.audit.get("flagged"),
            "preselected": self.preselected,
            "generator_fid": self.generator_metrics.get("fid"),
            "failures": self.failures,
            "decision": (self.decision or {}).get("decision"),
            "curator": (self.decision or {}).get("curator"),
            "reason": (self.decision or {}).get("reason"),
            "source": self.source,
        }


def _generator_metrics(provenance: dict[str, Any]) -> dict[str, float | None]:
    """The generator's held-out test metrics from its registry card ({} when not found)."""
    from napari_mrisynth.errors import ModelError
    from napari_mrisynth.models.registry import find_model

    generator = provenance.get("generator") or {}
    if not generator.get("id"):
        return {}
    ref = f"{generator['id']}@{generator['version']}" if generator.get("version") else \
        generator["id"]  # fmt: skip
    try:
        card = find_model(ref, task="generation")
    except ModelError:
        return {}
    return {name: card.metric(name) for name in ("fid", "kid", "ms_ssim", "mmd")}


def _rank_key(candidate: Candidate) -> tuple:
    s = candidate.scores
    similarity = candidate.audit.get("similarity")
    return (
        not candidate.preselected,
        -(s.get("fooled_rate") if s.get("fooled_rate") is not None else -1.0),
        -(s.get("mean_realism") if s.get("mean_realism") is not None else -1.0),
        similarity if similarity is not None else 2.0,
        candidate.volume_id,
    )


#: The rater scores of a volume nobody has judged.
UNJUDGED = {"n_judgments": 0}


def _judged(store: RatingStore, study_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume id -> rater scores, volume id -> memorization audit): what the rules read."""
    from napari_mrisynth.turing.results import rated_trials
    from napari_mrisynth.turing.statistics import volume_scores

    trials = rated_trials(store, study_id)
    return (volume_scores(trials) if trials else {}), store.audits(study_id)


def candidates(
    db: str | Path | RatingStore,
    *,
    key: str | Path | None = None,
    study_id: str | None = None,
    rules: CurationRules | None = None,
) -> list[Candidate]:
    """Every synthetic volume of the study, best first: preselected ones, then by fooled
    rate, mean realism and (lower is better) audit similarity. Needs the study's key."""
    rules = rules or CurationRules()
    with opened(db, key) as store:
        study_id = study_id or store.only_study()
        scores, audits = _judged(store, study_id)
        decided = store.decisions(study_id)
        generators: dict[str, dict[str, float | None]] = {}
        out = []
        for volume_id, row in store.volumes(study_id).items():
            if row["kind"] != "synthetic":
                continue
            score = scores.get(volume_id, UNJUDGED)
            audit = audits.get(volume_id, {})
            ref = json.dumps(row["provenance"].get("generator") or {}, sort_keys=True)
            if ref not in generators:
                generators[ref] = _generator_metrics(row["provenance"])
            out.append(
                Candidate(
                    volume_id,
                    row["source"],
                    row["condition"],
                    row["provenance"],
                    score,
                    audit,
                    decided.get(volume_id),
                    rules.failures(score, audit),
                    row.get("mask"),
                    generators[ref],
                )
            )
        return sorted(out, key=_rank_key)


def decide(
    db: str | Path | RatingStore,
    volume_id: str,
    decision: str,
    *,
    curator: str,
    reason: str = "",
    override: bool = False,
    rules: CurationRules | None = None,
    key: str | Path | None = None,
    study_id: str | None = None,
) -> dict[str, Any]:
    """Record a curator's decision ("approved" or "rejected"; a rejection needs a reason).

    Approving a volume that fails ``rules`` (the study's rules; the defaults when not
    given) is refused unless ``override`` is set with a reason; the decision records the
    rules it failed, and the export manifest carries them.
    """
    with opened(db, key) as store:
        study_id = study_id or store.only_study()
        failures: list[str] = []
        if decision == "approved":
            scores, audits = _judged(store, study_id)
            failures = (rules or CurationRules()).failures(
                scores.get(volume_id, UNJUDGED), audits.get(volume_id, {})
            )
        return store.add_decision(study_id, volume_id, decision, curator=curator,
                                  reason=reason, failures=failures,
                                  override=override)  # fmt: skip


def apply_rules(
    db: str | Path | RatingStore,
    rules: CurationRules,
    *,
    curator: str,
    key: str | Path | None = None,
    study_id: str | None = None,
    redecide: bool = False,
) -> list[dict[str, Any]]:
    """Approve the preselected and reject the others (the unmet rules as the reason), for
    volumes not yet decided (or all, with ``redecide``). Returns the decisions recorded."""
    with opened(db, key) as store:
        study_id = study_id or store.only_study()
        recorded = []
        for candidate in candidates(store, study_id=study_id, rules=rules):
            if candidate.decision is not None and not redecide:
                continue
            if candidate.preselected:
                reason = f"meets the rules: {rules.describe()}"
                recorded.append(
                    store.add_decision(
                        study_id, candidate.volume_id, "approved", curator=curator, reason=reason
                    )
                )
            else:
                recorded.append(
                    store.add_decision(
                        study_id,
                        candidate.volume_id,
                        "rejected",
                        curator=curator,
                        reason="; ".join(candidate.failures),
                    )
                )
        return recorded


def audit_study(
    db: str | Path | RatingStore,
    train: str | Path,
    *,
    key: str | Path | None = None,
    study_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the memorization audit of every synthetic volume against the training scans in
    ``train`` (a BIDS cohort or a folder) and store the results in the study's key."""
    from napari_mrisynth.evaluation.memorization import audit_memorization
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.turing.design import find_real

    with opened(db, key) as store:
        study_id = study_id or store.only_study()
        training = []
        for scan in find_real(train):
            volume = load_volume(scan.source).compute()
            volume.metadata["name"] = scan.source.name.split(".")[0]
            training.append(volume)
        ids, synthetic = [], []
        for volume_id, row in store.volumes(study_id).items():
            if row["kind"] != "synthetic":
                continue
            volume = load_volume(row["source"]).compute()
            volume.metadata["name"] = volume_id
            space = (row["provenance"].get("grid") or {}).get("space")
            if isinstance(space, str):
                volume.metadata["space"] = space
            ids.append(volume_id)
            synthetic.append(volume)
        if not synthetic:
            raise StudyError(f"study {study_id!r}: no synthetic volume to audit")
        report = audit_memorization(training, synthetic, progress=progress)
        rows = [
            {
                "volume_id": volume_id,
                "nearest": entry["nearest"],
                "similarity": entry["similarity"],
                "threshold": report.threshold,
                "flagged": entry["flagged"],
            }
            for volume_id, entry in zip(ids, report.entries, strict=True)
        ]
        store.add_audit(study_id, rows, str(Path(train).resolve()))
        return rows


@dataclass
class ApprovedVolume:
    """One curated synthetic volume with everything the study recorded about it.

    Parameters
    ----------
    volume_id : str
        Neutral, stable study id (e.g. ``"V017"``); exports are numbered in its order.
    path : Path
        The synthetic volume (NIfTI) as generated.
    provenance : dict
        The generator's JSON sidecar (``{}`` if none).
    condition : dict
        ``{"diagnosis": "bvFTD" | "control", "age": float | None, "sex": "F" | "M" | None}``.
    scores : dict
        Rater scores: ``n_judgments``, ``fooled_rate``, ``mean_realism``, ``mean_confidence``.
    audit : dict
        Memorization audit (``{}`` if not audited).
    curation : dict
        ``decision``, ``curator``, ``reason``, ``decided_at`` (ISO 8601), ``override``
        (approved although it fails the rules) and ``failures`` (the rules it failed).
    mask_path : Path, optional
        Corrected label mask (NIfTI) on the volume's grid.
    mask_labels : dict
        The mask's label schema, ``{value: (name, (r, g, b))}``, from the card of the model
        that made it (see :func:`mask_schema`).
    """

    volume_id: str
    path: Path
    provenance: dict
    condition: dict
    scores: dict
    audit: dict
    curation: dict
    mask_path: Path | None = None
    mask_labels: dict[int, tuple[str, tuple[int, int, int]]] = field(default_factory=dict)


def approved_volumes(db: str | Path | RatingStore, *, key: str | Path | None = None,
                     study_id: str | None = None,
                     masks: Sequence[str | Path] = ()) -> list[ApprovedVolume]:  # fmt: skip
    """The volumes whose latest decision is "approved", as the export takes them.

    A volume's corrected mask is the one found when the study was created, else one found
    now beside the volume or in ``masks`` (``<stem>_labels.nii.gz`` as the Correct mask
    widget saves it; see :func:`~napari_mrisynth.turing.design.find_mask`): masks are often
    corrected after the rating.
    """
    from napari_mrisynth.turing.design import find_mask

    with opened(db, key) as store:
        study_id = study_id or store.only_study()
        out = []
        for c in candidates(store, study_id=study_id, rules=CurationRules()):
            if (c.decision or {}).get("decision") != "approved":
                continue
            audit = {
                k: c.audit[k]
                for k in ("nearest", "similarity", "threshold", "flagged")
                if k in c.audit
            }
            scores = {
                k: c.scores.get(k)
                for k in ("n_judgments", "fooled_rate", "mean_realism", "mean_confidence")
            }
            curation = {k: c.decision[k] for k in ("decision", "curator", "reason", "decided_at",
                                                   "override", "failures")}  # fmt: skip
            mask = Path(c.mask) if c.mask else find_mask(c.source, masks)
            out.append(
                ApprovedVolume(
                    volume_id=c.volume_id,
                    path=Path(c.source),
                    provenance=c.provenance,
                    condition=c.condition,
                    scores=scores,
                    audit=audit,
                    curation=curation,
                    mask_path=mask,
                )
            )
        return sorted(out, key=lambda v: v.volume_id)


def mask_schema(mask: str | Path) -> dict[int, tuple[str, tuple[int, int, int]]]:
    """The label schema of a mask, read from a model card: the segmentation model its
    correction record names (``<stem>_correction.json`` beside ``<stem>_labels.nii.gz``, as
    the Correct mask widget saves them) when the registry has it, else the registry's
    default segmentation model. Empty when no card is found (labels are then named by value).
    """
    from napari_mrisynth.errors import ModelError
    from napari_mrisynth.io.files import volume_stem
    from napari_mrisynth.models.registry import default_model, find_model

    mask = Path(mask)
    record = mask.with_name(f"{volume_stem(mask).removesuffix('_labels')}_correction.json")
    try:
        ref = json.loads(record.read_text(encoding="utf-8")).get("base_model")
    except (OSError, ValueError, AttributeError):
        ref = None
    card = None
    if isinstance(ref, str) and ref:
        with contextlib.suppress(ModelError):
            card = find_model(ref, task="segmentation")
    if card is None:
        try:
            card = default_model("segmentation")
        except ModelError:
            return {}
    return {label.value: (label.name, tuple(label.color)) for label in card.labels}
