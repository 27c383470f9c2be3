"""How far can the anatomy-first renderer's own settings close the texture gap?

Heads sampled from a fitted generator are compared with the generator's own training scans
on the statistics of the automated Turing test's texture model
(:func:`napari_mrisynth.evaluation.two_sample.texture_features`), all on the model grid and
prepared as a study prepares them (percentile scaling in the head, zero outside the
reference head dilated by 3 voxels, exact histogram matching, here to the training scans'
mean distribution). The mismatch is each statistic's set mean, sampled against training, in
units of the training scans' SD; its mean square is what the search lowers.

Two things are measured, each against the model as fitted, in the same run:

- ``--fine-structure``: the template's structure (the intensity its rendered labels do not
  explain) rebuilt from the scans' residuals aligned by a second, finer registration
  (diffeomorphic demons down to ``--structure-mm``) instead of the shape model's 6 mm node
  fields, so that fine anatomy averages where it lines up; the groupwise template is rebuilt
  first exactly as the fit builds it (several minutes at 2 mm);
- ``--calibrate``: coordinate descent (``--rounds``, two by default) over the brain's and
  the head's point spreads, the structure's gain, the noise level and correlation, a tissue
  texture and the intensities of white matter, CSF and the brightest soft tissue, on sampled
  heads (a closed loop on the statistics, as feature matching trains a GAN's generator).

Last, the texture model's cross-validated AUC against the model's held-out test subjects (on
the model grid, prepared together) for each variant, with the statistics that give it away.

Usage::

    python benchmarks/rendering_knobs_check.py [--model anatomy-bvftd-demo@1.7.0] \\
        [--fine-structure] [--calibrate] [--rounds 2] [--n 6] [--work /tmp/knobs] \\
        [--json out.json]

The cohort is the one the card records (``training.data``; for the bundled model
``mrisynth cohort --out cohort-2mm --subjects 60 --seed 2026 --spacing 2
--cohort-version 2``, at that path).
Measured 2026-12-06 on anatomy-bvftd-demo@1.7.0 (docs/synthesis.md, "The renderer's own
settings, in a closed loop").
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

#: The search's settings and the values it tries (``psf``, ``psf_head``, ``noise_blur`` and
#: ``texture_rms`` are the model's scalars; the rest are gains on buffers).
GRIDS = {
    "psf": (0.6, 0.7, 0.8, 0.9, 1.0),
    "structure": (0.8, 0.9, 1.0, 1.1, 1.2),
    "noise": (0.6, 0.7, 0.8, 0.9, 1.0),
    "white": (0.94, 0.96, 0.98, 1.0, 1.02),
    "fat": (0.97, 1.0, 1.03, 1.06),
    "csf": (0.85, 0.92, 1.0, 1.08, 1.16),
    "psf_head": (0.35, 0.4, 0.45, 0.5, 0.6),
    "noise_blur": (0.0, 0.35, 0.5, 0.7),
    "texture_rms": (0.0, 0.01, 0.02, 0.03),
}


class Prepared:
    """Study preparation on the model grid, with one fixed histogram to match to."""

    def __init__(self, spacing: float, reference: np.ndarray):
        from scipy import ndimage as ndi

        from napari_mrisynth.evaluation.presentation import Presentation
        from napari_mrisynth.preprocess import default_model_grid, reference_on_grid

        self.spacing = spacing
        self.head = Presentation(spacing).head
        brain = reference_on_grid(default_model_grid(spacing))[1].astype(bool)
        self.region = ndi.binary_erosion(brain, iterations=1)
        self.target = np.mean([np.sort(self.scaled(v)[self.head]) for v in reference], axis=0)

    def scaled(self, volume: np.ndarray) -> np.ndarray:
        from napari_mrisynth.preprocess.intensity import head_mask

        volume = np.asarray(volume, np.float32)
        low, high = np.percentile(volume[head_mask(volume)], [0.5, 99.5])
        return (volume - low) / (high - low) * self.head

    def features(self, volumes: Any) -> np.ndarray:
        from napari_mrisynth.evaluation.presentation import match_histogram
        from napari_mrisynth.evaluation.two_sample import texture_features

        out = []
        for k, volume in enumerate(volumes):
            shown = np.zeros(self.head.shape, np.float64)
            shown[self.head] = match_histogram(self.scaled(volume)[self.head], self.target, k)
            shown = np.clip(np.rint(np.clip(shown, 0, None) / self.target.max() * 255), 0, 255)
            out.append(texture_features(shown, self.region, self.spacing))
        return np.stack(out)


class Knobs:
    """A loaded generator whose rendering settings can be set and sampled from."""

    def __init__(self, card: Any, device: Any):
        from napari_mrisynth.anatomy.labels import LABEL_IDS
        from napari_mrisynth.models.inference import get_model

        self.network = get_model(card, "generation", device=device).network
        self.device = device
        net = self.network
        self.base = {k: getattr(net, k).clone() for k in ("scalars", "appearance_design",
                                                           "structure")}  # fmt: skip
        intensity = self.base["appearance_design"][0, net.layout["intensity"]].cpu().numpy()
        classes = net.class_label.tolist()
        self.groups = {
            "white": [i for i, v in enumerate(classes) if v == LABEL_IDS["white_matter"]],
            "csf": [i for i, v in enumerate(classes) if v in (
                LABEL_IDS["lateral_ventricles"], LABEL_IDS["sulcal_csf"],
                LABEL_IDS["extracerebral_csf"])],
            "fat": [int(np.argmax(intensity))],
        }  # fmt: skip

    def set(self, setting: dict[str, float]) -> None:
        from napari_mrisynth.models.anatomy_generator import SCALARS

        net = self.network
        for name, value in self.base.items():
            getattr(net, name).copy_(value)
        for name, value in setting.items():
            if name in SCALARS:
                net.scalars[SCALARS.index(name)] = value
        net.appearance_design[0, net.layout["log_noise"]] += math.log(setting.get("noise", 1.0))
        net.structure.mul_(setting.get("structure", 1.0))
        start = net.layout["intensity"].start
        for group, classes in self.groups.items():
            for k in classes:
                net.appearance_design[0, start + k] *= setting.get(group, 1.0)

    def sample(self, seed: int, count: int) -> list[np.ndarray]:
        """``count`` controls (seed) and ``count`` bvFTD heads (seed + 1)."""
        import torch

        from napari_mrisynth.models.conditions import Condition
        from napari_mrisynth.synthesis.generate import volume_noise

        net, heads = self.network, []
        for offset, diagnosis in enumerate(("control", "bvftd")):
            vector = torch.tensor([Condition.parse(diagnosis).vector()], dtype=torch.float32)
            noise = torch.stack([volume_noise(net.noise_shape, seed + offset, i)
                                 for i in range(count)])  # fmt: skip
            with torch.no_grad():
                images, _ = net.generate(vector.expand(count, -1).to(self.device),
                                         noise.to(self.device))  # fmt: skip
            heads += list(images[:, 0].float().cpu().numpy())
        return heads


def fine_structure(images: np.ndarray, labels: np.ndarray, spacing: float,
                   level_mm: float) -> tuple[np.ndarray, dict[str, Any]]:  # fmt: skip
    """The fit's structure (the scans' residuals under their rendered labels, super-resolved by
    :func:`~napari_mrisynth.synthesis.anatomy_appearance.super_resolved`), with each scan
    aligned to the template by demons down to ``level_mm`` instead of by its node field."""
    from napari_mrisynth.anatomy.deform import exponentiate
    from napari_mrisynth.synthesis import anatomy_appearance as appearance
    from napari_mrisynth.synthesis import anatomy_template as template_fit

    options = template_fit.AnatomyOptions()
    images = [np.asarray(i, np.float32) for i in images]
    classes, class_label, _ = appearance.render_classes(
        images, [np.asarray(x, np.uint8) for x in labels]
    )
    template, _, _ = template_fit.groupwise_template(images, spacing, options)
    terms = appearance.bias_terms(images[0].shape)
    _, psf, _, residuals = appearance.scan_appearances(images, classes, terms, class_label)
    fields = [template_fit.demons(template, image, spacing, options, level_mm=level_mm)
              for image in images]  # fmt: skip
    aligned = [template_fit.warp(r, u, spacing, 1) for r, u in zip(residuals, fields, strict=True)]
    mean = np.mean(aligned, axis=0)
    inverse = (exponentiate(-template_fit.logarithm(u, spacing), spacing) for u in fields)
    masks = [i > 0 for i in images]
    structure, report = appearance.super_resolved(residuals, masks, inverse, mean, spacing)
    return structure, {**report, "rms": float(structure.std()), "psf": list(psf)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="generator id@version (registry default)")
    parser.add_argument("--fine-structure", action="store_true")
    parser.add_argument("--structure-mm", type=float, default=2.0)
    parser.add_argument("--calibrate", action="store_true")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the search")
    parser.add_argument("--n", type=int, default=6, help="heads per class per set")
    parser.add_argument("--seed", type=int, default=41, help="the calibration's draw")
    parser.add_argument("--test-seeds", type=int, nargs="+", default=[41, 43])
    parser.add_argument("--work", type=Path, default=Path("/tmp/rendering-knobs"))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from sklearn.metrics import roc_auc_score
    from texture_refiner_check import training_scans

    from napari_mrisynth.evaluation.two_sample import (
        TEXTURE_FEATURES,
        feature_giveaways,
        texture_scores,
    )
    from napari_mrisynth.models.registry import default_model, find_model

    card = find_model(args.model) if args.model else default_model("generation")
    spacing = float(card.architecture["args"]["spacing"])
    clock = time.perf_counter()
    train, train_labels = training_scans(card, args.work)
    test, _ = training_scans(card, args.work, split="test")
    prepared = Prepared(spacing, train)
    reference = prepared.features(train)
    centre, scale = reference.mean(axis=0), reference.std(axis=0) + 1e-6
    test_features = prepared.features(test)
    knobs = Knobs(card, args.device)

    def mismatch(setting: dict[str, float]) -> tuple[float, np.ndarray]:
        knobs.set(setting)
        z = (prepared.features(knobs.sample(args.seed, args.n)).mean(axis=0) - centre) / scale
        return float(np.mean(z**2)), z

    def against_test(setting: dict[str, float], seed: int) -> dict[str, Any]:
        knobs.set(setting)
        heads = prepared.features(knobs.sample(seed, args.n))
        x = np.concatenate([test_features, heads])
        y = np.r_[np.zeros(len(test_features)), np.ones(len(heads))].astype(int)
        giveaways = feature_giveaways(x, y)[:5]
        return {
            "seed": seed,
            "texture_auc": float(roc_auc_score(y, texture_scores(x, y))),
            "giveaways": [{k: g[k] for k in ("feature", "auc", "d")} for g in giveaways],
        }

    report: dict[str, Any] = {"model": card.ref, "n_per_class": args.n, "variants": {}}
    structures = {"as fitted": knobs.base["structure"]}
    if args.fine_structure:
        structure, report["fine_structure"] = fine_structure(train, train_labels, spacing,
                                                             args.structure_mm)  # fmt: skip
        structures["fine structure"] = torch.from_numpy(structure).to(knobs.base["structure"].dtype)
    for name, buffer in structures.items():
        knobs.base["structure"] = buffer
        variants = {name: {}}
        if args.calibrate:
            setting: dict[str, float] = {}
            best, _ = mismatch(setting)
            history = {"start": best}
            for _ in range(args.rounds):
                for knob, values in GRIDS.items():
                    scores = {v: mismatch({**setting, knob: v})[0] for v in values}
                    setting[knob] = min(scores, key=scores.get)
                    history[f"{knob}={setting[knob]}"] = scores[setting[knob]]
            variants[f"{name}, calibrated"] = setting
            report["search_" + name.replace(" ", "_")] = history
        for label, setting in variants.items():
            value, z = mismatch(setting)
            tests = [against_test(setting, s) for s in args.test_seeds]
            report["variants"][label] = {
                "setting": setting, "mismatch": value, "test": tests,
                "z": dict(zip(TEXTURE_FEATURES, np.round(z, 2).tolist(), strict=True)),
            }  # fmt: skip
            aucs = ", ".join(f"{t['texture_auc']:.3f}" for t in tests)
            print(f"{label:32s} mismatch {value:6.2f}  texture AUC against test {aucs}",
                  flush=True)  # fmt: skip
    report["seconds"] = round(time.perf_counter() - clock, 1)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
