"""Subject-level train/validation/test splits: stratified, seeded, reproducible.

Subjects, not images or patches, are split, so that no subject's data reaches two splits.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from napari_mrisynth.errors import MrisynthError

SPLITS = ("train", "val", "test")


def read_participants(cohort: str | Path) -> list[dict[str, str]]:
    """Rows of ``cohort/participants.tsv`` (BIDS), one dict per subject.

    Raises
    ------
    MrisynthError
        The table is missing, has no ``participant_id`` column, or repeats a subject.
    """
    path = Path(cohort) / "participants.tsv"
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            rows = [dict(row) for row in csv.DictReader(stream, delimiter="\t")]
    except FileNotFoundError as exc:
        raise MrisynthError(f"{path}: no participants table (is {cohort} a cohort?)") from exc
    if not rows or "participant_id" not in rows[0]:
        raise MrisynthError(f"{path}: needs a 'participant_id' column and at least one row")
    ids = [row["participant_id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise MrisynthError(f"{path}: participant_id repeats")
    return rows


def _allocate(n: int, fractions: Sequence[float]) -> list[int]:
    """Split ``n`` into counts proportional to ``fractions`` (largest remainder), giving
    every split with a non-zero fraction at least one subject when ``n`` allows it."""
    exact = np.asarray(fractions, dtype=float) * n
    counts = np.floor(exact).astype(int)
    remainders = exact - counts
    for index in np.argsort(-remainders, kind="stable")[: n - counts.sum()]:
        counts[index] += 1
    wanted = [i for i, f in enumerate(fractions) if f > 0]
    if n >= len(wanted):
        for index in wanted:
            if counts[index] == 0:
                counts[int(np.argmax(counts))] -= 1
                counts[index] += 1
    return counts.tolist()


def split_subjects(
    participants: Sequence[dict[str, str]],
    *,
    fractions: Sequence[float] = (0.6, 0.2, 0.2),
    seed: int = 0,
    stratify: str | None = "diagnosis",
) -> dict[str, list[str]]:
    """Split subjects into ``train``, ``val`` and ``test``, stratified by a column.

    Within each stratum (e.g. each diagnosis) the subjects are shuffled with ``seed`` and
    cut by ``fractions`` (largest remainder), so every class reaches every split whenever
    it has at least three subjects. The result depends only on the subject ids, their
    strata, ``fractions`` and ``seed``, not on the row order.

    Parameters
    ----------
    participants : sequence of dict
        Rows with ``participant_id`` (and the ``stratify`` column), as
        :func:`read_participants` gives.
    fractions : (float, float, float)
        Train, validation and test fractions; they must sum to 1.
    seed : int
    stratify : str or None
        Column to stratify by; None splits all subjects as one stratum.

    Returns
    -------
    dict
        ``{"train": [...], "val": [...], "test": [...]}``, ids sorted within each split.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise MrisynthError(f"split fractions must be three non-negative numbers summing to 1, "
                            f"got {tuple(fractions)}")  # fmt: skip
    strata: dict[str, list[str]] = {}
    for row in participants:
        key = "" if stratify is None else row.get(stratify)
        if key is None:
            raise MrisynthError(f"participant {row.get('participant_id')}: no {stratify!r} column")
        strata.setdefault(str(key), []).append(str(row["participant_id"]))
    result: dict[str, list[str]] = {name: [] for name in SPLITS}
    for index, key in enumerate(sorted(strata)):
        ids = sorted(strata[key])
        order = np.random.default_rng([seed, index]).permutation(len(ids))
        shuffled = [ids[i] for i in order]
        start = 0
        for name, count in zip(SPLITS, _allocate(len(ids), fractions), strict=True):
            result[name].extend(shuffled[start : start + count])
            start += count
    return {name: sorted(ids) for name, ids in result.items()}
