"""Freezing a study: which volumes, which trial items, and each rater's seeded order.

Every rater rates the same items (so agreement can be measured), each in their own order:

* ``single``: half the items show a real volume, half a synthetic one;
* ``pair``: each item pairs one real with one synthetic volume (of the same diagnosis when
  both are known); each rater sees the real one on the left in exactly half of their
  trials (left/right counterbalanced per rater).

No volume appears in two items: a volume seen twice could be recognised, and a study that
reused real volumes more often than synthetic ones would give the answer away. Volume ids
(``V001``...) are assigned in a seeded random order over both sets, so an id says nothing.
The order of rater ``r`` depends only on the study seed and ``r``'s id, so a rater added
later gets an order as reproducible as the first ones'.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.models.card import sha256_file
from napari_mrisynth.turing import schema
from napari_mrisynth.turing.store import RatingStore, StudyError, check_id, now

MODES = ("pair", "single")


@dataclass
class StudyVolume:
    """A volume offered to a study, before it gets its neutral id."""

    kind: str  # "real" or "synthetic"
    source: Path
    condition: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    mask: Path | None = None


#: File-name endings of masks beside a volume (``<stem>_labels.nii.gz`` is what the Correct
#: mask widget saves); such files are masks, never volumes of their own.


def _condition(row: dict[str, str]) -> dict[str, Any]:
    age = row.get("age")
    try:
        age_value = float(age) if age not in (None, "", "n/a") else None
    except ValueError:
        age_value = None
    return {"diagnosis": row.get("diagnosis") or None, "age": age_value,
            "sex": row.get("sex") or None}  # fmt: skip


def find_real(path: str | Path) -> list[StudyVolume]:
    """Real scans: a BIDS cohort (``participants.tsv`` and ``sub-*/anat/*_T1w.nii.gz``,
    diagnosis, age and sex from the table) or the volume files in a folder."""
    from napari_mrisynth.evaluation.folders import volume_files
    from napari_mrisynth.training.splits import read_participants

    folder = Path(path)
    if not folder.is_dir():
        raise StudyError(f"{folder}: not a folder of real scans")
    if (folder / "participants.tsv").is_file():
        found = []
        for row in read_participants(folder):
            subject = row["participant_id"]
            scans = sorted((folder / subject / "anat").glob(f"{subject}*_T1w.nii*"))
            if not scans:
                raise StudyError(f"{folder / subject / 'anat'}: no T1w scan for {subject}")
            found.append(StudyVolume("real", scans[0], _condition(row)))
        return found
    files = volume_files(folder)
    if not files:
        raise StudyError(f"{folder}: no volume files (NIfTI, MHA, NRRD) and no participants.tsv")
    return [StudyVolume("real", f) for f in files]


def find_mask(volume: str | Path, folders: Sequence[str | Path] = ()) -> Path | None:
    """A corrected mask of ``volume``: ``<stem>_labels.nii.gz`` (or ``_dseg``, ``_mask``; NIfTI)
    beside it or in one of ``folders``, the first found."""
    from napari_mrisynth.io.files import MASK_SUFFIXES, volume_stem

    volume = Path(volume)
    for folder in (volume.parent, *map(Path, folders)):
        for suffix in MASK_SUFFIXES:
            for extension in (".nii.gz", ".nii"):
                candidate = folder / f"{volume_stem(volume)}{suffix}{extension}"
                if candidate.is_file():
                    return candidate
    return None


def find_synthetic(path: str | Path) -> list[StudyVolume]:
    """Synthetic volumes in a folder, with the generator's sidecar (condition, provenance)."""
    from napari_mrisynth.evaluation.folders import volume_files
    from napari_mrisynth.io.files import volume_stem

    folder = Path(path)
    if not folder.is_dir():
        raise StudyError(f"{folder}: not a folder of synthetic volumes")
    found = []
    files = volume_files(folder)
    for file in files:
        mask = find_mask(file)
        sidecar = file.with_name(f"{volume_stem(file)}.json")
        provenance: dict[str, Any] = {}
        if sidecar.is_file():
            try:
                provenance = json.loads(sidecar.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise StudyError(f"{sidecar}: unreadable sidecar ({exc})") from exc
        found.append(StudyVolume("synthetic", file, dict(provenance.get("condition") or {}),
                                 provenance, mask))  # fmt: skip
    if not found:
        raise StudyError(f"{folder}: no synthetic volume files")
    return found


def rater_rng(seed: int, rater_id: str) -> np.random.Generator:
    """The generator of one rater's order: from the study seed and the rater's id only."""
    key = int.from_bytes(hashlib.sha256(rater_id.encode()).digest()[:8], "little")
    return np.random.default_rng(np.random.SeedSequence([int(seed), key]))


def _pick(rng: np.random.Generator, pool: list[int], n: int) -> list[int]:
    return [pool[i] for i in rng.permutation(len(pool))[:n]]


def _items(mode: str, n: int, real: list[StudyVolume], synthetic: list[StudyVolume],
           rng: np.random.Generator) -> list[tuple[int, ...]]:  # fmt: skip
    """Items as tuples of indices into ``real + synthetic``."""
    offset = len(real)
    if mode == "single":
        if n % 2:
            raise StudyError(f"--trials {n}: a single-volume study needs an even number "
                             "(half real, half synthetic)")  # fmt: skip
        half = n // 2
        if half > len(real) or half > len(synthetic):
            raise StudyError(
                f"--trials {n} needs {half} real and {half} synthetic volumes, each shown once; "
                f"there are {len(real)} real and {len(synthetic)} synthetic"
            )
        chosen = _pick(rng, list(range(len(real))), half)
        chosen += [offset + i for i in _pick(rng, list(range(len(synthetic))), half)]
        return [(i,) for i in chosen]
    if n > len(real) or n > len(synthetic):
        raise StudyError(
            f"--trials {n} pairs need {n} real and {n} synthetic volumes, each shown once; "
            f"there are {len(real)} real and {len(synthetic)} synthetic"
        )
    synth = _pick(rng, list(range(len(synthetic))), n)
    free = [int(i) for i in rng.permutation(len(real))]
    pairs = []
    for s in synth:
        wanted = synthetic[s].condition.get("diagnosis")
        same = [r for r in free if wanted and real[r].condition.get("diagnosis") == wanted]
        r = same[0] if same else free[0]
        free.remove(r)
        pairs.append((r, offset + s))
    return pairs


def rater_order(items: Sequence[tuple[str, Sequence[str], Sequence[bool]]], mode: str,
                seed: int, rater_id: str) -> list[tuple[str, list[str]]]:  # fmt: skip
    """``(item id, volume ids left to right)`` per position for one rater.

    ``items`` are ``(item id, volume ids, synthetic per volume)``. In pair mode exactly
    ``n // 2`` trials (chosen at random) show the real volume on the left.
    """
    rng = rater_rng(seed, rater_id)
    order = rng.permutation(len(items))
    real_left = set(rng.permutation(len(items))[: len(items) // 2].tolist())
    out = []
    for position, index in enumerate(order):
        item_id, vols, synthetic = items[int(index)]
        shown = list(vols)
        if mode == "pair":
            real_first = [v for v, s in zip(vols, synthetic, strict=True) if not s]
            real_first += [v for v, s in zip(vols, synthetic, strict=True) if s]
            shown = real_first if position in real_left else real_first[::-1]
        out.append((item_id, shown))
    return out


def create_study(
    db: str | Path,
    *,
    key: str | Path,
    real: str | Path | Sequence[StudyVolume],
    synthetic: str | Path | Sequence[StudyVolume],
    raters: Sequence[str],
    mode: str = "pair",
    trials: int = 20,
    seed: int = 0,
    study_id: str = "study",
    spacing: float | None = None,
    resolution: float | None = None,
    cache: str | Path | None = None,
    device: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Freeze a study into the ratings database ``db`` (created when missing) and its answer
    key into ``key``.

    Parameters
    ----------
    key : path or URL
        Where the answer key goes (:mod:`.key`): a SQLite file of its own for a SQLite
        study (created when missing; keep it from the raters), or a database URL whose
        ``key_*`` tables the raters' role is not granted.
    real, synthetic : folder or list of StudyVolume
        See :func:`find_real` and :func:`find_synthetic`.
    raters : sequence of str
        Rater ids (their sign-in names); more can be added with :func:`add_rater`.
    mode : {"pair", "single"}
    trials : int
        Trials per rater (the same items for every rater).
    spacing : float, optional
        Voxel size of the study grid in mm; by default the real scans' own (the coarsest
        voxel size among them), so they are shown at their native resolution.
    resolution : float, optional
        A coarser effective resolution (mm) to bring every volume to first. Off by
        default: it blurs the real scans down to a coarse generator's level, and the
        study's grid and report say so when it is used.
    cache : folder, optional
        Where the prepared volumes go; default ``<db>.volumes/<study id>`` beside a SQLite
        file (required for a server database: a folder every rater's machine can read).

    Returns
    -------
    dict
        The study row (see :meth:`RatingStore.study`) and ``secrets``: rater id -> the
        rater's sign-in secret. Shown once: the database keeps only salted hashes.
    """
    from napari_mrisynth.evaluation.presentation import native_resolution
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.turing.prepare import prepare_study_volumes

    check_id(study_id, "study id")
    if mode not in MODES:
        raise StudyError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    if trials < 1:
        raise StudyError(f"--trials {trials}: at least one trial")
    rater_ids = [check_id(r, "rater id") for r in raters]
    if not rater_ids or len(set(rater_ids)) != len(rater_ids):
        raise StudyError(f"raters {list(raters)}: give at least one, each once")
    real_set = find_real(real) if isinstance(real, (str, Path)) else list(real)
    synth_set = find_synthetic(synthetic) if isinstance(synthetic, (str, Path)) else list(synthetic)
    from napari_mrisynth.turing.accounts import new_secret

    store = RatingStore(db, create=True, key=key)
    try:
        if study_id in store.study_ids():
            raise StudyError(f"{store}: a study {study_id!r} already exists; it is frozen")
        if cache is None:
            if store.path is None:
                raise StudyError("a server database needs --cache: a folder every rater can read")
            cache = store.path.with_name(store.path.name + ".volumes") / study_id
        rng = np.random.default_rng(np.random.SeedSequence([int(seed), 1]))
        chosen = _items(mode, trials, real_set, synth_set, rng)
        pool = real_set + synth_set
        used = sorted({i for item in chosen for i in item})
        digests = {i: sha256_file(pool[i].source) for i in used}
        if len(set(digests.values())) != len(digests):
            raise StudyError("the same file is offered twice (or as both real and synthetic)")
        ids = {i: f"V{k + 1:03d}" for k, i in enumerate(rng.permutation(used).tolist())}
        sources, native = [], []
        for i in sorted(used, key=lambda i: ids[i]):
            volume = load_volume(pool[i].source).compute()
            volume.metadata["source"] = str(pool[i].source)
            if pool[i].kind == "real":
                native.append(volume)
            if pool[i].kind == "synthetic":
                grid = pool[i].provenance.get("grid") or {}
                if isinstance(grid.get("space"), str):
                    volume.metadata["space"] = grid["space"]
            sources.append((ids[i], volume))
        own = native_resolution(native or [v for _, v in sources])
        grid, prepared = prepare_study_volumes(sources, cache, spacing=spacing or own,
                                               resolution=resolution, native=own,
                                               device=device, progress=progress)  # fmt: skip
        items = [
            (f"I{k + 1:03d}", [ids[i] for i in item], [pool[i].kind == "synthetic" for i in item])
            for k, item in enumerate(chosen)
        ]
        offered = {
            "real": str(real) if isinstance(real, (str, Path)) else "given",
            "synthetic": str(synthetic) if isinstance(synthetic, (str, Path)) else "given",
            "n_real_offered": len(real_set), "n_synthetic_offered": len(synth_set),
        }  # fmt: skip
        design = {"raters": rater_ids, "items": len(items), "volumes": len(used)}
        # The key first: a study without its key could never be reported.
        store.key.add_study(study_id, {**offered, **design}, [
            {"volume_id": ids[i], "kind": pool[i].kind, "source": str(pool[i].source),
             "source_sha256": digests[i], "prepared_sha256": prepared[ids[i]],
             "condition": pool[i].condition, "provenance": pool[i].provenance,
             "mask": str(pool[i].mask) if pool[i].mask else None}
            for i in used
        ])  # fmt: skip
        secrets = {rater_id: new_secret() for rater_id in rater_ids}
        try:
            with store.transaction() as conn:
                conn.execute(schema.studies.insert(), {
                    "study_id": study_id, "created_at": now(), "mode": mode, "seed": int(seed),
                    "trials_per_rater": trials, "grid": json.dumps(grid.describe()),
                    "cache": str(Path(cache).resolve()), "design": json.dumps(design),
                })  # fmt: skip
                conn.execute(schema.volumes.insert(), [
                    {"study_id": study_id, "volume_id": ids[i],
                     "prepared_sha256": prepared[ids[i]]}
                    for i in used
                ])  # fmt: skip
                # Each item lists its volumes in id order: never real first.
                conn.execute(schema.items.insert(), [
                    {"study_id": study_id, "item_id": item_id, "volumes": json.dumps(sorted(vols))}
                    for item_id, vols, _ in items
                ])  # fmt: skip
                for rater_id in rater_ids:
                    _insert_rater(conn, study_id, rater_id, items, mode, seed, secrets[rater_id])
        except BaseException:
            store.key.remove_study(study_id)
            raise
        return {**store.study(study_id), "secrets": secrets}
    finally:
        store.close()


def _insert_rater(conn: Any, study_id: str, rater_id: str,
                  items: Sequence[tuple[str, Sequence[str], Sequence[bool]]], mode: str,
                  seed: int, secret: str) -> None:  # fmt: skip
    from napari_mrisynth.turing.accounts import hash_secret

    conn.execute(schema.raters.insert(),
                 {"study_id": study_id, "rater_id": rater_id, "added_at": now(),
                  "secret_hash": hash_secret(secret)})  # fmt: skip
    conn.execute(schema.trials.insert(), [
        {"study_id": study_id, "rater_id": rater_id, "position": position,
         "item_id": item_id, "shown": json.dumps(shown)}
        for position, (item_id, shown) in enumerate(rater_order(items, mode, seed, rater_id))
    ])  # fmt: skip


def study_items(store: RatingStore, study_id: str) -> list[tuple[str, list[str], list[bool]]]:
    """``(item id, volume ids, synthetic per volume)`` for every item of a study (the store
    must hold the key)."""
    import sqlalchemy as sa

    kinds = {v: r["kind"] == "synthetic" for v, r in store.volumes(study_id).items()}
    with store.engine.connect() as conn:
        rows = conn.execute(
            sa.select(schema.items.c.item_id, schema.items.c.volumes)
            .where(schema.items.c.study_id == study_id).order_by("item_id")
        ).all()  # fmt: skip
    out = []
    for item_id, text in rows:
        vols = json.loads(text)
        out.append((item_id, vols, [kinds[v] for v in vols]))
    return out


def add_rater(db: str | Path, rater_id: str, *, key: str | Path,
              study_id: str | None = None) -> str:  # fmt: skip
    """Give a new rater the study's items in their own seeded order, and a secret.

    The key is needed: a pair study shows each rater the real volume on the left in exactly
    half of their trials. Returns the rater's secret (shown once; only its hash is kept).
    """
    from napari_mrisynth.turing.accounts import new_secret

    check_id(rater_id, "rater id")
    with RatingStore(db, key=key) as store:
        study_id = study_id or store.only_study()
        study = store.study(study_id)
        if rater_id in store.rater_ids(study_id):
            raise StudyError(f"study {study_id!r}: rater {rater_id!r} already exists")
        items = study_items(store, study_id)
        secret = new_secret()
        with store.transaction() as conn:
            _insert_rater(conn, study_id, rater_id, items, study["mode"], study["seed"], secret)
        return secret


def reissue_secret(db: str | Path, rater_id: str, *, key: str | Path,
                   study_id: str | None = None) -> str:  # fmt: skip
    """A new secret for a rater who lost theirs (the old one stops working). Needs the key:
    whoever holds it organises the study. Returns the secret (shown once)."""
    from napari_mrisynth.turing.accounts import new_secret

    with RatingStore(db, key=key) as store:
        study_id = study_id or store.only_study()
        store.answer_key(study_id)  # the organiser's proof
        secret = new_secret()
        store.set_secret(study_id, rater_id, secret)
        return secret
