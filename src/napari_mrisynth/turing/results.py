"""A study's results, always read from the ratings store (never from a rater's memory).

* :func:`rated_trials` turns the stored ratings into
  :class:`~napari_mrisynth.turing.statistics.RatedTrial` rows (truth joined in here);
* :func:`study_report` computes the statistics and writes the report;
* :func:`ratings_csv` exports every rating, with the truth, for other tools;
* :func:`study_status` says how far each rater is.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from napari_mrisynth.turing.session import experience_tier
from napari_mrisynth.turing.store import RatingStore, StudyError, opened

CSV_COLUMNS = (
    "study_id",
    "rater_id",
    "rater_name",
    "role",
    "years",
    "tier",
    "position",
    "case",
    "item_id",
    "mode",
    "shown",
    "truth",
    "choice",
    "called_synthetic",
    "correct",
    "confidence",
    "realism",
    "seconds",
    "comment",
    "submitted_at",
    "viewer_state",
)


def rated_trials(db: str | Path | RatingStore, study_id: str | None = None, *,
                 key: str | Path | None = None) -> list[Any]:  # fmt: skip
    """Every rating of a study as a ``RatedTrial`` (truth from the study's key)."""
    from napari_mrisynth.turing.statistics import RatedTrial

    with opened(db, key) as store:
        study_id = study_id or store.only_study()
        mode = store.study(study_id)["mode"]
        return [
            RatedTrial(
                rater=row["rater_id"],
                tier=experience_tier(row["years"]),
                item=row["item_id"],
                mode=mode,
                volumes=tuple(row["shown"]),
                synthetic=tuple(row["synthetic"]),
                called_synthetic=tuple(row["called_synthetic"]),
                confidence=int(row["confidence"]),
                realism=tuple(row["realism"]),
                seconds=float(row["seconds"]),
            )
            for row in store.ratings(study_id)
        ]


def study_report(
    db: str | Path | RatingStore,
    out: str | Path,
    *,
    key: str | Path | None = None,
    study_id: str | None = None,
    title: str | None = None,
) -> dict[str, Any]:
    """Statistics of a study, written as Markdown, HTML, JSON and PNGs into ``out``.

    ``key`` is the study's answer key (unless ``db`` is a store opened with it). Returns
    the statistics and the paths written (``{"statistics": ..., "files": ...}``).
    """
    from napari_mrisynth.turing.statistics import study_statistics
    from napari_mrisynth.turing.study_report import write_study_report

    with opened(db, key) as store:
        study_id = study_id or store.only_study()
        study = store.study(study_id)
        trials = rated_trials(store, study_id)
        if not trials:
            raise StudyError(f"study {study_id!r}: no ratings yet")
        statistics = study_statistics(trials)
        status = study_status(store, study_id)
        facts = {
            "study": study_id,
            "created": study["created_at"],
            "seed": study["seed"],
            "trials per rater": study["trials_per_rater"],
            "grid": _grid_fact(study["grid"]),
            "ratings": f"{status['rated']} of {status['total']} trials rated",
        }
        files = write_study_report(
            statistics, out, title=title or f"Visual Turing test: {study_id}", study=facts
        )
        return {"statistics": statistics, "files": files}


def ratings_csv(
    db: str | Path | RatingStore,
    out: str | Path,
    *,
    key: str | Path | None = None,
    study_id: str | None = None,
) -> Path:
    """Every rating of a study, one row per trial, with the truth from ``key`` (for
    analysts, not raters).

    Written to a temporary file and moved into place.
    """
    with opened(db, key) as store:
        study_id = study_id or store.only_study()
        mode = store.study(study_id)["mode"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in store.ratings(study_id):
            truth = ["synthetic" if s else "real" for s in row["synthetic"]]
            writer.writerow(
                {
                    "study_id": study_id,
                    "rater_id": row["rater_id"],
                    "rater_name": row["name"],
                    "role": row["role"],
                    "years": row["years"],
                    "tier": experience_tier(row["years"]),
                    "position": row["position"] + 1,
                    "case": row["position"] + 1,
                    "item_id": row["item_id"],
                    "mode": mode,
                    "shown": ";".join(row["shown"]),
                    "truth": ";".join(truth),
                    "choice": row["choice"],
                    "called_synthetic": ";".join(str(v).lower() for v in row["called_synthetic"]),
                    "correct": str(list(row["called_synthetic"]) == list(row["synthetic"])).lower(),
                    "confidence": row["confidence"],
                    "realism": ";".join("" if v is None else str(v) for v in row["realism"]),
                    "seconds": row["seconds"],
                    "comment": row["comment"],
                    "submitted_at": row["submitted_at"],
                    "viewer_state": json.dumps(row["viewer_state"], sort_keys=True),
                }
            )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
    partial.write_text(buffer.getvalue(), encoding="utf-8")
    partial.replace(out)
    return out


def study_status(db: str | Path | RatingStore, study_id: str | None = None) -> dict[str, Any]:
    """Per rater: trials rated of total, signed in or not; and the totals."""
    with opened(db) as store:
        study_id = study_id or store.only_study()
        raters = {}
        for rater_id in store.rater_ids(study_id):
            info = store.rater(study_id, rater_id)
            raters[rater_id] = {
                "rated": len(store.rated_positions(study_id, rater_id)),
                "total": store.trial_count(study_id, rater_id),
                "signed_in": info.signed_in_at is not None,
                "tier": experience_tier(info.years) if info.years is not None else None,
            }
        return {
            "study_id": study_id,
            "raters": raters,
            "rated": sum(r["rated"] for r in raters.values()),
            "total": sum(r["total"] for r in raters.values()),
        }


def _grid_fact(grid: dict[str, Any]) -> str:
    """What the report says about the resolution raters saw, degraded or not."""
    spacing = float(grid["spacing"])
    resolution = float(grid.get("resolution", spacing))
    native = grid.get("native_resolution")
    text = f"{spacing:g} mm voxels"
    if native:
        text += f"; the real scans' own resolution {float(native):g} mm"
    if resolution > spacing + 1e-6:
        text += (f"; EVERY VOLUME WAS BROUGHT DOWN TO {resolution:g} mm first (asked for): "
                 "the real scans were shown blurred to a generator's resolution")  # fmt: skip
    else:
        text += "; shown at that resolution, nothing blurred first"
    return text
