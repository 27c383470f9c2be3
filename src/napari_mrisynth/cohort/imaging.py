"""Image formation: the scanner's grid sampled through the displacement field, then gain, a
smooth multiplicative bias field and Rician noise, stored as int16 like a scanner's output.
"""

from __future__ import annotations

import numpy as np

from napari_mrisynth.anatomy.template import HeadModel


def resample_through_field(
    intensity: np.ndarray,
    labels: np.ndarray,
    model: HeadModel,
    displacement: np.ndarray,
    origin: np.ndarray,
    direction: np.ndarray,
    spacing: float,
    step: int,
    size: np.ndarray,
    template_transform: object | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Image (linear) and labels (nearest) through the same displacement field, then (when
    given) a transform in template space (the subject's fine folding), in one resampling."""
    import SimpleITK as sitk

    field_image = sitk.GetImageFromArray(displacement.astype(np.float64), isVector=True)
    field_image.SetOrigin(origin.tolist())
    field_image.SetSpacing([spacing * step] * 3)
    field_image.SetDirection(direction.reshape(-1).tolist())
    transform = sitk.DisplacementFieldTransform(field_image)
    if template_transform is not None:
        # A composite applies its last transform first: scanner -> template, then folding.
        transform = sitk.CompositeTransform([template_transform, transform])
    reference = sitk.Image([int(n) for n in size], sitk.sitkUInt8)
    reference.SetOrigin(origin.tolist())
    reference.SetSpacing([spacing] * 3)
    reference.SetDirection(direction.reshape(-1).tolist())
    out = []
    for data, interpolator in ((intensity, sitk.sitkLinear), (labels, sitk.sitkNearestNeighbor)):
        image = sitk.GetImageFromArray(data)
        image.SetOrigin(model.origin.tolist())
        image.SetSpacing([model.h] * 3)
        resampled = sitk.Resample(image, reference, transform, interpolator, 0, image.GetPixelID())
        out.append(sitk.GetArrayFromImage(resampled))
    return out[0], out[1]


def bias_field(rng: np.random.Generator, shape: tuple[int, ...], amplitude: float) -> np.ndarray:
    """Smooth multiplicative field: exp of a random quadratic over the field of view."""
    u = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    uz, uy, ux = u[0][:, None, None], u[1][None, :, None], u[2][None, None, :]
    terms = (ux, uy, uz, ux * ux, uy * uy, uz * uz, ux * uy, ux * uz, uy * uz)
    coefficients = rng.normal(0.0, amplitude / 3.0, len(terms)).astype(np.float32)
    log_field = np.zeros(shape, np.float32)
    for a, term in zip(coefficients, terms, strict=True):
        log_field += a * term
    return np.exp(log_field)


def acquire(
    t1: np.ndarray, scan: np.random.Generator, gain: float, bias_amplitude: float,
    noise_fraction: float,
) -> np.ndarray:  # fmt: skip
    """Scanner gain, bias field and Rician magnitude noise on a template-scale image; int16."""
    t1 = t1 * (gain * bias_field(scan, t1.shape, bias_amplitude))
    sigma = noise_fraction * gain * 220.0  # relative to white matter
    noise = scan.standard_normal((2, *t1.shape), dtype=np.float32) * sigma
    t1 = np.sqrt((t1 + noise[0]) ** 2 + noise[1] ** 2)  # Rician magnitude
    return np.clip(np.rint(t1), 0, 32767).astype(np.int16)
