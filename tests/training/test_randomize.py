"""Images drawn from label maps (SynthSeg-style domain randomization): known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_mrisynth.io.files import save_volume
from napari_mrisynth.io.streaming import SeriesPatchDataset
from napari_mrisynth.training.randomize import (
    DomainRandomization,
    RandLabelsToImaged,
    RandSliceThicknessd,
    RandSmoothBiasd,
    randomized_segmentation_transform,
    simulate_resolution,
)
from napari_mrisynth.volume import Volume


def _phantom(n: int = 32) -> torch.Tensor:
    """(1, n, n, n) labels: air, a WM ball with frontal (1) and temporal (5) cortex halves
    around it, and a ventricle (12) and sulcal CSF (13) inside."""
    z, y, x = np.mgrid[:n, :n, :n] - (n - 1) / 2
    r = np.sqrt(z**2 + y**2 + x**2)
    labels = np.zeros((n, n, n), np.int64)
    labels[r < 0.42 * n] = np.where(y[r < 0.42 * n] < 0, 1, 5)
    labels[r < 0.32 * n] = 11
    labels[r < 0.10 * n] = 12
    labels[(r < 0.20 * n) & (r >= 0.16 * n)] = 13
    return torch.from_numpy(labels)[None]


def _paint(labels: torch.Tensor, seed: int, **settings) -> np.ndarray:
    paint = RandLabelsToImaged(settings=DomainRandomization(**settings))
    paint.set_random_state(seed=seed)
    return np.asarray(paint({"label": labels})["image"])[0]


def test_labels_of_one_tissue_share_one_intensity_and_air_stays_dark():
    labels = _phantom()
    lab = labels[0].numpy()
    for seed in range(5):
        image = _paint(labels, seed, std_range=(0.0, 0.0))
        means = {v: np.unique(image[lab == v]) for v in (0, 1, 5, 11, 12, 13)}
        assert all(len(m) == 1 for m in means.values())  # no spread asked: one value each
        assert means[1][0] == means[5][0]  # frontal and temporal cortex: one tissue
        assert means[12][0] == means[13][0]  # ventricles and sulci: CSF
        assert means[0][0] <= 0.08  # air
        assert 0.1 <= means[11][0] <= 1.0 and means[11][0] != means[1][0]


def test_contrast_is_drawn_anew_for_every_sample():
    labels = _phantom()
    lab = labels[0].numpy()
    contrast = []
    for seed in range(160):
        image = _paint(labels, seed)
        contrast.append(image[lab == 11].mean() - image[lab == 1].mean())
    contrast = np.array(contrast)
    # T1-like (WM brighter) and T2-like (WM darker) samples both occur, and strongly: with
    # means uniform on [0.1, 1], P(difference > 0.2) = 0.7**2 / (2 * 0.9**2) = 0.30 each way
    assert (contrast > 0.2).mean() > 0.15 and (contrast < -0.2).mean() > 0.15
    assert len(np.unique(np.round(contrast, 6))) == 160


def test_a_share_of_samples_keeps_the_scan_image():
    labels = _phantom()
    scan = torch.rand(labels.shape)
    kept = 0
    for seed in range(60):
        paint = RandLabelsToImaged(settings=DomainRandomization(paint_prob=0.25))
        paint.set_random_state(seed=seed)
        out = paint({"label": labels, "image": scan})["image"]
        kept += bool(torch.equal(torch.as_tensor(out), scan))
    assert 30 <= kept <= 60 - 5  # about 3/4 kept, the others painted
    never = RandLabelsToImaged(settings=DomainRandomization(paint_prob=0.0))
    assert torch.equal(never({"label": labels, "image": scan})["image"], scan)


def test_slice_thickness_blurs_the_thick_axis_to_its_width():
    n = 48
    step = torch.zeros((1, n, n, n))
    step[:, n // 2 :, :, :] = 1.0  # an edge across z
    step[:, :, :, n // 2 :] += 1.0  # and one across x
    out = simulate_resolution(step, (1.0, 1.0, 1.0), (5.0, 1.0, 1.0))[0].numpy()

    def rise(profile: np.ndarray) -> float:  # 10 % to 90 % distance, voxels
        lo, hi = profile.min(), profile.max()
        t = (profile - lo) / (hi - lo)
        return float(np.interp(0.9, t, np.arange(t.size)) - np.interp(0.1, t, np.arange(t.size)))

    along_z = rise(out[:, 5, 5])
    along_x = rise(out[5, 5, :])
    # a Gaussian of FWHM sqrt(5^2 - 1^2) mm rises 10-90 % over 2.563 sigma = 5.3 mm
    sigma = math.sqrt(24.0) / 2.3548
    assert along_z == pytest.approx(2.563 * sigma, rel=0.3)
    assert along_x < 1.0  # the in-plane axes keep their sharp edge


def test_thickness_draws_one_thick_axis_and_respects_the_grid():
    thick = RandSliceThicknessd(keys="image", settings=DomainRandomization())
    thick.set_random_state(seed=3)
    seen = set()
    for _ in range(60):
        res = thick.draw((2.0, 1.0, 1.0))
        assert res[0] >= 2.0 and min(res) >= 1.0 and max(res) <= 5.0
        seen.add(int(np.argmax(res)))
    assert seen == {0, 1, 2}  # every axis is the thick one sometimes
    # a sample's meta spacing is in index order (x, y, z); the draw works in array order
    sample = {"meta": {"spacing": torch.tensor([1.0, 2.0, 3.0])}}
    assert thick.grid_spacing(sample) == [3.0, 2.0, 1.0]
    assert RandSliceThicknessd("image", spacing=(4, 5, 6)).grid_spacing({}) == [4.0, 5.0, 6.0]
    with pytest.raises(ValueError, match="no grid spacing"):
        thick.grid_spacing({})


def test_bias_field_is_smooth_and_bounded():
    bias = RandSmoothBiasd(keys="image", settings=DomainRandomization(bias=0.3))
    ratios = []
    for seed in range(20):
        bias.set_random_state(seed=seed)
        field = np.asarray(bias({"image": torch.ones((1, 32, 32, 32))})["image"])[0]
        assert field.min() >= math.exp(-1.2) and field.max() <= math.exp(1.2)
        assert np.abs(np.diff(np.log(field), axis=0)).max() < 0.15  # smooth voxel to voxel
        ratios.append(field.max() / field.min())
    assert max(ratios) > 1.3  # and strong in some samples


def test_whole_recipe_is_reproducible_and_keeps_labels_exact():
    labels = _phantom()
    recipe = randomized_segmentation_transform((32, 32, 32), spacing=(2.0, 2.0, 2.0))
    outputs = []
    for seed in (7, 7, 8):
        recipe.set_random_state(seed=seed)
        outputs.append(recipe({"image": torch.zeros((1, 32, 32, 32)), "label": labels}))
    a, b, c = outputs
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert not torch.equal(a["image"], c["image"])
    for out in outputs:
        image, moved = out["image"], out["label"]
        assert image.shape == moved.shape == (1, 32, 32, 32)
        assert set(torch.unique(moved).tolist()) <= {0, 1, 5, 11, 12, 13}  # nearest: no new ids
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.5
        # the head moved and changed size, within the ranges asked for
        ratio = float((moved > 0).sum()) / float((labels > 0).sum())
        assert 0.5 < ratio < 1.7 and not torch.equal(moved, labels)


def test_a_stripped_sample_keeps_only_the_brain_in_image_and_labels():
    from napari_mrisynth.training.randomize import RandSkullStripd

    labels = _phantom()
    labels[(labels == 0) & (torch.rand(labels.shape) < 0.3)] = 16  # "bone" around the brain
    labels[0, :2] = 14  # and a slab of extracerebral CSF
    image = torch.rand(labels.shape) + 0.1
    kept_csf = set()
    for seed in range(12):
        strip = RandSkullStripd(settings=DomainRandomization(strip_prob=1.0))
        strip.set_random_state(seed=seed)
        out = strip({"image": image, "label": labels})
        moved, stripped = out["label"], out["image"]
        assert set(torch.unique(moved).tolist()) <= {0, 1, 5, 11, 12, 13, 14}  # no bone
        assert torch.all(stripped[moved == 0] == 0)  # air outside what is kept
        inside = moved > 0
        assert torch.equal(stripped[inside], image[inside]) and torch.equal(
            moved[inside], labels[inside]
        )  # fmt: skip
        kept_csf.add(bool((moved == 14).any()))
    assert kept_csf == {True, False}  # some extractions keep the CSF rim, some do not
    never = RandSkullStripd(settings=DomainRandomization())  # strip_prob 0 by default
    out = never({"image": image, "label": labels})
    assert torch.equal(out["image"], image) and torch.equal(out["label"], labels)


def test_a_kept_scan_moves_with_its_labels():
    labels = _phantom()
    scan = (labels == 11).float() * 0.8 + (labels == 1).float() * 0.4  # WM bright, GM dim
    settings = DomainRandomization(paint_prob=0.0, noise=0.0, bias=0.0, gamma_std=0.0)
    recipe = randomized_segmentation_transform((32, 32, 32), settings, spacing=(1.0,) * 3)
    for seed in range(4):
        recipe.set_random_state(seed=seed)
        out = recipe({"image": scan, "label": labels})
        image, moved = out["image"][0].numpy(), out["label"][0].numpy()
        assert not np.array_equal(moved, labels[0].numpy())  # the head moved ...
        # ... and the scan with it: its WM is still where the moved WM label is
        # (blurred by the random slice thickness, so WM and GM mix at their border)
        wm, gm, air = (image[moved == v].mean() for v in (11, 1, 0))
        assert wm > gm + 0.1 and gm > air + 0.2 and air < 0.1


def test_streamed_training_patches_are_drawn_from_the_labels(tmp_path):
    labels = _phantom(40)[0].numpy().astype(np.uint8)
    geometry = {"spacing": np.array([2.0, 2.0, 2.0]), "origin": np.zeros(3), "direction": np.eye(3)}
    save_volume(Volume(labels.astype(np.float32) * 10, **geometry), tmp_path / "t1.nii.gz")
    save_volume(Volume(labels, **geometry), tmp_path / "labels.nii.gz")
    items = [{"image": tmp_path / "t1.nii.gz", "label": tmp_path / "labels.nii.gz"}]

    def patches() -> list[dict]:
        dataset = SeriesPatchDataset(
            items, patch_size=24, patches_per_volume=3, foreground_ratio=1.0, seed=5,
            transform=randomized_segmentation_transform((24, 24, 24), DomainRandomization()),
        )  # fmt: skip
        return list(dataset)

    first, again = patches(), patches()
    for p, q in zip(first, again, strict=True):
        assert torch.equal(p["image"], q["image"])  # (seed, epoch, item) fixes every draw
        assert float(p["image"].max()) <= 1.5  # not the stored T1 (labels × 10)
        assert p["label"].dtype == torch.int64
    assert len({round(float(p["image"].mean()), 5) for p in first}) == 3
