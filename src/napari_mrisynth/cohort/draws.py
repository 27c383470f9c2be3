"""What is drawn for one simulated subject: person, anatomy and scan, from one seed.

Three independent streams of ``SeedSequence([seed, k])``: the person (age, sex, severity),
the anatomy (head size, the random deformation) and the scan (plane, pose, field of view,
gain, noise level, bias). A control and a bvFTD patient with the same seed therefore share
everything but the disease. The scan's generator is handed on, positioned after its scalar
draws, to image formation (bias field coefficients and noise), so a seed names one image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DIAGNOSES = ("bvFTD", "control")

#: Acquisition planes: direction columns (row, column, slice normal) in LPS, and which patient
#: axis (0 L-R, 1 A-P, 2 S-I) each index axis spans.
PLANES = {
    "axial": (np.eye(3), (0, 1, 2)),
    "sagittal": (np.array([[0, 0, -1], [1, 0, 0], [0, -1, 0]], float), (1, 2, 0)),
    "coronal": (np.array([[1, 0, 0], [0, 0, 1], [0, -1, 0]], float), (0, 2, 1)),
}


@dataclass
class SubjectDraws:
    """The random choices behind one simulated subject (see the module docstring)."""

    diagnosis: str
    age: int
    sex: str
    severity: float
    head_scale: float
    deformation_mm: float  # RMS of the smooth random deformation
    anatomy: np.random.Generator  # positioned at the deformation field's draw
    plane: str
    rotation_deg: np.ndarray
    translation_mm: np.ndarray
    fov_mm: np.ndarray  # (L-R, A-P, S-I)
    fov_shift_mm: np.ndarray
    gain: float
    noise_fraction: float
    bias_amplitude: float
    scan: np.random.Generator  # positioned at the bias field's draw


def draw_subject(
    diagnosis: str,
    seed: int,
    *,
    severity: float | None = None,
    age: int | None = None,
    sex: str | None = None,
) -> SubjectDraws:
    """Draw (or take, where given) everything that makes one simulated subject.

    Raises
    ------
    ValueError
        For an unknown diagnosis, a negative seed, a sex other than F/M, or a severity
        outside 0..1 (or not 0 for a control).
    """
    if diagnosis not in DIAGNOSES:
        raise ValueError(f"diagnosis must be one of {DIAGNOSES}, got {diagnosis!r}")
    if int(seed) < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    people = np.random.default_rng([seed, 1])
    drawn_age = int(np.clip(np.rint(people.normal(62.0, 7.0)), 45, 80))
    drawn_sex = "M" if people.random() < 0.5 else "F"
    drawn_severity = round(float(people.uniform(0.15, 1.0)), 2)
    age = drawn_age if age is None else int(age)
    sex = drawn_sex if sex is None else str(sex).upper()
    if sex not in ("F", "M"):
        raise ValueError(f"sex must be 'F' or 'M', got {sex!r}")
    if severity is None:
        severity = drawn_severity if diagnosis == "bvFTD" else 0.0
    severity = float(severity)
    if not 0.0 <= severity <= 1.0 or (diagnosis == "control" and severity != 0.0):
        raise ValueError(f"severity must be in 0..1 and 0 for controls, got {severity!r}")

    anatomy = np.random.default_rng([seed, 2])
    head_scale = float(np.exp(anatomy.normal(0.0, 0.03))) * (1.04 if sex == "M" else 0.96)
    deformation_mm = float(anatomy.uniform(1.5, 3.0))

    scan = np.random.default_rng([seed, 3])
    plane = str(scan.choice(list(PLANES), p=[0.5, 0.3, 0.2]))
    rotation_deg = scan.uniform(-1, 1, 3) * np.array([10.0, 4.0, 5.0])
    translation_mm = scan.uniform(-1, 1, 3) * np.array([6.0, 10.0, 8.0])
    fov_mm = np.array([scan.uniform(190, 220), scan.uniform(230, 256), scan.uniform(220, 256)])
    # The brain sits behind the head's middle; below it the neck fills the rest of the FOV.
    fov_shift_mm = np.array([scan.uniform(-5, 5), scan.uniform(-14, -2), scan.uniform(-25, -5)])
    gain = 4.0 * float(scan.uniform(0.9, 1.1))
    noise_fraction = float(scan.uniform(0.015, 0.035))
    bias_amplitude = float(scan.uniform(0.05, 0.2))
    return SubjectDraws(
        diagnosis=diagnosis, age=age, sex=sex, severity=severity, head_scale=head_scale,
        deformation_mm=deformation_mm, anatomy=anatomy, plane=plane, rotation_deg=rotation_deg,
        translation_mm=translation_mm, fov_mm=fov_mm, fov_shift_mm=fov_shift_mm, gain=gain,
        noise_fraction=noise_fraction, bias_amplitude=bias_amplitude, scan=scan,
    )  # fmt: skip
