"""Generative metrics: closed forms, a reference implementation, and real outcomes on
simulated heads through the bundled feature extractor and classifier (CPU, ~30 s)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_mrisynth.cli import main
from napari_mrisynth.cohort.simulate import simulate_subject
from napari_mrisynth.errors import ModelError, VolumeFileError
from napari_mrisynth.evaluation import (
    EvaluationError,
    FeatureExtractor,
    evaluate_sets,
    load_folder,
)
from napari_mrisynth.evaluation import metrics as m
from napari_mrisynth.evaluation.common_grid import (
    in_model_space,
    model_input_spec,
    prepare_for,
)
from napari_mrisynth.io.files import save_volume
from napari_mrisynth.preprocess import ModelGrid, prepare
from napari_mrisynth.volume import Volume


# -- data, built once ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw():
    """Four simulated heads at 4 mm as a scanner writes them (each its own pose and grid)."""
    volumes = []
    for i in range(4):
        subject = simulate_subject(f"r{i}", ("control", "bvFTD")[i % 2], 100 + i, 4.0)
        volumes.append(subject.t1.with_data(subject.t1.data, name=f"raw-{i}"))
    return volumes


@pytest.fixture(scope="module")
def real(raw):
    """The same heads aligned onto the 4 mm model grid, as a 4 mm generator's outputs lie
    (in model space: features need no registration, image metrics run on 48x56x48)."""
    spec = model_input_spec(4.0)
    grid = ModelGrid.from_input_spec(spec)
    return [
        grid.volume(prepare(v, spec).image, name=f"real-{i}", space=spec.space)
        for i, v in enumerate(raw)
    ]


@pytest.fixture(scope="module")
def blurred(real):
    """The same heads, blurred (sigma 1.5 voxels = 6 mm): a clearly different distribution."""
    return [
        v.with_data(ndi.gaussian_filter(np.asarray(v.data, np.float32), 1.5), name=f"blur-{i}")
        for i, v in enumerate(real)
    ]


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor.segmentation_encoder(device="cpu")


@pytest.fixture(scope="module")
def shifted_report(real, blurred, extractor):
    calls = []
    report = evaluate_sets(
        real, blurred, extractor=extractor, device="cpu", progress=lambda d, t: calls.append((d, t))
    )
    return report, calls


def _sample_with_moments(rng, n, mean, covariance):
    """n points whose sample mean and (n-1)-normalised covariance are exactly these."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(covariance).T + mean


# -- metric functions ------------------------------------------------------------------------
def test_fid_matches_the_closed_form_for_two_gaussians():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 5))
    sigma = a @ a.T + 5 * np.eye(5)
    mu1, mu2 = np.zeros(5), np.array([1.0, -2.0, 0.5, 0.0, 3.0])
    x = _sample_with_moments(rng, 200, mu1, sigma)
    y = _sample_with_moments(rng, 150, mu2, 4.0 * sigma)
    # S2 = 4 S1 commutes with S1: tr(S1 + 4 S1 - 2 * 2 S1) = tr(S1)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma))
    assert m.frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)
    d1, d2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 1.0, 1.0])
    x = _sample_with_moments(rng, 50, np.zeros(3), d1)
    y = _sample_with_moments(rng, 60, np.ones(3), d2)
    expected = 3.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + (3 - 1) ** 2
    assert m.frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)
    assert m.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_kid_matches_torchmetrics_on_the_same_features():
    torch = pytest.importorskip("torch")
    kid_module = pytest.importorskip("torchmetrics.image.kid")
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 1.0, (24, 64))
    y = rng.normal(0.3, 1.2, (24, 64))
    reference = kid_module.KernelInceptionDistance(
        feature=torch.nn.Identity(), subsets=3, subset_size=24
    )
    reference.update(torch.from_numpy(x), real=True)
    reference.update(torch.from_numpy(y), real=False)
    expected, _ = reference.compute()
    value, std = m.kernel_inception_distance(x, y, subset_size=24)
    assert value == pytest.approx(float(expected), rel=1e-9)
    assert std == 0.0
    # unbiased: two samples of one distribution average 0; a shift is far above 0
    z = rng.normal(0.0, 1.0, (24, 64))
    same, _ = m.kernel_inception_distance(x, z)
    assert abs(same) < 0.05 * value


def test_kid_over_random_subsets_is_seeded():
    rng = np.random.default_rng(3)
    x, y = rng.normal(0, 1, (30, 8)), rng.normal(1, 1, (40, 8))
    first = m.kernel_inception_distance(x, y, subset_size=10, subsets=20, seed=5)
    assert first == m.kernel_inception_distance(x, y, subset_size=10, subsets=20, seed=5)
    assert first[1] > 0
    full = m.polynomial_mmd2(x, y)
    assert first[0] == pytest.approx(full, rel=0.5)


def test_inception_score_bounds_with_two_classes():
    assert m.inception_score(np.full((6, 2), 0.5)) == pytest.approx(1.0)
    assert m.inception_score(np.tile([[0.9, 0.1]], (5, 1))) == pytest.approx(1.0)
    confident = np.array([[1.0, 0.0], [0.0, 1.0]] * 3)
    assert m.inception_score(confident) == pytest.approx(2.0)
    unbalanced = np.array([[1.0, 0.0]] * 3 + [[0.0, 1.0]])  # IS = exp(entropy of 3:1)
    entropy = -(0.75 * np.log(0.75) + 0.25 * np.log(0.25))
    assert m.inception_score(unbalanced) == pytest.approx(np.exp(entropy))
    with pytest.raises(ValueError, match="probabilities"):
        m.inception_score(np.array([[0.7, 0.7]]))


def test_ms_ssim_of_identical_volumes_is_one_and_small_volumes_fit():
    rng = np.random.default_rng(4)
    smooth = [
        np.clip(ndi.gaussian_filter(rng.random((48, 56, 48)), 2.0) * 4 - 1.5, 0, 1)
        for _ in range(3)
    ]
    values = m.ms_ssim_pairs(smooth, [(0, 0), (1, 1), (0, 1), (1, 2)])
    assert values[:2] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert np.all(values[2:] < 0.99)
    # MONAI's defaults need 176 voxels a side; fewer scales fit 48 voxels, all five fit 96
    assert len(m.ms_ssim_settings((48, 56, 48))["weights"]) == 4
    assert len(m.ms_ssim_settings((96, 112, 96))["weights"]) == 5
    assert sum(m.ms_ssim_settings((20, 20, 20))["weights"]) == pytest.approx(1.0)


def test_random_pairs_and_halves_are_seeded_and_balanced():
    assert m.random_pairs(4, 50, 0) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    pairs = m.random_pairs(20, 10, 7)
    assert len(pairs) == 10 == len(set(pairs)) and pairs == m.random_pairs(20, 10, 7)
    a, b = m.split_halves(7, 3)
    assert (len(a), len(b)) == (3, 4) and sorted([*a, *b]) == list(range(7))


# -- evaluate_sets on simulated heads ----------------------------------------------------------
def test_identical_sets_score_zero(real, extractor, shifted_report):
    report = evaluate_sets(real, real, extractor=extractor, device="cpu", metrics=("fid", "kid"))
    shifted = shifted_report[0].metrics
    assert report.metrics["fid"]["value"] < 1e-6 * shifted["fid"]["value"]
    # unbiased KID of a set against itself is slightly negative (the cross term holds the
    # self-similarities); it is tiny next to a real shift (1.0 % with these four heads of
    # cohort version 2, whose fine anatomy makes heads differ more than version 1's)
    assert abs(report.metrics["kid"]["value"]) < 0.02 * shifted["kid"]["value"]


def test_shifted_distribution_scores_clearly_worse(shifted_report):
    metrics = shifted_report[0].metrics
    assert metrics["fid"]["value"] > 10 * metrics["fid"]["floor"]
    assert metrics["kid"]["value"] > 10 * abs(metrics["kid"]["floor"])
    assert metrics["mmd"]["value"] > 5 * abs(metrics["mmd"]["floor"])
    # blurred heads resemble each other more than real heads do: less diversity
    assert metrics["ms_ssim"]["value"] > metrics["ms_ssim"]["floor"]


def test_every_metric_has_a_finite_floor_and_a_reading(shifted_report):
    report, calls = shifted_report
    assert list(report.metrics) == ["fid", "kid", "is", "ms_ssim", "mmd"]
    for name, entry in report.metrics.items():
        assert np.isfinite(entry["value"]), name
        assert entry["floor"] is not None and np.isfinite(entry["floor"]), name
        assert entry["reading"] and entry["floor_kind"]
    assert 1.0 <= report.metrics["is"]["value"] <= 2.0
    assert 1.0 <= report.metrics["is"]["floor"] <= 2.0
    assert report.extractor["model"].startswith("seg-head-demo@")
    assert len(report.extractor["weights_sha256"]) == 64
    assert report.extractor["feature_dim"] == 120 == report.metrics["fid"]["feature_dim"]
    assert report.common_grid["method"] == "as-is"
    assert calls[-1][0] == calls[-1][1]
    data = json.loads(json.dumps(report.to_json()))
    assert data["n_real"] == data["n_synthetic"] == 4
    assert data["names"]["synthetic"][0] == "blur-0"
    assert data["inception_classifier"]["classes"] == ["control", "bvFTD"]


def test_a_small_real_set_has_no_floor_and_says_why(real, blurred, extractor):
    report = evaluate_sets(
        real[:3], blurred[:2], extractor=extractor, device="cpu", metrics=("fid", "kid")
    )
    for entry in report.metrics.values():
        assert entry["floor"] is None
        assert "3 volumes" in entry["floor_reason"]
    with pytest.raises(EvaluationError, match="at least two"):
        evaluate_sets(real[:1], blurred, extractor=extractor, metrics=("fid",))
    with pytest.raises(EvaluationError, match="unknown metric"):
        evaluate_sets(real, blurred, metrics=("psnr",))


# -- MedicalNet weights (fabricated: the real ones are not available offline) ------------------
class Payload:
    """An arbitrary object: a checkpoint holding one must not be unpickled."""


def _medicalnet_checkpoint(path, torch):
    from monai.networks.nets import resnet10

    torch.manual_seed(0)
    network = resnet10(spatial_dims=3, n_input_channels=1, feed_forward=False,
                       shortcut_type="B", bias_downsample=False)  # fmt: skip
    state = {f"module.{k}": v for k, v in network.state_dict().items()}
    state["module.conv_seg.0.weight"] = torch.zeros(2, 512, 1, 1, 1)  # MedicalNet's seg head
    torch.save({"state_dict": state, "epoch": 0}, path)
    return network.state_dict()


def test_medicalnet_weights_load_in_their_format(tmp_path, real):
    torch = pytest.importorskip("torch")
    path = tmp_path / "resnet_10_23dataset.pth"
    expected = _medicalnet_checkpoint(path, torch)
    extractor = FeatureExtractor.medicalnet(path, 10, device="cpu", spec=model_input_spec(4.0))
    loaded = extractor.network.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
    features = extractor(real[:2])
    assert features.shape == (2, 512) and np.all(np.isfinite(features))
    assert extractor.info["weights_sha256"] and extractor.info["model"] == "medicalnet-resnet10"
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "x": Payload()}, unsafe)
    with pytest.raises(ModelError, match="unsafe.pth"):
        FeatureExtractor.medicalnet(unsafe, 10)
    with pytest.raises(ModelError, match="does not fit"):
        FeatureExtractor.medicalnet(path, 18)


def test_volumes_in_model_space_are_resampled_without_registration(real):
    spec = model_input_spec()
    # a 4 mm head of model space, as a 4 mm generator writes it: no registration
    prepared = prepare_for(real[0], spec)
    assert prepared.alignment.method == "identity"
    assert prepared.image.shape == tuple(spec.shape)
    on_grid = ModelGrid.from_input_spec(spec).volume(prepared.image)
    assert prepare_for(on_grid, spec).alignment.method == "identity"
    # on the default model grid of its own voxel size, metadata or not
    bare = Volume(np.asarray(real[0].data), real[0].spacing, real[0].origin)
    assert in_model_space(bare, spec)
    outside = Volume(np.asarray(real[0].data), real[0].spacing, real[0].origin + 1.0)
    assert not in_model_space(outside, spec)


# -- folders and the command line --------------------------------------------------------------
def test_load_folder_names_sorted_files_and_refuses_bad_ones(tmp_path, real):
    for i, volume in enumerate(real[:2]):
        save_volume(volume, tmp_path / "set" / f"b-{i}.nii.gz")
    save_volume(real[2], tmp_path / "set" / "a.mha")
    (tmp_path / "set" / "notes.txt").write_text("ignored")
    sidecar = {"synthetic": True, "grid": {"space": "mrisynth-head-mni152-2009c"}}
    (tmp_path / "set" / "b-1.json").write_text(json.dumps(sidecar))
    volumes = load_folder(tmp_path / "set")
    assert [v.metadata["name"] for v in volumes] == ["a", "b-0", "b-1"]
    assert volumes[2].metadata["space"] == "mrisynth-head-mni152-2009c"
    assert "space" not in volumes[1].metadata
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no volume files"):
        load_folder(tmp_path / "empty")
    (tmp_path / "set" / "c.nii.gz").write_bytes(b"not an image")
    with pytest.raises(VolumeFileError, match="c.nii.gz"):
        load_folder(tmp_path / "set")


def test_cli_evaluate_aligns_scans_and_writes_the_report(tmp_path, raw, blurred, capsys):
    for i, volume in enumerate(raw[:2]):
        save_volume(volume, tmp_path / "real" / f"r{i}.nii.gz")
    for i, volume in enumerate(blurred[2:]):  # a generator's outputs and their sidecars
        save_volume(volume, tmp_path / "synthetic" / f"s{i}.nii.gz")
        sidecar = {"synthetic": True, "grid": {"space": volume.metadata["space"]}}
        (tmp_path / "synthetic" / f"s{i}.json").write_text(json.dumps(sidecar))
    out = tmp_path / "evaluation.json"
    args = ["evaluate", "--real", str(tmp_path / "real"), "--synthetic",
            str(tmp_path / "synthetic"), "--metrics", "fid,kid", "--classifiers", "none",
            "--device", "cpu",
            "--json", str(out)]  # fmt: skip
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "FID" in table and "real-vs-real floor" in table and "lower is better" in table
    assert "no floor: the real set has 2 volumes" in table
    data = json.loads(out.read_text())
    assert set(data["metrics"]) == {"fid", "kid"}
    assert data["metrics"]["fid"]["value"] > 0 and data["metrics"]["fid"]["floor"] is None
    assert data["names"] == {"real": ["r0", "r1"], "synthetic": ["s0", "s1"]}
    assert data["extractor"]["feature_dim"] == 120
    (tmp_path / "none").mkdir()
    assert main(["evaluate", "--real", str(tmp_path / "none"), "--synthetic", "x"]) == 1
    assert "none: no volume files" in capsys.readouterr().err
