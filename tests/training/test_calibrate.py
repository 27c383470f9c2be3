"""Per-label logit offsets (training.calibrate): known optima, the flippable-voxel shortcut
against a full argmax, and the offsets reaching inference through the card."""

from __future__ import annotations

import numpy as np
import pytest

from napari_mrisynth.training.calibrate import LogitSample, fit_logit_offsets, sample_dice


def _dice_full(logits: np.ndarray, truth: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    c = logits.shape[0]
    pred = (logits + offsets.reshape(c, *([1] * truth.ndim))).argmax(0)
    out = np.full(c, np.nan)
    for v in range(c):
        total = (pred == v).sum() + (truth == v).sum()
        if total:
            out[v] = 2 * ((pred == v) & (truth == v)).sum() / total
    return out


def test_a_shifted_decision_boundary_is_found_and_fixed():
    # label 1 is true where x > 0.5, but the network calls it wherever x > 0 (logit of
    # label 2 is 0): the offset between them must move the boundary to 0.5
    x = np.linspace(-2, 2, 4001)
    truth = np.where(x > 0.5, 1, 2)
    logits = np.stack([np.full_like(x, -20.0), x, np.zeros_like(x)]).astype(np.float32)
    sample = LogitSample(3)
    sample.add(logits.reshape(3, 1, 1, -1), truth.reshape(1, 1, -1))
    fit = fit_logit_offsets(sample, [1, 2])
    assert fit.mean_before < 0.9
    assert fit.offsets[2] - fit.offsets[1] == pytest.approx(0.5, abs=0.051)
    assert fit.offsets[0] == 0.0
    assert fit.mean_after > 0.995
    np.testing.assert_allclose(fit.dice_after, _dice_full(logits, truth, fit.offsets), atol=1e-12)


def test_the_flippable_voxel_shortcut_counts_like_a_full_argmax():
    rng = np.random.default_rng(0)
    c, shape = 5, (6, 7, 8)
    sample = LogitSample(c, span=1.0)
    volumes = []
    for _ in range(3):
        truth = rng.integers(0, c, shape)
        logits = rng.normal(0, 2, (c, *shape)).astype(np.float32)
        logits[(truth, *np.indices(shape))] += 1.5  # informative, not perfect
        sample.add(logits, truth)
        volumes.append((logits, truth))
    assert 0 < sample.flippable < sample.voxels == 3 * 6 * 7 * 8
    for offsets in (np.zeros(c, np.float32), np.array([0, 0.7, -0.4, 0.2, -1.0], np.float32)):
        expected = _dice_full(
            np.concatenate([lg.reshape(c, -1) for lg, _ in volumes], 1),
            np.concatenate([t.ravel() for _, t in volumes]),
            offsets,
        )
        np.testing.assert_allclose(sample_dice(sample, offsets), expected, atol=1e-3)
    fit = fit_logit_offsets(sample, range(1, c))
    assert fit.mean_after >= fit.mean_before
    assert np.all(np.abs(fit.offsets) <= 1.0 + 1e-6)


def test_mismatched_logits_and_labels_are_refused():
    sample = LogitSample(3)
    with pytest.raises(ValueError, match="do not match"):
        sample.add(np.zeros((3, 4, 4)), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="outside 0..2"):
        sample.add(np.zeros((3, 4)), np.full(4, 3))
