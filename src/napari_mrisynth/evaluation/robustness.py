"""Do the models hold when the scan changes and the head does not?

Users run the segmenter and the classifier on their own scanners' images: thick slices,
bias fields, noise, and heads stored sagittally, coronally or obliquely. This module makes
those variants of a held-out head exactly (the ground truth follows every change) and
measures what the models do with them:

* :func:`acquire` — the head as another acquisition stores it: slices of a given thickness
  along one axis (a Gaussian of that FWHM, then a grid with that spacing), a smooth
  multiplicative bias field, Rician noise;
* :func:`reslice` — the same head in another stored orientation: axial, sagittal and coronal
  are exact reorderings of the voxels; oblique is a resampling onto a rotated grid;
* :func:`segmentation_robustness` — per-label Dice of a segmenter under each acquisition,
  against the truth carried onto the acquired grid (nearest neighbour), so every condition
  is scored on the grid a user's labels would have;
* :func:`reslice_agreement` — labels of each form carried back onto the axial grid and
  compared with the axial form's, and the classifier's probability in each form.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.volume import Volume, onto_grid, reorient_to_axes

#: Stored orientations of one head.
FORMS = ("axial", "sagittal", "coronal", "oblique")

# Index axes (x, y, z) as LPS columns: axial runs L, P, S; sagittal slices run along L
# with columns anterior-to-posterior and rows head-to-foot; coronal slices run along P.
_FORM_AXES = {
    "axial": np.eye(3),
    "sagittal": np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]], dtype=float),
    "coronal": np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], dtype=float),
}


@dataclass(frozen=True)
class Acquisition:
    """One way of acquiring a head.

    Attributes
    ----------
    name : str
    thickness_mm : float, optional
        Slice thickness along ``axis`` (the slices are also spaced at it); None keeps the
        grid.
    axis : int
        Array axis (0 = z, the stack's slice axis) of the thick slices.
    bias : float
        Standard deviation of the log bias field (0.2 ≈ ±20 % across the head).
    noise : float
        Rician noise, as a fraction of the head's 99th-percentile intensity.
    """

    name: str
    thickness_mm: float | None = None
    axis: int = 0
    bias: float = 0.0
    noise: float = 0.0


#: The conditions reported by default: slice thickness 1-5 mm, bias and noise, and both.
STANDARD_ACQUISITIONS: tuple[Acquisition, ...] = (
    Acquisition("as stored"),
    *(Acquisition(f"{t:g} mm slices", thickness_mm=float(t)) for t in (3, 4, 5)),
    Acquisition("bias 0.2", bias=0.2),
    Acquisition("bias 0.4 (strong)", bias=0.4),
    Acquisition("noise 3 %", noise=0.03),
    Acquisition("noise 6 %", noise=0.06),
    Acquisition("5 mm slices + strong bias", thickness_mm=5.0, bias=0.4),
)


def acquire(volume: Volume, acquisition: Acquisition, *, seed: int = 0) -> Volume:
    """``volume`` as ``acquisition`` would store it (float32; geometry changes with the
    slice thickness)."""
    import torch

    from napari_mrisynth.preprocess.intensity import head_mask
    from napari_mrisynth.training.randomize import bias_field, blur_to_resolution

    data = np.asarray(volume.data, dtype=np.float32)
    generator = torch.Generator().manual_seed(int(seed))
    if acquisition.bias > 0:
        field = bias_field(data.shape, acquisition.bias, generator)[0].numpy()
        data = data * field
    if acquisition.noise > 0:
        sigma = acquisition.noise * float(np.percentile(data[head_mask(data)], 99))
        real = data + sigma * torch.randn(data.shape, generator=generator).numpy()
        imaginary = sigma * torch.randn(data.shape, generator=generator).numpy()
        data = np.sqrt(real**2 + imaginary**2).astype(np.float32)
    out = volume.with_data(data.astype(np.float32))
    t = acquisition.thickness_mm
    index_axis = 2 - acquisition.axis
    h = float(volume.spacing[index_axis])
    if t is not None and t > h:
        blurred = blur_to_resolution(torch.from_numpy(out.data)[None], acquisition.axis, h, t)
        out = out.with_data(blurred[0].numpy())
        spacing = volume.spacing.copy()
        spacing[index_axis] = t
        shape = list(volume.shape)
        shape[acquisition.axis] = int(math.floor((shape[acquisition.axis] - 1) * h / t)) + 1
        grid = Volume(np.zeros(shape, np.uint8), spacing, volume.origin, volume.direction)
        out = onto_grid(out, grid)
    out.metadata["acquisition"] = asdict(acquisition)
    return out


def _rotation(angle_deg: float) -> np.ndarray:
    """Rotation by ``angle_deg`` about the left-right axis, then half of it about the
    anterior-posterior axis (a typical oblique planning: tilted along the AC-PC line)."""
    a, b = math.radians(angle_deg), math.radians(angle_deg / 2)
    about_x = np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])
    about_y = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    return about_y @ about_x


def reslice(volume: Volume, form: str, *, labels: bool = False, angle_deg: float = 20.0) -> Volume:
    """The same head stored in ``form`` (one of :data:`FORMS`).

    ``axial``, ``sagittal`` and ``coronal`` reorder the voxels of an axis-aligned volume
    exactly; ``oblique`` resamples it (linear, or nearest for ``labels``) onto a grid
    rotated by ``angle_deg`` that covers the whole original box, at the finest spacing.
    """
    if form in _FORM_AXES:
        return reorient_to_axes(volume, _FORM_AXES[form])
    if form != "oblique":
        raise MrisynthError(f"reslice: form {form!r} is not one of {FORMS}")
    axes = _rotation(angle_deg)
    nz, ny, nx = volume.shape
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)])
    points = np.array([volume.index_to_lps(c.astype(float)) for c in corners])
    along = points @ axes  # coordinates along the new axes
    h = float(volume.spacing.min())
    low, high = along.min(axis=0), along.max(axis=0)
    shape_xyz = np.ceil((high - low) / h).astype(int) + 1
    grid = Volume(np.zeros(shape_xyz[::-1], np.uint8), np.full(3, h), axes @ low, axes)
    return onto_grid(volume, grid, labels=labels)


# -- scoring ----------------------------------------------------------------------------------
def _subject_files(cohort: Path, subject: str) -> tuple[Path, Path]:
    from napari_mrisynth.training.data import subject_image, subject_labels

    return subject_image(cohort, subject), subject_labels(cohort, subject)


def segmentation_robustness(
    cohort: str | Path,
    subjects: Sequence[str],
    model: Any = None,
    *,
    acquisitions: Sequence[Acquisition] = STANDARD_ACQUISITIONS,
    device: Any = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Per-label Dice of a segmenter on ``subjects`` of a cohort under each acquisition.

    The truth goes onto each acquired grid by nearest neighbour; a label absent from both
    truth and prediction is not scored. Subjects should be held out from the model's
    training (its card's ``training.splits.test``).

    Returns
    -------
    dict
        ``model``, ``subjects``, ``labels`` (id -> name) and ``conditions``: per acquisition
        its settings, ``dice`` (label name -> mean over subjects), ``brain_labels_mean``,
        ``absent`` (labels the model gave no voxel in some subject) and ``per_subject``.
    """
    from napari_mrisynth.anatomy.labels import BRAIN_LABELS
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.models.inference import get_model, segment
    from napari_mrisynth.reports.metrics import dice_per_label

    cohort = Path(cohort)
    card = get_model(model, "segmentation", device).card
    names = card.label_names
    scored = [v for v in sorted(names) if v > 0]
    conditions: dict[str, Any] = {}
    total, done = len(subjects) * len(acquisitions), 0
    for acquisition in acquisitions:
        conditions[acquisition.name] = {"acquisition": asdict(acquisition), "per_subject": {}}
    for s, subject in enumerate(subjects):
        image_path, label_path = _subject_files(cohort, subject)
        image, truth = load_volume(image_path), load_volume(label_path)
        for acquisition in acquisitions:
            acquired = acquire(image, acquisition, seed=seed * 1009 + s)
            predicted = segment(acquired, card, device=device).labels
            truth_here = onto_grid(truth, acquired, labels=True)
            dice = dice_per_label(truth_here.data, predicted.data, scored)
            predicted_ids = set(np.unique(np.asarray(predicted.data)).tolist())
            true_ids = set(np.unique(np.asarray(truth_here.data)).tolist())
            conditions[acquisition.name]["per_subject"][subject] = {
                "dice": {names[v]: d for v, d in dice.items() if not math.isnan(d)},
                "absent": [names[v] for v in scored if v in true_ids - predicted_ids],
                "grid_mm": [float(h) for h in acquired.spacing],
            }
            done += 1
            if progress is not None:
                progress(done, total)
    brain_names = {names[v] for v in BRAIN_LABELS if v in names}
    for condition in conditions.values():
        per_subject = condition["per_subject"].values()
        label_names = sorted(
            {n for r in per_subject for n in r["dice"]}, key=list(names.values()).index
        )
        condition["dice"] = {
            n: float(np.mean([r["dice"][n] for r in per_subject if n in r["dice"]]))
            for n in label_names
        }
        brain = [condition["dice"][n] for n in label_names if n in brain_names]
        condition["brain_labels_mean"] = float(np.mean(brain)) if brain else math.nan
        condition["brain_labels_min"] = float(np.min(brain)) if brain else math.nan
        condition["absent"] = sorted({n for r in per_subject for n in r["absent"]})
    return {"model": card.ref, "cohort": str(cohort), "subjects": list(subjects),
            "labels": {str(v): names[v] for v in scored}, "conditions": conditions}  # fmt: skip


#: Voxels (on the scan's grid) the regions bvFTD changes are grown by: the simulated
#: atrophy turns cortex at their border into CSF, so the evidence lies at and around them.
SALIENCY_REGION_GROWTH = 2


def saliency_check(
    cohort: str | Path,
    subjects: Sequence[str],
    classifier: Any = None,
    *,
    device: Any = None,
) -> dict[str, Any]:
    """Does the classifier look where bvFTD changes the head?

    For each held-out bvFTD subject, the bvFTD saliency map (Grad-CAM, on the scan's grid)
    is summed inside the regions the disease changes in the simulator (orbitomedial frontal,
    insular and anterior temporal cortex, and the lateral ventricles, from the subject's
    true labels, grown by :data:`SALIENCY_REGION_GROWTH` voxels) and inside the brain.
    ``enrichment`` is the regions' share of the saliency over their share of the brain's
    volume: 1 is a map blind to anatomy, above 1 a map that looks at the disease.
    """
    from scipy import ndimage as ndi

    from napari_mrisynth.anatomy.labels import BRAIN_LABELS, BVFTD_LABELS, LABEL_IDS
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.models.inference import classify, get_model
    from napari_mrisynth.training.splits import read_participants

    card = get_model(classifier, "classification", device).card
    diagnosis = {r["participant_id"]: r.get("diagnosis") for r in read_participants(cohort)}
    changed = (*BVFTD_LABELS, LABEL_IDS["lateral_ventricles"])
    per_subject: dict[str, Any] = {}
    for subject in subjects:
        if diagnosis.get(subject) != "bvFTD":
            continue
        image_path, label_path = _subject_files(Path(cohort), subject)
        truth = np.asarray(load_volume(label_path).data)
        result = classify(load_volume(image_path), card, device=device, saliency=True)
        heat = np.asarray(result.saliency.data, dtype=np.float64)
        brain = np.isin(truth, BRAIN_LABELS)
        region = ndi.binary_dilation(np.isin(truth, changed),
                                     iterations=SALIENCY_REGION_GROWTH) & brain  # fmt: skip
        mass = float(heat[brain].sum())
        # Grad-CAM is 0 everywhere when nothing in the head argues for bvFTD: no share then
        share = float(heat[region].sum()) / mass if mass > 0 else None
        volume_share = float(region.sum()) / float(brain.sum())
        per_subject[subject] = {
            "p_bvftd": result.probabilities.get("bvFTD"),
            "saliency_share": share,
            "volume_share": volume_share,
            "enrichment": None if share is None or volume_share == 0 else share / volume_share,
        }
    values = [r["enrichment"] for r in per_subject.values() if r["enrichment"] is not None]
    return {
        "model": card.ref,
        "regions": [n for n, v in LABEL_IDS.items() if v in changed],
        "per_subject": per_subject,
        "mean_enrichment": float(np.mean(values)) if values else None,
        "without_evidence": [s for s, r in per_subject.items() if r["enrichment"] is None],
    }


def reslice_agreement(
    volume: Volume,
    segmenter: Any = None,
    classifier: Any = None,
    *,
    forms: Sequence[str] = FORMS,
    device: Any = None,
) -> dict[str, Any]:
    """The same head in each stored form: the segmenter's labels carried back onto the
    axial form's grid (nearest neighbour) and compared with the axial labels (Dice per
    label present in the axial labels, their mean, the mean over the brain labels alone, and
    the fraction of head voxels with one label), and the classifier's probabilities per
    form.

    The brain labels' mean is the figure for a brain-only image (a skull-stripped scan,
    the MNI152 template): there the labels outside the brain are a few stray voxels whose
    Dice swings between 0 and 1 and dominates the mean over all labels.
    """
    from napari_mrisynth.anatomy.labels import BRAIN_LABELS
    from napari_mrisynth.models.inference import classify, segment
    from napari_mrisynth.reports.metrics import dice_per_label

    axial = reslice(volume, "axial")
    result: dict[str, Any] = {"forms": {}}
    reference = None
    for form in forms:
        stored = reslice(axial, form)
        entry: dict[str, Any] = {"shape": list(stored.shape),
                                 "direction": np.round(stored.direction, 4).tolist()}  # fmt: skip
        if segmenter is not None:
            labels = segment(stored, segmenter, device=device).labels
            back = onto_grid(labels, axial, labels=True).data
            if reference is None:
                reference = np.asarray(back)
                names = {int(k): v for k, v in labels.metadata.get("label_names", {}).items()}
            present = [int(v) for v in np.unique(reference) if v > 0]
            dice = dice_per_label(reference, back, present)
            head = (reference > 0) | (np.asarray(back) > 0)
            entry["label_dice"] = {names.get(v, str(v)): d for v, d in dice.items()}
            entry["mean_dice"] = float(np.nanmean(list(dice.values())))
            brain = [d for v, d in dice.items() if v in BRAIN_LABELS]
            entry["brain_mean_dice"] = float(np.nanmean(brain)) if brain else None
            entry["min_dice"] = float(np.nanmin(list(dice.values())))
            entry["voxel_agreement"] = float((reference[head] == np.asarray(back)[head]).mean())
            # the ceiling: the axial labels themselves carried onto this form's grid and back
            # (1 for the exact forms; below 1 where resampling loses thin structures)
            there = onto_grid(axial.with_data(reference), stored, labels=True)
            round_trip = np.asarray(onto_grid(there, axial, labels=True).data)
            entry["round_trip_mean_dice"] = float(
                np.nanmean(list(dice_per_label(reference, round_trip, present).values()))
            )
        if classifier is not None:
            entry["probabilities"] = classify(stored, classifier, device=device).probabilities
        result["forms"][form] = entry
    if classifier is not None:
        by_class: dict[str, list[float]] = {}
        for entry in result["forms"].values():
            for name, p in entry["probabilities"].items():
                by_class.setdefault(name, []).append(p)
        result["probability_range"] = {k: max(v) - min(v) for k, v in by_class.items()}
    if segmenter is not None:
        result["worst_mean_dice"] = min(e["mean_dice"] for e in result["forms"].values())
        brain = [e["brain_mean_dice"] for e in result["forms"].values()]
        result["worst_brain_mean_dice"] = None if None in brain else min(brain)
    return result


# -- the whole check ---------------------------------------------------------------------------
def held_out_subjects(card: Any, cohort: str | Path, subjects: Sequence[str] | None) -> list[str]:
    """``subjects``, or the model's held-out test subjects found in ``cohort``; refuses a
    subject the model trained or was validated on (an evaluation never uses one)."""
    from napari_mrisynth.training.splits import read_participants

    splits = (card.training or {}).get("splits") or {}
    seen = set(splits.get("train", [])) | set(splits.get("val", []))
    available = {row["participant_id"] for row in read_participants(Path(cohort))}
    if subjects is None:
        chosen = [s for s in splits.get("test", []) if s in available]
        if not chosen:
            raise MrisynthError(f"{cohort}: none of {card.ref}'s held-out test subjects is in "
                                "this cohort; name held-out subjects with --subjects")  # fmt: skip
        return chosen
    missing = [s for s in subjects if s not in available]
    if missing:
        raise MrisynthError(f"{cohort}: no subject {', '.join(missing)}")
    used = [s for s in subjects if s in seen]
    if used:
        raise MrisynthError(f"{', '.join(used)}: trained or validated {card.ref}; evaluate on "
                            "held-out subjects only")  # fmt: skip
    return list(subjects)


def evaluate_robustness(
    cohort: str | Path,
    *,
    segmenter: Any = None,
    classifier: Any = None,
    subjects: Sequence[str] | None = None,
    acquisitions: Sequence[Acquisition] = STANDARD_ACQUISITIONS,
    forms: Sequence[str] = FORMS,
    reslice_subjects: int = 3,
    template_head: bool = True,
    baseline_segmenter: Any = None,
    baseline_classifier: Any = None,
    baseline_report: dict[str, Any] | None = None,
    device: Any = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """:func:`segmentation_robustness` on held-out subjects, :func:`reslice_agreement`
    on the first ``reslice_subjects`` of them and (``template_head``) the
    :func:`template_head_check`, with the figures the targets name.

    With ``baseline_segmenter`` (and optionally ``baseline_classifier``) the same checks run
    on those models too, on the same scans and draws, under ``result["baseline"]``; the
    subjects must be held out from both segmenters. ``baseline_report`` (an earlier result
    of this function) is taken as the baseline instead, after checking that it scored the
    same cohort, subjects, acquisitions, forms and seed, so its draws are these.
    """
    from napari_mrisynth.models.inference import get_model

    seg_card = get_model(segmenter, "segmentation", device).card
    chosen = held_out_subjects(seg_card, cohort, subjects)
    pairs = [(seg_card, classifier)]
    if baseline_segmenter is not None:
        base_card = get_model(baseline_segmenter, "segmentation", device).card
        held_out_subjects(base_card, cohort, chosen)
        pairs.append((base_card, baseline_classifier))
    per_model = len(chosen) * len(acquisitions) + min(reslice_subjects, len(chosen))
    steps = len(pairs) * (per_model + template_head)
    done = 0

    def advance() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, steps)

    results = [
        _evaluate_pair(cohort, chosen, seg, cls, acquisitions=acquisitions, forms=forms,
                       reslice_subjects=reslice_subjects, template_head=template_head,
                       device=device, seed=seed, advance=advance)
        for seg, cls in pairs
    ]  # fmt: skip
    result = results[0]
    if len(results) > 1:
        result["baseline"] = results[1]
    elif baseline_report is not None:
        _check_comparable(result, baseline_report)
        result["baseline"] = {k: v for k, v in baseline_report.items() if k != "baseline"}
    return result


def _check_comparable(result: dict[str, Any], other: dict[str, Any]) -> None:
    """Refuse a saved baseline that scored other scans or draws than ``result``."""

    def facts(r: dict[str, Any]) -> dict[str, Any]:
        seg = r["segmentation"]
        return {
            "cohort": str(Path(seg["cohort"]).resolve()),
            "subjects": list(seg["subjects"]),
            "acquisitions": {n: c["acquisition"] for n, c in seg["conditions"].items()},
            "seed": r.get("seed"),
            "reslice subjects": sorted(r.get("reslice", {})),
            "forms": sorted({f for x in r.get("reslice", {}).values() for f in x["forms"]}),
            "template head": "template_head" in r,
        }

    mine, theirs = facts(result), facts(other)
    differ = [k for k in mine if mine[k] != theirs[k]]
    if differ:
        raise MrisynthError(f"the baseline report scored other {', '.join(differ)} "
                            f"({', '.join(f'{k}: {theirs[k]!r}' for k in differ)}); rerun it "
                            "with this run's settings")  # fmt: skip


def _evaluate_pair(
    cohort: str | Path,
    chosen: Sequence[str],
    seg_card: Any,
    classifier: Any,
    *,
    acquisitions: Sequence[Acquisition],
    forms: Sequence[str],
    reslice_subjects: int,
    template_head: bool,
    device: Any,
    seed: int,
    advance: Callable[[], None],
) -> dict[str, Any]:
    """Every check on one segmenter (and classifier); ``advance()`` after each scan."""
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.training.data import subject_image

    segmentation = segmentation_robustness(cohort, chosen, seg_card, acquisitions=acquisitions,
                                           device=device, seed=seed,
                                           progress=lambda _done, _total: advance())  # fmt: skip
    result: dict[str, Any] = {"segmentation": segmentation}
    reslices: dict[str, Any] = {}
    for subject in chosen[:reslice_subjects]:
        image = load_volume(subject_image(cohort, subject))
        reslices[subject] = reslice_agreement(image, seg_card, classifier, forms=forms,
                                              device=device)  # fmt: skip
        advance()
    result["reslice"] = reslices
    if classifier is not None:
        result["saliency"] = saliency_check(cohort, chosen, classifier, device=device)
    if template_head:
        result["template_head"] = template_head_check(seg_card, classifier, forms=forms,
                                                      device=device)  # fmt: skip
        advance()
    conditions = result["segmentation"]["conditions"]
    stored = conditions[acquisitions[0].name]
    summary: dict[str, Any] = {
        "segmenter": seg_card.ref,
        "reference_condition": acquisitions[0].name,
        "brain_labels_mean": stored["brain_labels_mean"],
        "brain_labels_min": stored["brain_labels_min"],
        "absent": stored["absent"],
        "largest_drop": max(
            (stored["brain_labels_mean"] - c["brain_labels_mean"], name)
            for name, c in conditions.items()
        ),
    }
    if reslices:
        summary["worst_reslice_mean_dice"] = min(r["worst_mean_dice"] for r in reslices.values())
        brain = [r["worst_brain_mean_dice"] for r in reslices.values()]
        summary["worst_reslice_brain_dice"] = None if None in brain else min(brain)
        if classifier is not None:
            summary["largest_probability_change"] = max(
                max(r["probability_range"].values()) for r in reslices.values()
            )
    if classifier is not None:
        summary["saliency_enrichment"] = result["saliency"]["mean_enrichment"]
        summary["classifier"] = result["saliency"]["model"]
    if template_head:
        t = result["template_head"]
        summary["template_head"] = {
            "brain_dice": t.get("brain_dice"),
            "parenchyma_dice": t["parenchyma_dice"],
            "lateral_ventricles_ml": t["volumes_ml"]["lateral_ventricles"],
            "absent": t["absent"],
            "worst_reslice_mean_dice": t["reslice"].get("worst_mean_dice"),
            "worst_reslice_brain_dice": t["reslice"].get("worst_brain_mean_dice"),
        }
    result["summary"] = summary
    result["seed"] = seed
    return result


def plot_robustness(result: dict[str, Any], path: str | Path) -> Path:
    """Mean Dice over the brain labels per acquisition (slice thickness, bias, noise), one
    line per segmenter (the baseline's dashed), and the lowest brain label's Dice."""
    from napari_mrisynth.reports.plots import _figure, _save

    runs = [result] + ([result["baseline"]] if result.get("baseline") else [])
    names = list(result["segmentation"]["conditions"])
    figure = _figure(9.0, 4.2)
    axes = figure.subplots(1, 1)
    x = np.arange(len(names))
    for k, run in enumerate(runs):
        seg = run["segmentation"]
        conditions = seg["conditions"]
        style = "-" if k == 0 else "--"
        mean = [conditions[n]["brain_labels_mean"] for n in names]
        low = [conditions[n]["brain_labels_min"] for n in names]
        axes.plot(x, mean, style + "o", label=f"{seg['model']}: mean of brain labels")
        axes.plot(x, low, style + "v", label=f"{seg['model']}: lowest brain label", alpha=0.7)
    axes.axhline(0.8, color="grey", lw=0.8, ls=":", label="target 0.8")
    axes.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    axes.set_ylim(0.0, 1.0)
    axes.set_ylabel("Dice on held-out subjects")
    axes.set_title(f"Acquisitions of {len(result['segmentation']['subjects'])} held-out heads")
    axes.legend(fontsize=7, loc="lower left")
    return _save(figure, path)


def _comparison(result: dict[str, Any]) -> list[str]:
    """Model against baseline, same scans and draws: the figures the targets name."""
    base = result["baseline"]
    new, old = result["summary"], base["summary"]
    lines = ["", f"## Against {old['segmenter']} (same scans, same draws)", "",
             f"| measure | {new['segmenter']} | {old['segmenter']} |", "|---|---|---|"]  # fmt: skip
    mine, theirs = result["segmentation"]["conditions"], base["segmentation"]["conditions"]
    for name in mine:
        lines.append(f"| brain labels mean Dice, {name} | {mine[name]['brain_labels_mean']:.3f} "
                     f"| {theirs[name]['brain_labels_mean']:.3f} |")  # fmt: skip
    lines.append(f"| lowest brain label, {new['reference_condition']} | "
                 f"{new['brain_labels_min']:.3f} | {old['brain_labels_min']:.3f} |")  # fmt: skip
    lines.append(f"| labels left empty | {', '.join(new['absent']) or '-'} | "
                 f"{', '.join(old['absent']) or '-'} |")  # fmt: skip
    for key, label in (
        ("worst_reslice_mean_dice", "worst reslice agreement"),
        ("worst_reslice_brain_dice", "worst reslice agreement, brain labels"),
        ("largest_probability_change", "largest P change across reslices"),
        ("saliency_enrichment", "saliency enrichment in bvFTD regions (1 = blind)"),
    ):
        if key in new and key in old:
            cells = [_cell(r[key]) for r in (new, old)]
            lines.append(f"| {label} | {cells[0]} | {cells[1]} |")
    if "template_head" in new and "template_head" in old:
        a, b = new["template_head"], old["template_head"]
        cells = [_cell(t.get("brain_dice")) for t in (a, b)]
        lines.append(f"| MNI152 brain Dice (nilearn's extraction) | {cells[0]} | {cells[1]} |")
        lines.append(f"| MNI152 parenchyma Dice | {a['parenchyma_dice']:.3f} | "
                     f"{b['parenchyma_dice']:.3f} |")  # fmt: skip
        lines.append(f"| MNI152 lateral ventricles (mL) | {a['lateral_ventricles_ml']:.1f} | "
                     f"{b['lateral_ventricles_ml']:.1f} |")  # fmt: skip
        lines.append(f"| MNI152 labels left empty | {', '.join(a['absent']) or '-'} | "
                     f"{', '.join(b['absent']) or '-'} |")  # fmt: skip
        for key, label in (("worst_reslice_mean_dice", "all labels"),
                           ("worst_reslice_brain_dice", "brain labels")):  # fmt: skip
            cells = [_cell(t.get(key)) for t in (a, b)]
            if cells != ["-", "-"]:
                lines.append(f"| MNI152 worst reslice agreement, {label} | {cells[0]} | "
                             f"{cells[1]} |")  # fmt: skip
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The robustness report as Markdown tables (and the baseline's, when there is one)."""
    text = _markdown_one(result)
    if result.get("baseline"):
        text += "\n".join(_comparison(result)) + "\n\n# Baseline\n\n"
        text += _markdown_one(result["baseline"])
    return text


def _markdown_one(result: dict[str, Any]) -> str:
    from napari_mrisynth.anatomy.labels import BRAIN_LABELS

    seg = result["segmentation"]
    conditions = seg["conditions"]
    lines = [f"# Robustness of {seg['model']}", "",
             f"Held-out subjects ({len(seg['subjects'])}): {', '.join(seg['subjects'])}.", "",
             "| acquisition | brain labels mean Dice | worst brain label | labels left empty |",
             "|---|---|---|---|"]  # fmt: skip
    brain_names = {seg["labels"][str(v)] for v in BRAIN_LABELS if str(v) in seg["labels"]}
    for name, c in conditions.items():
        brain = [kv for kv in c["dice"].items() if kv[0] in brain_names]
        worst = min(brain, key=lambda kv: kv[1]) if brain else ("-", math.nan)
        lines.append(f"| {name} | {c['brain_labels_mean']:.3f} | {worst[0]} {worst[1]:.3f} | "
                     f"{', '.join(c['absent']) or '-'} |")  # fmt: skip
    names = list(next(iter(conditions.values()))["dice"])
    lines += ["", "Per-label Dice (mean over subjects):", "",
              "| label | " + " | ".join(conditions) + " |",
              "|---" * (len(conditions) + 1) + "|"]  # fmt: skip
    for label in names:
        cells = [f"{c['dice'].get(label, math.nan):.3f}" for c in conditions.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if result.get("reslice"):
        lines += ["", "The same head stored in other orientations (labels carried back onto "
                  "the axial grid):", "",
                  "| subject | form | mean Dice vs axial | brain labels | resampling ceiling "
                  "| worst label Dice | voxel agreement | P(bvFTD) |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for subject, r in result["reslice"].items():
            for form, e in r["forms"].items():
                p = e.get("probabilities", {}).get("bvFTD")
                lines.append(f"| {subject} | {form} | {e['mean_dice']:.3f} | "
                             f"{_cell(e.get('brain_mean_dice'))} | "
                             f"{e['round_trip_mean_dice']:.3f} | "
                             f"{e['min_dice']:.3f} | {e['voxel_agreement']:.3f} | "
                             f"{_cell(p)} |")  # fmt: skip
    sal = result.get("saliency")
    if sal and sal["per_subject"]:
        lines += ["", f"Where {sal['model']} looks in held-out bvFTD heads (saliency in "
                  f"{', '.join(sal['regions'])}, grown by {SALIENCY_REGION_GROWTH} voxels; "
                  "enrichment 1 = blind to anatomy):", "",
                  "| subject | P(bvFTD) | saliency share | volume share | enrichment |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for subject, r in sal["per_subject"].items():
            if r["enrichment"] is None:
                lines.append(f"| {subject} | {r['p_bvftd']:.3f} | no bvFTD evidence (map 0) | "
                             f"{r['volume_share']:.3f} | - |")  # fmt: skip
                continue
            lines.append(f"| {subject} | {r['p_bvftd']:.3f} | {r['saliency_share']:.3f} | "
                         f"{r['volume_share']:.3f} | {r['enrichment']:.2f} |")  # fmt: skip
    t = result.get("template_head")
    if t:
        brain = t.get("brain_dice")
        lines += ["", f"Real head: {t['head']}. "
                  + ("" if brain is None else f"Brain Dice against its brain extraction "
                     f"{brain:.3f}; ")
                  + "parenchyma Dice against its GM + WM maps "
                  f"{t['parenchyma_dice']:.3f}; white matter {t['white_matter_dice']:.3f}; "
                  f"labels left empty: {', '.join(t['absent']) or 'none'}.", "",
                  "| brain label | volume (mL) |", "|---|---|"]  # fmt: skip
        lines += [f"| {name} | {ml:.1f} |" for name, ml in t["volumes_ml"].items()]
        lines += ["", "| form | mean Dice vs axial | brain labels | resampling ceiling | "
                  "P(bvFTD) |", "|---|---|---|---|---|"]  # fmt: skip
        for form, e in t["reslice"]["forms"].items():
            p = e.get("probabilities", {}).get("bvFTD")
            lines.append(f"| {form} | {e['mean_dice']:.3f} | {_cell(e.get('brain_mean_dice'))} "
                         f"| {e['round_trip_mean_dice']:.3f} | {_cell(p)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def _cell(value: float | None) -> str:
    """A table cell: the value to 3 decimals, or "-" where there is none (not measured, or
    an older report without it)."""
    return "-" if value is None else f"{value:.3f}"


#: nilearn's brain mask of its MNI152 template: voxels above this fraction of the maximum.
NILEARN_BRAIN_MASK_THRESHOLD = 0.2


def template_head_check(
    segmenter: Any = None,
    classifier: Any = None,
    *,
    forms: Sequence[str] = FORMS,
    device: Any = None,
) -> dict[str, Any]:
    """The real head available offline: nilearn's MNI152 2009a T1 (1 mm, an average of 152
    real scans, brain only) against its own grey- and white-matter probability maps
    (above one half): parenchyma and white-matter Dice, every brain label's volume, the
    reslice check, and the brain (every brain label) against the template's own brain
    extraction (above 0.2 of its maximum, as nilearn's ``load_mni152_brain_mask``). The
    simulated cohort is built from this template, so it is a check of the real image's look,
    not of unseen anatomy."""
    from napari_mrisynth.anatomy.labels import BRAIN_LABELS, LABELS
    from napari_mrisynth.anatomy.template import template_paths
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.models.inference import segment
    from napari_mrisynth.reports.metrics import dice_per_label

    paths = template_paths()
    t1 = load_volume(paths["t1"])
    gm = np.asarray(onto_grid(load_volume(paths["gm"]), t1).data) > 127.5
    wm = np.asarray(onto_grid(load_volume(paths["wm"]), t1).data) > 127.5
    labels = np.asarray(segment(t1, segmenter, device=device).labels.data)
    millilitres = float(np.prod(t1.spacing)) / 1000.0
    parenchyma = np.isin(labels, [v for v in BRAIN_LABELS if v not in (12, 13)])
    cerebellum = labels == 10
    # the template's own brain extraction, as nilearn's load_mni152_brain_mask draws it
    t1_data = np.asarray(t1.data, dtype=np.float64)
    extracted = t1_data > NILEARN_BRAIN_MASK_THRESHOLD * float(t1_data.max())
    result: dict[str, Any] = {
        "head": "MNI152 2009a nonlinear symmetric T1 (nilearn), 1 mm, brain only",
        "brain_dice": dice_per_label(extracted, np.isin(labels, BRAIN_LABELS), [1])[1],
        "parenchyma_dice": dice_per_label(gm | wm, parenchyma, [1])[1],
        "white_matter_dice": dice_per_label(wm & ~cerebellum, (labels == 11) & ~cerebellum, [1])[
            1
        ],  # fmt: skip
        "volumes_ml": {
            LABELS[v][0]: float((labels == v).sum()) * millilitres for v in BRAIN_LABELS
        },  # fmt: skip
    }
    result["absent"] = [name for name, ml in result["volumes_ml"].items() if ml == 0.0]
    result["reslice"] = reslice_agreement(t1, segmenter, classifier, forms=forms, device=device)
    return result
