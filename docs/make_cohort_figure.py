"""Render docs/images/cohort.png: simulated control vs bvFTD heads, and atrophy from the labels.

Top: one seed simulated as a control, a mild (0.4) and a severe (1.0) bvFTD patient at 1 mm,
so only the disease differs; axial and coronal slices, plain and with the label overlay.
Bottom: regional volumes (% of the brain mask) of a small 2 mm cohort by group, and
orbitomedial frontal grey matter against severity. Everything shown is simulated.

Run: ``python docs/make_cohort_figure.py [--subjects 12]`` (about a minute on two cores).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from napari_mrisynth.anatomy import LABEL_IDS, LABELS
from napari_mrisynth.cohort import simulate_subject  # noqa: E402
from napari_mrisynth.volume import reorient_to_patient_axes  # noqa: E402

OUT = Path(__file__).parent / "images" / "cohort.png"
SEED = 4
REGIONS = (
    "orbitomedial_frontal_gm",
    "insula_gm",
    "anterior_temporal_gm",
    "frontal_gm",
    "cingulate_gm",
    "temporal_gm",
    "parietal_gm",
    "occipital_gm",
    "lateral_ventricles",
)
#: Group, colour and bar offset in the charts.
GROUPS = (("control", "#4c9be8", -0.2), ("bvFTD", "#e8664c", 0.2))
#: Labels drawn over the image: grey matter by lobe and the ventricles.
OVERLAY = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12)


def regional_percent(subject) -> dict[str, float]:
    """Volume of each region as % of the brain mask (a head-size-free measure)."""
    labels = np.asarray(subject.labels.data)
    counts = np.bincount(labels.ravel(), minlength=max(LABELS) + 1)
    brain = float(np.asarray(subject.brain_mask.data).sum())
    return {name: 100.0 * counts[LABEL_IDS[name]] / brain for name in REGIONS}


def _slices(subject, centre_label: str, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """T1 and labels on the plane through a label's centroid; patient axes, radiological."""
    t1 = np.asarray(reorient_to_patient_axes(subject.t1).data, dtype=float)
    labels = np.asarray(reorient_to_patient_axes(subject.labels).data)
    index = int(np.mean(np.nonzero(labels == LABEL_IDS[centre_label])[axis]))
    if axis == 0:  # axial: anterior up, patient right on screen left
        return t1[index], labels[index]
    return t1[:, index][::-1], labels[:, index][::-1]  # coronal: superior up


def _overlay(labels: np.ndarray) -> np.ndarray:
    rgba = np.zeros((*labels.shape, 4))
    for label in OVERLAY:
        rgba[labels == label] = (*np.array(LABELS[label][1]) / 255.0, 0.55)
    return rgba


def main(subjects: int) -> None:
    shown = {
        "control": simulate_subject("control", "control", SEED, 1.0),
        "bvFTD, severity 0.4": simulate_subject("mild", "bvFTD", SEED, 1.0, severity=0.4),
        "bvFTD, severity 1.0": simulate_subject("severe", "bvFTD", SEED, 1.0, severity=1.0),
    }
    cohort = [
        simulate_subject(f"sub-{k:03d}", ("bvFTD", "control")[k % 2], 100 + k, 2.0)
        for k in range(subjects)
    ]

    plt.style.use("dark_background")
    fig = plt.figure(figsize=(15, 14.5))
    grid = fig.add_gridspec(4, 4, height_ratios=[1, 1, 1, 1.15], hspace=0.1, wspace=0.02)
    headers = ("axial", "axial, labels", "coronal", "coronal, labels")
    for row, (title, subject) in enumerate(shown.items()):
        planes = (_slices(subject, "insula_gm", 0), _slices(subject, "anterior_temporal_gm", 1))
        for col, (t1, labels) in enumerate(p for p in planes for _ in (0, 1)):
            ax = fig.add_subplot(grid[row, col])
            ax.imshow(t1, cmap="gray", vmin=0, vmax=np.percentile(t1, 99.7))
            if col % 2:
                ax.imshow(_overlay(labels), interpolation="nearest")
            ax.set_axis_off()
            if row == 0:
                ax.set_title(headers[col], fontsize=12)
            if col == 0:
                ax.text(-0.04, 0.5, title, rotation=90, transform=ax.transAxes, fontsize=12,
                        ha="right", va="center")  # fmt: skip

    measures = {"control": [], "bvFTD": []}
    for subject in cohort:
        measures[subject.info["diagnosis"]].append(regional_percent(subject))
    bars = fig.add_subplot(grid[3, :3])
    x = np.arange(len(REGIONS))
    for group, colour, shift in GROUPS:
        values = np.array([[m[r] for r in REGIONS] for m in measures[group]])
        bars.bar(x + shift, values.mean(0), 0.38, yerr=values.std(0), color=colour, label=group)
        for column in range(len(REGIONS)):
            bars.plot(np.full(len(values), x[column] + shift), values[:, column], "w.", ms=3)
    bars.set_xticks(x, [r.replace("_gm", "").replace("_", " ") for r in REGIONS], rotation=25)
    bars.set_ylabel("% of brain mask (from labels)")
    bars.set_title(f"simulated cohort, {subjects} subjects at 2 mm: regional volumes by group")
    bars.legend(loc="upper right")
    scatter = fig.add_subplot(grid[3, 3])
    for group, colour, _ in GROUPS:
        members = [s for s in cohort if s.info["diagnosis"] == group]
        scatter.scatter(
            [s.info["severity"] for s in members],
            [regional_percent(s)["orbitomedial_frontal_gm"] for s in members],
            color=colour,
            label=group,
        )
    scatter.set_xlabel("severity")
    scatter.set_ylabel("orbitomedial frontal GM, % of brain mask")
    scatter.yaxis.set_label_position("right")
    scatter.yaxis.tick_right()
    fig.text(
        0.5,
        0.005,
        "SIMULATED data (MNI152 template + AAL labels, napari-mrisynth); not clinical",
        ha="center",
        fontsize=10,
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, dpi=72, bbox_inches="tight")

    print(f"wrote {OUT}")
    print("region".ljust(26) + "control %".rjust(11) + "bvFTD %".rjust(11) + "change".rjust(9))
    for region in REGIONS:
        c = np.mean([m[region] for m in measures["control"]])
        b = np.mean([m[region] for m in measures["bvFTD"]])
        print(f"{region:26s}{c:11.2f}{b:11.2f}{100 * (b - c) / c:+8.1f}%")
    reference = regional_percent(shown["control"])
    for title, subject in list(shown.items())[1:]:
        values = regional_percent(subject)
        changes = ", ".join(
            f"{r} {100 * (values[r] - reference[r]) / reference[r]:+.1f}%" for r in REGIONS
        )
        print(f"same seed, {title} vs control (1 mm): {changes}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=12, help="subjects in the 2 mm cohort")
    main(parser.parse_args().subjects)
