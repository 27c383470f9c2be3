"""Correcting a model's mask: what changed, how much it agrees with the model, autosave.

:class:`MaskCorrection` holds the model output (the base) and measures every edit against
it from the changed voxels only, so the live readout stays cheap on a full-size head.
Autosaves are sparse: the base is written once, then each autosave stores the changed
voxels (flat indices and values) with a CRC, written to a temporary file and moved into
place, so a crash (even SIGKILL mid-write) leaves the previous autosave intact and a
damaged file is recognised and skipped by :meth:`MaskCorrection.recover`.

Autosave folder layout::

    session.json            annotator, base model, source, label schema, base CRC
    base.npz                the model output (written once)
    autosave-000001.npz     changed voxels after edit 1 (the last KEEP_AUTOSAVES are kept)
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.io.atomic import replacing, write_atomic, write_json
from napari_mrisynth.volume import Volume

#: Autosaves kept in the folder (older ones are deleted after a newer one is in place).
KEEP_AUTOSAVES = 5

#: A pause longer than this between two edits is not counted as editing time.
IDLE_GAP_S = 120.0

SESSION_FILE = "session.json"
BASE_FILE = "base.npz"
_AUTOSAVE_GLOB = "autosave-*.npz"


class CorrectionError(MrisynthError):
    """An edit cannot be measured, autosaved or saved (wrong shape, foreign autosave folder)."""


@dataclass
class CorrectionRecord:
    """What an annotator did to a model's mask: who, when, against which model, how much.

    ``voxels_changed_per_label`` maps a label name to ``{"value", "added", "removed"}``;
    ``dice_vs_model`` maps a label name to the Dice overlap of the corrected mask with the
    model's for that label, and ``"mean"`` to their mean.
    """

    annotator: str
    started: str
    saved: str
    base_model: str | None
    source: str | None
    voxels_changed: int
    voxels_changed_per_label: dict[str, dict[str, int]]
    dice_vs_model: dict[str, float]
    seconds_editing: float
    files: list[str] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _crc(*arrays: np.ndarray) -> int:
    value = 0
    for array in arrays:
        value = zlib.crc32(np.ascontiguousarray(array).data, value)
    return value


def _write_arrays(path: Path, compress: bool, **arrays: np.ndarray) -> None:
    saver = np.savez_compressed if compress else np.savez
    write_atomic(path, lambda handle: saver(handle, **arrays), durable=True)


def changed_voxels(base: np.ndarray, current: np.ndarray) -> np.ndarray:
    """Flat indices where ``current`` differs from ``base``."""
    return np.flatnonzero(base.reshape(-1) != current.reshape(-1))


def dice_per_label(
    base: np.ndarray, current: np.ndarray, labels: Sequence[int] | None = None
) -> dict[int, float]:
    """Dice of ``current`` against ``base`` for each non-zero label present in either.

    Computed from the changed voxels and the base's label counts (one pass over the array).
    """
    counts = np.bincount(base.reshape(-1).astype(np.intp, copy=False))
    return _dice_from_changes(counts, base, current, changed_voxels(base, current), labels)


def _dice_from_changes(
    base_counts: np.ndarray,
    base: np.ndarray,
    current: np.ndarray,
    changed: np.ndarray,
    labels: Sequence[int] | None = None,
) -> dict[int, float]:
    removed, added = _label_changes(base, current, changed, len(base_counts))
    size = max(len(base_counts), len(added))
    a = np.zeros(size, np.int64)
    a[: len(base_counts)] = base_counts
    out_of, into = np.zeros(size, np.int64), np.zeros(size, np.int64)
    out_of[: len(removed)] = removed
    into[: len(added)] = added
    b = a - out_of + into
    both = a - out_of
    values = range(1, size) if labels is None else [v for v in labels if v != 0]
    result = {}
    for v in values:
        if v >= size or a[v] + b[v] == 0:
            continue
        result[int(v)] = float(2.0 * both[v] / (a[v] + b[v]))
    return result


def _label_changes(
    base: np.ndarray, current: np.ndarray, changed: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per label value: voxels taken from it, voxels given to it."""
    was = base.reshape(-1)[changed].astype(np.intp)
    now = current.reshape(-1)[changed].astype(np.intp)
    return np.bincount(was, minlength=size), np.bincount(now, minlength=size)


class MaskCorrection:
    """One annotator's correction of a model's mask, with autosave and provenance.

    Parameters
    ----------
    base : Volume
        The model output on the source grid (integer labels). Edits are compared with it.
    annotator : str
        Who corrects (recorded, and written as the SEG's content creator).
    base_model : str, optional
        The model reference (``"id@version"``) that made ``base``.
    source : str, optional
        The source image (path or SeriesInstanceUID).
    source_files : sequence of path, optional
        The DICOM files of the source series; a DICOM SEG is saved when given.
    label_names, label_colors : mapping
        Label value -> name, and -> RGB 0-255.
    autosave_dir : path
        Folder for this correction's autosaves; one folder per mask. A folder holding an
        earlier session on the same base continues it (its start time and edit count).

    Raises
    ------
    CorrectionError
        ``autosave_dir`` holds the autosaves of another mask.
    """

    def __init__(
        self,
        base: Volume,
        *,
        annotator: str,
        base_model: str | None,
        source: str | None,
        source_files: Sequence[str | Path] | None,
        label_names: Mapping[int, str],
        label_colors: Mapping[int, tuple[int, int, int]],
        autosave_dir: str | Path,
    ):
        base = base.compute()
        data = np.ascontiguousarray(np.asarray(base.data))
        if data.dtype.kind not in "iub":
            raise CorrectionError(f"a mask must hold integer labels, got {data.dtype}")
        self.base = base.with_data(data)
        self.annotator = annotator
        self.base_model = base_model
        self.source = source
        self.source_files = [Path(f) for f in source_files] if source_files else None
        self.label_names = {int(k): str(v) for k, v in label_names.items()}
        self.label_colors = {int(k): tuple(int(c) for c in v[:3]) for k, v in label_colors.items()}
        self.autosave_dir = Path(autosave_dir)
        self._base_flat = data.reshape(-1)
        self._base_counts = np.bincount(self._base_flat.astype(np.intp, copy=False))
        self._base_crc = _crc(data)
        self.started = _now()
        self.seconds_editing = 0.0
        self.sequence = 0
        self._last_activity = time.monotonic()
        self._open_autosave_dir()

    # -- autosave folder --------------------------------------------------------------------
    def _session(self) -> dict[str, Any]:
        return {
            "format": "napari-mrisynth mask correction autosave 1",
            "annotator": self.annotator,
            "started": self.started,
            "base_model": self.base_model,
            "source": self.source,
            "source_files": [str(f) for f in self.source_files] if self.source_files else None,
            "label_names": {str(k): v for k, v in self.label_names.items()},
            "label_colors": {str(k): list(v) for k, v in self.label_colors.items()},
            "shape": list(self.base.shape),
            "dtype": self.base.dtype.str,
            "affine_lps": self.base.affine.tolist(),
            "base_crc32": self._base_crc,
        }

    def _open_autosave_dir(self) -> None:
        folder = self.autosave_dir
        folder.mkdir(parents=True, exist_ok=True)
        session_path = folder / SESSION_FILE
        if session_path.exists():
            try:
                earlier = json.loads(session_path.read_text())
            except (OSError, ValueError):
                earlier = None
            if earlier is not None and earlier.get("base_crc32") != self._base_crc:
                raise CorrectionError(
                    f"{folder}: holds the autosaves of another mask (base CRC "
                    f"{earlier.get('base_crc32')}, this mask {self._base_crc}); "
                    "choose another folder"
                )
            if earlier is not None:
                self.started = str(earlier.get("started") or self.started)
                found = _autosaves(folder)
                self.sequence = _sequence_of(found[0]) if found else 0
                newest = _load_autosave(found[0], self._base_flat) if found else None
                if newest is not None:
                    self.seconds_editing = float(newest[1].get("seconds_editing", 0.0))
        if not (folder / BASE_FILE).exists() or _load_base(folder) is None:
            _write_arrays(folder / BASE_FILE, True, labels=self.base.data)
        write_json(session_path, self._session(), durable=True)

    # -- measuring --------------------------------------------------------------------------
    def _check(self, current: np.ndarray) -> np.ndarray:
        current = np.asarray(current)
        if current.shape != self.base.shape:
            raise CorrectionError(
                f"the edited mask has shape {current.shape}, the model's {self.base.shape}"
            )
        return current

    def _touch(self) -> None:
        """Count the time since the last edit as editing, unless the annotator was away."""
        now = time.monotonic()
        gap = now - self._last_activity
        if gap <= IDLE_GAP_S:
            self.seconds_editing += gap
        self._last_activity = now

    def name_of(self, value: int) -> str:
        return self.label_names.get(int(value), f"label {int(value)}")

    def summary(self, current: np.ndarray) -> CorrectionRecord:
        """The record of the edits so far (not saved; ``files`` empty)."""
        current = self._check(current)
        changed = changed_voxels(self.base.data, current)
        size = max(len(self._base_counts), int(current.max(initial=0)) + 1)
        removed, added = _label_changes(self.base.data, current, changed, size)
        per_label = {
            self.name_of(v): {"value": v, "added": int(added[v]), "removed": int(removed[v])}
            for v in range(1, size)
            if added[v] or removed[v]
        }
        dice = _dice_from_changes(self._base_counts, self.base.data, current, changed)
        dice_named: dict[str, float] = {self.name_of(v): d for v, d in dice.items()}
        dice_named["mean"] = float(np.mean(list(dice.values()))) if dice else 1.0
        return CorrectionRecord(
            annotator=self.annotator,
            started=self.started,
            saved="",
            base_model=self.base_model,
            source=self.source,
            voxels_changed=int(changed.size),
            voxels_changed_per_label=per_label,
            dice_vs_model=dice_named,
            seconds_editing=round(self.seconds_editing, 1),
        )

    # -- autosave ---------------------------------------------------------------------------
    def autosave(self, current: np.ndarray) -> Path:
        """Write the edits so far (changed voxels only) atomically; keep the last few.

        Returns
        -------
        Path
            The autosave written.
        """
        current = self._check(current)
        self._touch()
        changed = changed_voxels(self.base.data, current)
        index_dtype = np.uint32 if self.base.data.size < 2**32 else np.uint64
        if changed.size * (np.dtype(index_dtype).itemsize + self.base.dtype.itemsize) < (
            self.base.data.nbytes
        ):
            indices = changed.astype(index_dtype)
            values = current.reshape(-1)[changed].astype(self.base.dtype)
        else:  # most of the mask changed: the whole mask is smaller than the list of changes
            indices = np.zeros(0, index_dtype)
            values = np.ascontiguousarray(current, dtype=self.base.dtype).reshape(-1)
        self.sequence += 1
        meta = {
            "sequence": self.sequence,
            "saved": _now(),
            "voxels_changed": int(changed.size),
            "full": indices.size == 0 and values.size > 0,
            "seconds_editing": round(self.seconds_editing, 3),
            "crc32": _crc(indices, values),
            "base_crc32": self._base_crc,
        }
        path = self.autosave_dir / f"autosave-{self.sequence:06d}.npz"
        # uncompressed: zlib would cost more time than the disk saves (changes are small)
        _write_arrays(
            path,
            False,
            indices=indices,
            values=values,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        )
        for old in _autosaves(self.autosave_dir)[KEEP_AUTOSAVES:]:
            old.unlink(missing_ok=True)
        return path

    @staticmethod
    def recover(autosave_dir: str | Path) -> tuple[np.ndarray, dict[str, Any]] | None:
        """The newest intact autosave in ``autosave_dir``: (labels, facts), or None.

        Damaged or half-written autosaves are skipped in favour of older intact ones.
        ``facts`` holds the session (annotator, base model, source, label schema...) and the
        autosave's own (``sequence``, ``saved``, ``voxels_changed``, ``file``).
        """
        folder = Path(autosave_dir)
        try:
            session = json.loads((folder / SESSION_FILE).read_text())
        except (OSError, ValueError):
            return None
        base = _load_base(folder)
        if base is None or _crc(base) != session.get("base_crc32"):
            return None
        flat = base.reshape(-1)
        for path in _autosaves(folder):
            loaded = _load_autosave(path, flat)
            if loaded is None:
                continue
            labels, meta = loaded
            if meta.get("base_crc32") != session.get("base_crc32"):
                continue
            return labels.reshape(base.shape), {**session, **meta, "file": str(path)}
        return None

    # -- saving -----------------------------------------------------------------------------
    def save(self, current: np.ndarray, out_dir: str | Path, *, stem: str) -> CorrectionRecord:
        """Write the corrected mask and its record.

        Files: ``<stem>_labels.nii.gz`` (the base's geometry, label intent),
        ``<stem>_seg.dcm`` (DICOM SEG referencing the source series, when the source files
        are known) and ``<stem>_correction.json`` (the record, written last).

        Returns
        -------
        CorrectionRecord
            With ``saved`` and ``files`` filled in.
        """
        import nibabel as nib

        from napari_mrisynth.io.dicom_seg import write_dicom_seg
        from napari_mrisynth.volume import volume_to_nifti

        current = self._check(current)
        self._touch()
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        corrected = self.base.with_data(np.ascontiguousarray(current).astype(self.base.dtype))
        record = self.summary(corrected.data)
        files = []
        nifti = out_dir / f"{stem}_labels.nii.gz"
        image = volume_to_nifti(corrected)
        image.header.set_intent("label")
        image.header["descrip"] = f"corrected by {self.annotator}"[:79].encode("ascii", "replace")
        with replacing(nifti, suffix=".nii.gz") as partial:
            nib.save(image, partial)
        files.append(nifti)
        if self.source_files:
            seg = write_dicom_seg(
                corrected,
                self.source_files,
                out_dir / f"{stem}_seg.dcm",
                segments={
                    v: (self.name_of(v), self.label_colors.get(v, (128, 128, 128)))
                    for v in set(self.label_names) | set(self.label_colors)
                },
                algorithm=self.base_model,
                manual=True,
                annotator=self.annotator,
                series_description=f"Corrected segmentation ({self.annotator})",
            )
            files.append(seg)
        record.saved = _now()
        record.seconds_editing = round(self.seconds_editing, 1)
        json_path = out_dir / f"{stem}_correction.json"
        record.files = [str(f) for f in [*files, json_path]]
        write_json(json_path, asdict(record), durable=True)
        return record


def _autosaves(folder: Path) -> list[Path]:
    """Autosave files, newest (highest sequence) first."""
    return sorted(folder.glob(_AUTOSAVE_GLOB), key=_sequence_of, reverse=True)


def _sequence_of(path: Path) -> int:
    try:
        return int(path.stem.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def _load_base(folder: Path) -> np.ndarray | None:
    try:
        with np.load(folder / BASE_FILE) as archive:
            return np.asarray(archive["labels"])
    except Exception:  # a damaged archive raises zipfile, zlib, ValueError or OSError errors
        return None


def _load_autosave(path: Path, base_flat: np.ndarray) -> tuple[np.ndarray, dict] | None:
    """Base with the autosave's changes applied, and its facts; None when damaged."""
    try:
        with np.load(path) as archive:
            indices = np.asarray(archive["indices"])
            values = np.asarray(archive["values"])
            meta = json.loads(bytes(np.asarray(archive["meta"])).decode())
    except Exception:  # truncated or garbled: zipfile, zlib, ValueError, KeyError, OSError
        return None
    if _crc(indices, values) != meta.get("crc32"):
        return None
    if meta.get("full"):
        if values.size != base_flat.size:
            return None
        return values.astype(base_flat.dtype), meta
    if len(indices) != len(values) or (len(indices) and int(indices.max()) >= base_flat.size):
        return None
    labels = base_flat.copy()
    labels[indices.astype(np.intp)] = values
    return labels, meta


__all__ = ["CorrectionError", "CorrectionRecord", "MaskCorrection", "dice_per_label"]
