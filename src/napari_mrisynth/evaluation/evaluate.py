"""``evaluate_sets``: how close a synthetic set is to a real one, beside real-vs-real floors."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_mrisynth.evaluation import metrics as m
from napari_mrisynth.evaluation.folders import EvaluationError, volume_name
from napari_mrisynth.volume import Volume

METRICS = ("fid", "kid", "is", "ms_ssim", "mmd")

#: The real set is split in halves for the floors: each half needs two volumes.
MIN_REAL_FOR_FLOOR = 4

#: Pairs drawn within a set for MS-SSIM diversity (all pairs when fewer).
MAX_MS_SSIM_PAIRS = 50

#: How to read each metric, for tables and reports.
READING = {
    "fid": "lower is better; compare with the floor",
    "kid": "lower is better (0 = same distribution); compare with the floor",
    "is": "higher = confident and varied classes; 1..2 with 2 classes; compare with real",
    "ms_ssim": "diversity: lower = more varied; should match the real set's value",
    "mmd": "lower is better; compare with the floor",
}

TITLES = {
    "fid": "FID",
    "kid": "KID",
    "is": "Inception Score",
    "ms_ssim": "MS-SSIM (within set)",
    "mmd": "MMD (images)",
}


@dataclass
class EvaluationReport:
    """Metrics of a synthetic set against a real one, each beside its real-vs-real floor.

    ``metrics[name]`` holds ``value``, ``floor`` (None with ``floor_reason`` when the real
    set is too small), ``floor_kind``, ``reading`` and metric-specific details.
    """

    metrics: dict[str, dict[str, Any]]
    extractor: dict[str, Any]
    n_real: int
    n_synthetic: int
    seed: int = 0
    classifier: dict[str, Any] = field(default_factory=dict)
    common_grid: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "generative-evaluation",
            "n_real": self.n_real,
            "n_synthetic": self.n_synthetic,
            "seed": self.seed,
            "metrics": {name: dict(entry) for name, entry in self.metrics.items()},
            "extractor": dict(self.extractor),
            "inception_classifier": dict(self.classifier),
            "common_grid": dict(self.common_grid),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
            "names": {k: list(v) for k, v in self.names.items()},
        }


def _entry(name: str, value: float, floor: float | None, reason: str | None, **extra: Any):
    entry: dict[str, Any] = {"value": float(value), "floor": floor, "reading": READING[name]}
    entry["floor_kind"] = {
        "is": "real set's own Inception Score",
        "ms_ssim": "real set's within-set MS-SSIM",
    }.get(name, "real vs real: the real set split in two seeded halves")
    if floor is None:
        entry["floor_reason"] = reason
    entry.update(extra)
    return entry


class _Steps:
    """Overall progress over the stages, as ``progress(done, total)``."""

    def __init__(self, total: int, progress: Callable[[int, int], None] | None):
        self.total, self.done, self.progress = total, 0, progress

    def step(self, *_: Any) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress(min(self.done, self.total), self.total)


def evaluate_sets(
    real: Sequence[Volume],
    synthetic: Sequence[Volume],
    *,
    extractor: Any = None,
    seed: int = 0,
    device: Any = None,
    metrics: Sequence[str] = METRICS,
    progress: Callable[[int, int], None] | None = None,
) -> EvaluationReport:
    """FID, KID, Inception Score, MS-SSIM diversity and MMD of ``synthetic`` against ``real``.

    Parameters
    ----------
    real, synthetic : sequences of Volume
        At least two volumes each. Names come from ``metadata["name"]``.
    extractor : FeatureExtractor, optional
        Features for FID and KID; default the ``seg-head-demo`` encoder.
    seed : int
        Seeds the real-set halves, KID subsets and MS-SSIM pairs.
    device : str or torch.device, optional
        For the networks and resampling (default: cuda -> mps -> cpu).
    metrics : names
        Any of ``fid``, ``kid``, ``is``, ``ms_ssim``, ``mmd``.
    progress : callable(done, total), optional

    Returns
    -------
    EvaluationReport
        Each metric beside its floor: the same metric between two halves of the real set
        (FID, KID, MMD), the real set's own value (MS-SSIM, IS); None with a reason when
        the real set has fewer than four volumes.
    """
    from napari_mrisynth.evaluation.common_grid import bring_to_common_grid
    from napari_mrisynth.evaluation.features import FeatureExtractor, class_probabilities

    wanted = [name.lower() for name in metrics]
    unknown = sorted(set(wanted) - set(METRICS))
    if unknown:
        raise EvaluationError(f"unknown metric(s) {', '.join(unknown)}: use {', '.join(METRICS)}")
    if len(real) < 2 or len(synthetic) < 2:
        raise EvaluationError(
            f"need at least two real and two synthetic volumes, got {len(real)} and "
            f"{len(synthetic)}"
        )
    real, synthetic = list(real), list(synthetic)
    n_real, n_syn = len(real), len(synthetic)
    volumes = real + synthetic
    names = [volume_name(v, i) for i, v in enumerate(volumes)]
    needs_images = bool({"ms_ssim", "mmd"} & set(wanted))
    needs_features = bool({"fid", "kid"} & set(wanted))
    steps = _Steps(
        len(volumes) * (needs_images + needs_features)
        + n_syn * ("is" in wanted)
        + n_real * ("is" in wanted and n_real >= MIN_REAL_FOR_FLOOR)
        + len(wanted),
        progress,
    )
    timings: dict[str, float] = {}
    floor_reason = None
    if n_real < MIN_REAL_FOR_FLOOR:
        floor_reason = (
            f"the real set has {n_real} volumes; a floor needs {MIN_REAL_FOR_FLOOR} "
            "(two halves of at least 2)"
        )
    halves = m.split_halves(n_real, seed) if floor_reason is None else None

    alignments = None
    grid_info: dict[str, Any] = {}
    if needs_images:
        clock = time.perf_counter()
        common = bring_to_common_grid(volumes, device=device, progress=steps.step)
        timings["common_grid"] = time.perf_counter() - clock
        grid_info = common.describe()
        if common.method != "as-is":
            alignments = common.alignments
        images_real, images_syn = common.images[:n_real], common.images[n_real:]

    results: dict[str, dict[str, Any]] = {}
    extractor_info: dict[str, Any] = {}
    if needs_features:
        clock = time.perf_counter()
        extractor = extractor or FeatureExtractor.segmentation_encoder(device=device)
        features = extractor(volumes, alignments=alignments, progress=steps.step)
        timings["features"] = time.perf_counter() - clock
        extractor_info = dict(extractor.info)
        f_real, f_syn = features[:n_real], features[n_real:]
        if "fid" in wanted:
            floor = (
                None if halves is None else m.frechet_distance(f_real[halves[0]], f_real[halves[1]])
            )
            results["fid"] = _entry(
                "fid",
                m.frechet_distance(f_real, f_syn),
                floor,
                floor_reason,
                feature_dim=int(features.shape[1]),
            )
            steps.step()
        if "kid" in wanted:
            value, std = m.kernel_inception_distance(f_real, f_syn, seed=seed)
            floor = None
            if halves is not None:
                floor = m.kernel_inception_distance(
                    f_real[halves[0]], f_real[halves[1]], seed=seed
                )[0]
            results["kid"] = _entry(
                "kid",
                value,
                floor,
                floor_reason,
                std=std,
                kernel="(x.y/d + 1)^3",
                subset_size=min(1000, n_real, n_syn),
            )
            steps.step()

    classifier_info: dict[str, Any] = {}
    if "is" in wanted:
        clock = time.perf_counter()
        p_syn, classifier_info = class_probabilities(
            synthetic,
            device=device,
            progress=steps.step,
            alignments=alignments[n_real:] if alignments else None,
        )
        floor = None
        if floor_reason is None:
            p_real, _ = class_probabilities(
                real,
                device=device,
                progress=steps.step,
                alignments=alignments[:n_real] if alignments else None,
            )
            floor = m.inception_score(p_real)
        timings["inception"] = time.perf_counter() - clock
        classes = len(classifier_info["classes"])
        results["is"] = _entry(
            "is",
            m.inception_score(p_syn),
            floor,
            floor_reason,
            range=[1.0, float(classes)],
            classifier=classifier_info["model"],
        )
        steps.step()

    if "ms_ssim" in wanted:
        clock = time.perf_counter()
        try:
            settings = m.ms_ssim_settings(images_syn[0].shape)
        except ValueError as exc:
            raise EvaluationError(f"{exc}; leave ms_ssim out of the metrics") from exc
        pairs_syn = m.random_pairs(n_syn, MAX_MS_SSIM_PAIRS, seed)
        value = float(np.mean(m.ms_ssim_pairs(images_syn, pairs_syn)))
        floor = None
        if floor_reason is None:
            pairs_real = m.random_pairs(n_real, MAX_MS_SSIM_PAIRS, seed)
            floor = float(np.mean(m.ms_ssim_pairs(images_real, pairs_real)))
        timings["ms_ssim"] = time.perf_counter() - clock
        results["ms_ssim"] = _entry(
            "ms_ssim", value, floor, floor_reason, pairs=len(pairs_syn), **settings
        )
        steps.step()

    if "mmd" in wanted:
        clock = time.perf_counter()
        value = m.maximum_mean_discrepancy(images_real, images_syn, seed=seed)
        floor = None
        if halves is not None:
            floor = m.maximum_mean_discrepancy(
                [images_real[i] for i in halves[0]], [images_real[i] for i in halves[1]], seed=seed
            )
        timings["mmd"] = time.perf_counter() - clock
        results["mmd"] = _entry(
            "mmd", value, floor, floor_reason, kernel="linear, images scaled by 1/sqrt(voxels)"
        )
        steps.step()

    ordered = {name: results[name] for name in METRICS if name in results}
    return EvaluationReport(
        metrics=ordered,
        extractor=extractor_info,
        n_real=n_real,
        n_synthetic=n_syn,
        seed=seed,
        classifier=classifier_info,
        common_grid=grid_info,
        timings=timings,
        names={"real": names[:n_real], "synthetic": names[n_real:]},
    )
