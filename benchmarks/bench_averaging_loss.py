"""Averaging loss: how much sharpness a groupwise average of aligned heads loses against one
head, on the simulated cohort's version 1 (every head one warped template) and version 2
(each head its own fine folding, cortical thickness and texture), beside the
anatomy-first generator's template.

Usage::

    python benchmarks/bench_averaging_loss.py --subjects 8 --spacing 2 [--json out.json]

For each cohort version, ``--subjects`` heads of one seed are brought onto the model grid
(the same affine preparation as training), then:

- **mean of affinely aligned heads** -- what an average after affine registration keeps;
- **groupwise template** -- :func:`napari_mrisynth.synthesis.anatomy.groupwise_template`
  (SimpleITK diffeomorphic demons, the generator's template), an unbiased mean after
  nonlinear alignment.

Sharpness is the automated Turing test's (:mod:`napari_mrisynth.evaluation.sharpness`):
high-frequency spectral energy and gradient-magnitude percentiles in the reference brain,
each as a ratio to the median single head of the same set (1.0: as sharp as one head).
Real heads lose sharpness when averaged (an MNI152-like average is visibly blurred); a
cohort in which the template-warped average stays as sharp as one head (version 1) would
flatter any template-based generator.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def prepared_heads(folder: Path, spacing: float) -> list[np.ndarray]:
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.preprocess import prepare
    from napari_mrisynth.preprocess.grid import default_multiple
    from napari_mrisynth.training.recipe import model_spec

    spec = model_spec(spacing, default_multiple(spacing))
    return [np.asarray(prepare(load_volume(path).compute(), spec, source=str(path)).image,
                       np.float32).squeeze()
            for path in sorted(folder.glob("sub-*/anat/*_T1w.nii.gz"))]  # fmt: skip


def sharpness(image: np.ndarray, region: np.ndarray, spacing: float) -> dict[str, float]:
    from napari_mrisynth.evaluation.sharpness import gradient_statistics, high_frequency_energy

    grads = gradient_statistics(image, region, spacing)
    return {"hf_energy": high_frequency_energy(image, region), **grads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", type=int, default=8)
    parser.add_argument("--seed", type=int, default=31)
    parser.add_argument("--spacing", type=float, default=2.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from scipy import ndimage as ndi

    from napari_mrisynth.cohort import build_cohort
    from napari_mrisynth.synthesis.anatomy_template import AnatomyOptions, groupwise_template

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for version in (1, 2):
            folder = Path(tmp) / f"v{version}"
            build_cohort(folder, args.subjects, args.seed, spacing=args.spacing, version=version)
            heads = prepared_heads(folder, args.spacing)
            brain = np.mean([h > 0.5 for h in heads], axis=0) > 0.5
            region = ndi.binary_erosion(brain, iterations=2)
            singles = [sharpness(h, region, args.spacing) for h in heads]
            clock = time.perf_counter()
            template, _, _ = groupwise_template(heads, args.spacing, AnatomyOptions())
            seconds = time.perf_counter() - clock
            averages = {"affine_mean": np.mean(heads, axis=0), "groupwise_template": template}
            row: dict[str, dict] = {}
            for name, image in averages.items():
                measured = sharpness(image, region, args.spacing)
                row[name] = {k: measured[k] / float(np.median([s[k] for s in singles]))
                             for k in measured}  # fmt: skip
            row["groupwise_seconds"] = {"value": round(seconds, 1)}
            results[f"version {version}"] = row
    for version, row in results.items():
        for name, ratios in row.items():
            text = ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
            print(f"{version:10s} {name:20s} {text}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
