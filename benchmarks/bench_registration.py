"""Pairwise nonlinear registration of affinely aligned simulated heads: ANTsPy SyN against
SimpleITK diffeomorphic demons (the library the anatomy-first template uses).

Usage (antspyx is not a dependency of the project; install it for this measurement)::

    pip install antspyx
    mrisynth cohort --out /tmp/cohort_2mm --subjects 8 --seed 2026 --spacing 2 --cohort-version 2
    python benchmarks/bench_registration.py /tmp/cohort_2mm

Seven heads are registered to the first on the 2 mm model grid; the mean Dice of their
warped brain labels with the first head's labels, and seconds per pair, are printed for
affine alignment alone, two ANTs SyN settings and two demons settings.
"""

import sys
import time
from pathlib import Path

import ants
import numpy as np
import SimpleITK as sitk

from napari_mrisynth.anatomy import BRAIN_LABELS
from napari_mrisynth.evaluation.common_grid import model_input_spec
from napari_mrisynth.io.files import load_volume
from napari_mrisynth.preprocess import prepare, to_model_grid

root = Path(sys.argv[1])
spec = model_input_spec(2.0)
subs = sorted(p.name for p in root.glob("sub-*"))[:8]
imgs, labs = [], []
for s in subs:
    v = load_volume(root / s / "anat" / f"{s}_T1w.nii.gz").compute()
    p = prepare(v, spec)
    label = load_volume(root / s / "anat" / f"{s}_labels.nii.gz").compute()
    imgs.append(p.image.astype(np.float32))
    labs.append(to_model_grid(label, p.grid, p.alignment, order=0))


def dice(a, b):
    out = []
    for k in BRAIN_LABELS:
        x, y = a == k, b == k
        t = x.sum() + y.sum()
        if t:
            out.append(2 * (x & y).sum() / t)
    return float(np.mean(out))


pairs = [(i, 0) for i in range(1, 8)]
print("affine only mean Dice", round(np.mean([dice(labs[i], labs[j]) for i, j in pairs]), 4))


def to_ants(a):
    return ants.from_numpy(a.transpose(2, 1, 0).copy(), spacing=(2.0, 2.0, 2.0))


for name, kw in [
    (
        "SyN 4mm-ish",
        dict(type_of_transform="SyNOnly", reg_iterations=(40, 20, 0), shrink_factors=None),
    ),
    ("SyN", dict(type_of_transform="SyNOnly", reg_iterations=(40, 20, 10))),
]:
    t = time.perf_counter()
    ds = []
    for i, j in pairs:
        fixed, moving = to_ants(imgs[j]), to_ants(imgs[i])
        kw2 = {k: v for k, v in kw.items() if v is not None and k != "shrink_factors"}
        r = ants.registration(fixed, moving, **kw2)
        ml = ants.from_numpy(
            labs[i].transpose(2, 1, 0).astype(np.float32).copy(), spacing=(2.0, 2.0, 2.0)
        )
        w = (
            ants.apply_transforms(fixed, ml, r["fwdtransforms"], interpolator="nearestNeighbor")
            .numpy()
            .transpose(2, 1, 0)
        )
        ds.append(dice(w.astype(np.uint8), labs[j]))
    print(
        name,
        "mean Dice",
        round(np.mean(ds), 4),
        "s/pair",
        round((time.perf_counter() - t) / len(pairs), 2),
    )
for iters, sigma in [((50, 30), 2.0), ((100, 50), 1.5)]:
    t = time.perf_counter()
    ds = []
    for i, j in pairs:
        f = sitk.GetImageFromArray(imgs[j])
        m = sitk.GetImageFromArray(imgs[i])
        for x in (f, m):
            x.SetSpacing((2.0, 2.0, 2.0))
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetStandardDeviations(sigma)
        field = None
        for level, n in zip((2, 1), iters, strict=True):
            fl = sitk.Shrink(f, [level] * 3) if level > 1 else f
            ml = sitk.Shrink(m, [level] * 3) if level > 1 else m
            demons.SetNumberOfIterations(n)
            if field is None:
                field = demons.Execute(fl, ml)
            else:
                field = sitk.Resample(
                    field, fl, sitk.Transform(), sitk.sitkLinear, 0, sitk.sitkVectorFloat64
                )
                field = demons.Execute(fl, ml, field)
        tx = sitk.DisplacementFieldTransform(sitk.Cast(field, sitk.sitkVectorFloat64))
        ml = sitk.GetImageFromArray(labs[i])
        ml.SetSpacing((2.0, 2.0, 2.0))
        w = sitk.GetArrayFromImage(sitk.Resample(ml, f, tx, sitk.sitkNearestNeighbor, 0))
        ds.append(dice(w, labs[j]))
    print(
        "sitk demons",
        iters,
        sigma,
        "mean Dice",
        round(np.mean(ds), 4),
        "s/pair",
        round((time.perf_counter() - t) / len(pairs), 2),
    )
