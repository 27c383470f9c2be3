"""The automated Turing test: can a classifier tell synthetic volumes from real ones?

A classifier two-sample test (C2ST; Lopez-Paz and Oquab 2017) asks a rater's question of a
machine. Real and synthetic volumes are prepared exactly as raters see them
(:mod:`.presentation`), then two classifiers, each cross-validated over the volumes so that
every score comes from a model that never saw that volume, try to tell them apart:

* **texture statistics**: a logistic regression on 26 statistics of each volume's brain
  (intensity spread, gradient and Laplacian distributions, spectral energy in four bands,
  local variability, and the same near the scalp), repeated stratified k-fold;
* **a small 3D CNN** on random patches at the grid's own resolution (three convolution
  blocks, about 40k parameters), stratified k-fold, a volume's score the mean over
  fixed patches.

The out-of-fold scores give an AUC with a DeLong 95 % CI for each: 0.5 means the machine
cannot tell them apart, 1.0 that it always can. Sharpness (:mod:`.sharpness`) is measured
on the same prepared volumes.

**What gives it away.** The texture model also reports each statistic on its own (its AUC
and effect size, :func:`feature_giveaways`), and the same again on the volumes before the
study's histogram matching: matching every head to one histogram turns a difference in the
histogram's shape into differences in gradients and local spread (a generator whose brain
histogram is too wide is compressed, and its edges with it), so a statistic that separates
the sets only after matching points at the histogram, not at the edges.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_mrisynth.evaluation.folders import EvaluationError
from napari_mrisynth.volume import Volume

#: Statistics of the texture model, in feature order.
TEXTURE_FEATURES = (
    "brain_std", "brain_p10", "brain_p50", "brain_p90",
    "grad_mean", "grad_p25", "grad_p50", "grad_p75", "grad_p90", "grad_p99",
    "lap_p50", "lap_p90", "lap_p99",
    "band_1", "band_2", "band_3", "band_4",
    "local_std_p10", "local_std_p50", "local_std_p90",
    "scalp_grad_p50", "scalp_grad_p90", "scalp_std", "scalp_lap_p90",
    "brain_skew", "brain_kurtosis",
)  # fmt: skip

MODELS = ("texture", "cnn")


@dataclass
class CnnOptions:
    """The patch CNN's budget (the same for every generator compared)."""

    patch: int = 32
    patches_per_volume: int = 8
    eval_patches: int = 24
    epochs: int = 12
    batch_size: int = 16
    lr: float = 1e-3
    width: int = 16


def texture_features(image: np.ndarray, region: np.ndarray, spacing: float) -> np.ndarray:
    """The 26 statistics of :data:`TEXTURE_FEATURES` for one prepared volume."""
    from scipy import ndimage as ndi
    from scipy import stats

    from napari_mrisynth.evaluation.sharpness import _box

    values = np.asarray(image, dtype=np.float32)
    box = _box(region)
    crop, inside = values[box], region[box]
    brain = crop[inside]
    gradient = np.sqrt(sum(g**2 for g in np.gradient(crop, float(spacing))))
    laplace = np.abs(ndi.laplace(crop)) / float(spacing) ** 2
    mean = ndi.uniform_filter(crop, 3)
    local_std = np.sqrt(np.maximum(ndi.uniform_filter(crop**2, 3) - mean**2, 0.0))
    centred = np.where(inside, crop - brain.mean(), 0.0)
    power = np.abs(np.fft.fftn(centred)) ** 2 / inside.sum()
    frequency = np.sqrt(sum(
        f**2 for f in np.meshgrid(*(np.fft.fftfreq(n) * 2 for n in crop.shape), indexing="ij")
    ))  # fmt: skip
    bands = [float(np.log1p(power[(frequency >= lo) & (frequency < hi)].sum()))
             for lo, hi in ((0.125, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.01))]  # fmt: skip
    head = values > 0
    scalp = head & ~ndi.binary_dilation(region, iterations=max(1, round(6.0 / spacing)))
    full_gradient = np.sqrt(sum(g**2 for g in np.gradient(values, float(spacing))))
    full_laplace = np.abs(ndi.laplace(values)) / float(spacing) ** 2
    scalp_grad = full_gradient[scalp] if scalp.any() else np.zeros(1)
    return np.array([
        brain.std(), *np.percentile(brain, [10, 50, 90]),
        gradient[inside].mean(), *np.percentile(gradient[inside], [25, 50, 75, 90, 99]),
        *np.percentile(laplace[inside], [50, 90, 99]),
        *bands,
        *np.percentile(local_std[inside], [10, 50, 90]),
        *np.percentile(scalp_grad, [50, 90]),
        values[scalp].std() if scalp.any() else 0.0,
        np.percentile(full_laplace[scalp], 90) if scalp.any() else 0.0,
        stats.skew(brain), stats.kurtosis(brain),
    ], dtype=np.float64)  # fmt: skip


def _folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Stratified fold of every sample (k folds, seeded), as an array of fold numbers."""
    rng = np.random.default_rng(seed)
    fold = np.empty(labels.size, dtype=int)
    for value in np.unique(labels):
        where = np.flatnonzero(labels == value)
        rng.shuffle(where)
        fold[where] = np.arange(where.size) % k
    return [np.flatnonzero(fold == f) for f in range(k)]


def texture_scores(features: np.ndarray, labels: np.ndarray, *, folds: int = 5,
                   repeats: int = 5, seed: int = 0) -> np.ndarray:  # fmt: skip
    """Out-of-fold P(synthetic) of a standardised L2 logistic regression, averaged over
    ``repeats`` stratified k-fold splits."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    scores = np.zeros(labels.size)
    for repeat in range(repeats):
        for test in _folds(labels, folds, seed + repeat):
            train = np.setdiff1d(np.arange(labels.size), test)
            model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
            model.fit(features[train], labels[train])
            scores[test] += model.predict_proba(features[test])[:, 1] / repeats
    return scores


def _patch_network(width: int) -> Any:
    from torch import nn

    def block(cin: int, cout: int) -> list[Any]:
        return [nn.Conv3d(cin, cout, 3, padding=1), nn.BatchNorm3d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, width), nn.MaxPool3d(2), *block(width, 2 * width), nn.MaxPool3d(2),
        *block(2 * width, 2 * width), nn.AdaptiveAvgPool3d(1), nn.Flatten(),
        nn.Linear(2 * width, 1),
    )  # fmt: skip


def _patches(volume: np.ndarray, centres: np.ndarray, size: int) -> np.ndarray:
    """``(len(centres), size, size, size)`` float32 patches (0..1), zero-padded at edges."""
    half = size // 2
    padded = np.pad(volume, half)
    out = np.empty((len(centres), size, size, size), np.float32)
    for k, (z, y, x) in enumerate(centres):
        out[k] = padded[z : z + size, y : y + size, x : x + size]
    return out / np.float32(255.0)


def cnn_scores(volumes: Sequence[np.ndarray], labels: np.ndarray, region: np.ndarray, *,
               folds: int = 5, seed: int = 0, options: CnnOptions | None = None,
               device: Any = None,
               progress: Callable[[int, int], None] | None = None) -> np.ndarray:  # fmt: skip
    """Out-of-fold P(synthetic) of a patch CNN trained from scratch on each fold."""
    import torch

    from napari_mrisynth.models.device import choose_device

    opts = options or CnnOptions()
    torch_device = choose_device(device or "auto", announce=False)
    candidates = np.argwhere(region)
    scores = np.zeros(labels.size)
    splits = _folds(labels, folds, seed)
    for number, test in enumerate(splits):
        train = np.setdiff1d(np.arange(labels.size), test)
        rng = np.random.default_rng([seed, number])
        torch.manual_seed(int(rng.integers(2**31)))
        network = _patch_network(opts.width).to(torch_device)
        optimiser = torch.optim.Adam(network.parameters(), lr=opts.lr)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        for _ in range(opts.epochs):
            network.train()
            draws = rng.integers(len(candidates), size=(len(train), opts.patches_per_volume))
            picks = [(i, candidates[d]) for i, row in zip(train, draws, strict=True) for d in row]
            order = rng.permutation(len(picks))
            for start in range(0, len(order), opts.batch_size):
                batch = [picks[j] for j in order[start : start + opts.batch_size]]
                x = np.stack([_patches(volumes[i], c[None], opts.patch)[0] for i, c in batch])
                for axis in range(1, 4):  # random flips: texture, not position, is the question
                    flip = rng.random(len(batch)) < 0.5
                    x[flip] = np.flip(x[flip], axis=axis)
                inputs = torch.from_numpy(np.ascontiguousarray(x[:, None])).to(torch_device)
                target = torch.tensor([float(labels[i]) for i, _ in batch], device=torch_device)
                optimiser.zero_grad()
                loss = loss_fn(network(inputs)[:, 0], target)
                loss.backward()
                optimiser.step()
        network.eval()
        fixed = np.random.default_rng([seed, 999])
        centres = candidates[fixed.integers(len(candidates), size=opts.eval_patches)]
        with torch.no_grad():
            for i in test:
                x = torch.from_numpy(_patches(volumes[i], centres, opts.patch)[:, None])
                scores[i] = float(torch.sigmoid(network(x.to(torch_device))).mean())
        if progress is not None:
            progress(number + 1, len(splits))
    return scores


def feature_giveaways(features: np.ndarray, labels: np.ndarray,
                      names: Sequence[str] = TEXTURE_FEATURES) -> list[dict[str, Any]]:  # fmt: skip
    """Each statistic on its own, most telling first: ``auc`` = P(a synthetic volume's value
    exceeds a real one's) (0.5: no difference; 0 or 1: it alone separates the sets), ``d``
    the synthetic minus the real mean in units of the pooled standard deviation, and both
    sets' mean and standard deviation. ``labels``: 0 real, 1 synthetic."""
    from napari_mrisynth.reports.metrics import cohens_d, roc_auc

    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    real, synthetic = features[labels == 0], features[labels == 1]
    out = []
    for k, name in enumerate(names):
        a, b = real[:, k], synthetic[:, k]
        out.append({"feature": name, "auc": roc_auc(labels, features[:, k]),
                    "d": cohens_d(features[:, k], labels == 1),
                    "real": [float(a.mean()), float(a.std(ddof=1))],
                    "synthetic": [float(b.mean()), float(b.std(ddof=1))]})  # fmt: skip
    return sorted(out, key=lambda e: (-abs(e["auc"] - 0.5), -abs(e["d"]), e["feature"]))


def _auc_entry(labels: np.ndarray, scores: np.ndarray, reading: str) -> dict[str, Any]:
    from napari_mrisynth.reports.metrics import auc_ci_delong

    auc, low, high = auc_ci_delong(labels, scores)
    return {"value": float(auc), "ci95": [float(low), float(high)], "reading": reading,
            "scores": {"real": scores[labels == 0].round(4).tolist(),
                       "synthetic": scores[labels == 1].round(4).tolist()}}  # fmt: skip


def classifier_two_sample_test(
    real: Sequence[np.ndarray],
    synthetic: Sequence[np.ndarray],
    spacing: float,
    *,
    models: Sequence[str] = MODELS,
    folds: int = 5,
    seed: int = 0,
    cnn: CnnOptions | None = None,
    device: Any = None,
    progress: Callable[[int, int], None] | None = None,
    unmatched: tuple[Sequence[np.ndarray], Sequence[np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Cross-validated AUC of each classifier at telling ``synthetic`` from ``real``.

    Parameters
    ----------
    real, synthetic : sequences of uint8 arrays
        Volumes prepared together (:func:`~.presentation.present_volumes`), one grid.
    spacing : float
        The grid's voxel size, mm.
    models : names
        ``texture`` and/or ``cnn``.
    folds : int
        Stratified folds (each set needs at least ``folds`` volumes).
    unmatched : (real, synthetic), optional
        The same volumes before the histogram matching
        (:meth:`~.presentation.Presentation.unmatched`): the texture model is run on them
        too, as ``texture["before_matching"]``.

    Returns
    -------
    dict
        ``{model: {"value", "ci95", "reading", "scores"}}``; the texture model's entry also
        has ``giveaways`` (:func:`feature_giveaways`).
    """
    from napari_mrisynth.evaluation.sharpness import brain_region

    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        raise EvaluationError(f"unknown classifier(s) {', '.join(unknown)}: use {MODELS}")
    if min(len(real), len(synthetic)) < folds:
        raise EvaluationError(
            f"a {folds}-fold two-sample test needs at least {folds} real and {folds} synthetic "
            f"volumes, got {len(real)} and {len(synthetic)}"
        )
    volumes = list(real) + list(synthetic)
    labels = np.array([0] * len(real) + [1] * len(synthetic))
    region = brain_region(volumes[0].shape, spacing)
    out: dict[str, Any] = {"n_real": len(real), "n_synthetic": len(synthetic), "folds": folds}
    before = None if unmatched is None else list(unmatched[0]) + list(unmatched[1])
    if before is not None and len(before) != len(volumes):
        raise EvaluationError(f"{len(before)} unmatched volumes for {len(volumes)} prepared ones")
    texture_steps = len(volumes) * (1 if before is None else 2)
    steps = (texture_steps if "texture" in models else 0) + (folds if "cnn" in models else 0)
    done = 0

    def step(*_: Any) -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, steps)

    def texture_entry(images: Sequence[np.ndarray], reading: str) -> dict[str, Any]:
        features = []
        for image in images:
            features.append(texture_features(image, region, spacing))
            step()
        features = np.stack(features)
        entry = _auc_entry(labels, texture_scores(features, labels, folds=folds, seed=seed),
                           reading)  # fmt: skip
        entry["giveaways"] = feature_giveaways(features, labels)
        return entry

    if "texture" in models:
        out["texture"] = texture_entry(volumes, "logistic regression on 26 texture statistics, "
                                       "5 x repeated stratified k-fold")  # fmt: skip
        out["texture"]["features"] = list(TEXTURE_FEATURES)
        if before is not None:
            out["texture"]["before_matching"] = texture_entry(
                before, "the same model on the volumes before histogram matching"
            )
    if "cnn" in models:
        opts = cnn or CnnOptions()
        scores = cnn_scores(volumes, labels, region, folds=folds, seed=seed, options=opts,
                            device=device, progress=step)  # fmt: skip
        out["cnn"] = _auc_entry(labels, scores, f"3D CNN on {opts.patch}^3-voxel patches, "
                                "stratified k-fold")  # fmt: skip
        out["cnn"]["options"] = vars(opts)
    return out


@dataclass
class AutomatedTuringReport:
    """The automated Turing test of a synthetic set against a real one (see the module)."""

    grid: dict[str, Any]
    two_sample: dict[str, Any]
    sharpness: dict[str, Any]
    names: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "automated-turing-test", "grid": self.grid,
                "two_sample": self.two_sample, "sharpness": self.sharpness,
                "names": self.names}  # fmt: skip


def automated_turing_test(
    real: Sequence[Volume],
    synthetic: Sequence[Volume],
    *,
    spacing: float | None = None,
    resolution: float | None = None,
    models: Sequence[str] = MODELS,
    folds: int = 5,
    seed: int = 0,
    cnn: CnnOptions | None = None,
    device: Any = None,
    progress: Callable[[int, int], None] | None = None,
) -> AutomatedTuringReport:
    """Prepare both sets as a study would show them (by default on a grid at the real
    scans' own resolution, nothing blurred), then measure sharpness and run the classifier
    two-sample test on what raters would see.
    """
    from napari_mrisynth.evaluation.folders import volume_name
    from napari_mrisynth.evaluation.presentation import native_resolution, present_volumes
    from napari_mrisynth.evaluation.sharpness import sharpness_report

    real, synthetic = list(real), list(synthetic)
    names = [volume_name(v, i) for i, v in enumerate(real + synthetic)]
    native = native_resolution(real)
    unmatched: list[np.ndarray] | None = [] if "texture" in models else None
    grid, shown = present_volumes(real + synthetic, spacing=spacing or native,
                                  resolution=resolution, native=native, names=names,
                                  device=device, progress=progress,
                                  unmatched=unmatched)  # fmt: skip
    shown_real, shown_synthetic = shown[: len(real)], shown[len(real) :]
    sharpness = sharpness_report(shown_real, shown_synthetic, grid.spacing, seed=seed)
    pair = None if unmatched is None else (unmatched[: len(real)], unmatched[len(real) :])
    two_sample = classifier_two_sample_test(shown_real, shown_synthetic, grid.spacing,
                                            models=models, folds=folds, seed=seed, cnn=cnn,
                                            device=device, unmatched=pair)  # fmt: skip
    return AutomatedTuringReport(grid.describe(), two_sample, sharpness,
                                 {"real": names[: len(real)],
                                  "synthetic": names[len(real) :]})  # fmt: skip
