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


@dataclass
class _Sets:
    """What every metric reads: the two sets, their features and common-grid images (when
    a chosen metric needs them), the seeded real-set halves of the floors, the progress."""

    real: list[Volume]
    synthetic: list[Volume]
    seed: int
    device: Any
    steps: _Steps
    halves: tuple[Any, Any] | None
    floor_reason: str | None
    f_real: Any = None
    f_syn: Any = None
    images_real: list[Any] = field(default_factory=list)
    images_syn: list[Any] = field(default_factory=list)
    alignments: list[Any] | None = None
    classifier: dict[str, Any] = field(default_factory=dict)


def fid_beside_floor(s: _Sets) -> dict[str, Any]:
    """Fréchet distance of the feature sets; floor: between the real set's two halves."""
    floor = None
    if s.halves is not None:
        floor = m.frechet_distance(s.f_real[s.halves[0]], s.f_real[s.halves[1]])
    value = m.frechet_distance(s.f_real, s.f_syn)
    return _entry("fid", value, floor, s.floor_reason, feature_dim=int(s.f_real.shape[1]))


def kid_beside_floor(s: _Sets) -> dict[str, Any]:
    """Kernel inception distance (cubic polynomial kernel); floor: between real halves."""
    value, std = m.kernel_inception_distance(s.f_real, s.f_syn, seed=s.seed)
    floor = None
    if s.halves is not None:
        halves = (s.f_real[s.halves[0]], s.f_real[s.halves[1]])
        floor = m.kernel_inception_distance(*halves, seed=s.seed)[0]
    return _entry("kid", value, floor, s.floor_reason, std=std, kernel="(x.y/d + 1)^3",
                  subset_size=min(1000, len(s.real), len(s.synthetic)))  # fmt: skip


def inception_score_beside_real(s: _Sets) -> dict[str, Any]:
    """Inception Score from the bundled classifier's probabilities; floor: the real set's."""
    from napari_mrisynth.evaluation.features import class_probabilities

    n_real = len(s.real)
    p_syn, s.classifier = class_probabilities(
        s.synthetic, device=s.device, progress=s.steps.step,
        alignments=s.alignments[n_real:] if s.alignments else None,
    )  # fmt: skip
    floor = None
    if s.floor_reason is None:
        p_real, _ = class_probabilities(
            s.real, device=s.device, progress=s.steps.step,
            alignments=s.alignments[:n_real] if s.alignments else None,
        )  # fmt: skip
        floor = m.inception_score(p_real)
    classes = len(s.classifier["classes"])
    return _entry("is", m.inception_score(p_syn), floor, s.floor_reason,
                  range=[1.0, float(classes)], classifier=s.classifier["model"])  # fmt: skip


def ms_ssim_beside_real(s: _Sets) -> dict[str, Any]:
    """Mean MS-SSIM of seeded pairs within the synthetic set (diversity); floor: the same
    within the real set."""
    try:
        settings = m.ms_ssim_settings(s.images_syn[0].shape)
    except ValueError as exc:
        raise EvaluationError(f"{exc}; leave ms_ssim out of the metrics") from exc
    pairs_syn = m.random_pairs(len(s.synthetic), MAX_MS_SSIM_PAIRS, s.seed)
    value = float(np.mean(m.ms_ssim_pairs(s.images_syn, pairs_syn)))
    floor = None
    if s.floor_reason is None:
        pairs_real = m.random_pairs(len(s.real), MAX_MS_SSIM_PAIRS, s.seed)
        floor = float(np.mean(m.ms_ssim_pairs(s.images_real, pairs_real)))
    return _entry("ms_ssim", value, floor, s.floor_reason, pairs=len(pairs_syn), **settings)


def mmd_beside_floor(s: _Sets) -> dict[str, Any]:
    """Maximum mean discrepancy of the images (linear kernel); floor: between real halves."""
    value = m.maximum_mean_discrepancy(s.images_real, s.images_syn, seed=s.seed)
    floor = None
    if s.halves is not None:
        first = [s.images_real[i] for i in s.halves[0]]
        second = [s.images_real[i] for i in s.halves[1]]
        floor = m.maximum_mean_discrepancy(first, second, seed=s.seed)
    return _entry("mmd", value, floor, s.floor_reason,
                  kernel="linear, images scaled by 1/sqrt(voxels)")  # fmt: skip


#: name -> the function that measures it, in the report's order.
METRIC_FUNCTIONS: dict[str, Callable[[_Sets], dict[str, Any]]] = {
    "fid": fid_beside_floor,
    "kid": kid_beside_floor,
    "is": inception_score_beside_real,
    "ms_ssim": ms_ssim_beside_real,
    "mmd": mmd_beside_floor,
}


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
    from napari_mrisynth.evaluation.features import FeatureExtractor

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
    floor_reason = None
    if n_real < MIN_REAL_FOR_FLOOR:
        floor_reason = (
            f"the real set has {n_real} volumes; a floor needs {MIN_REAL_FOR_FLOOR} "
            "(two halves of at least 2)"
        )
    sets = _Sets(real, synthetic, seed, device, steps,
                 m.split_halves(n_real, seed) if floor_reason is None else None,
                 floor_reason)  # fmt: skip
    timings: dict[str, float] = {}
    grid_info: dict[str, Any] = {}
    if needs_images:
        clock = time.perf_counter()
        common = bring_to_common_grid(volumes, device=device, progress=steps.step)
        timings["common_grid"] = time.perf_counter() - clock
        grid_info = common.describe()
        if common.method != "as-is":
            sets.alignments = common.alignments
        sets.images_real, sets.images_syn = common.images[:n_real], common.images[n_real:]
    extractor_info: dict[str, Any] = {}
    if needs_features:
        clock = time.perf_counter()
        extractor = extractor or FeatureExtractor.segmentation_encoder(device=device)
        features = extractor(volumes, alignments=sets.alignments, progress=steps.step)
        timings["features"] = time.perf_counter() - clock
        extractor_info = dict(extractor.info)
        sets.f_real, sets.f_syn = features[:n_real], features[n_real:]

    results: dict[str, dict[str, Any]] = {}
    for name, measure in METRIC_FUNCTIONS.items():
        if name in wanted:
            clock = time.perf_counter()
            results[name] = measure(sets)
            timings[{"is": "inception"}.get(name, name)] = time.perf_counter() - clock
            steps.step()
    return EvaluationReport(
        metrics=results,
        extractor=extractor_info,
        n_real=n_real,
        n_synthetic=n_syn,
        seed=seed,
        classifier=sets.classifier,
        common_grid=grid_info,
        timings=timings,
        names={"real": names[:n_real], "synthetic": names[n_real:]},
    )
