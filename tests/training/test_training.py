"""Training station: splits, the model-grid cache, Lightning runs tracked in a real MLflow
SQLite store, registry models with verified weights, fine-tuning and a 2-process DDP run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter

import numpy as np
import pytest

pytest.importorskip("lightning")
pytest.importorskip("mlflow")

from napari_mrisynth.errors import MrisynthError  # noqa: E402
from napari_mrisynth.training.splits import read_participants, split_subjects  # noqa: E402

#: A coarse model grid and tiny networks keep each run to a few seconds on two cores.
GRID = 8.0
TINY_SEG = dict(architecture="UNet", channels=[4, 8], spacing=GRID, patch_size=16,
                patches_per_volume=2, batch_size=2, lr=1e-2, epochs=3, seed=0,
                accelerator="cpu", progress=False, augment=False)  # fmt: skip
TINY_CLS = dict(architecture="ResNet", init_filters=4, spacing=GRID, batch_size=2, lr=1e-3,
                epochs=2, seed=0, accelerator="cpu", progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def cohort(simulated_cohort):
    return simulated_cohort(8, 3)


@pytest.fixture(scope="module")
def seg_run(cohort, tracking_uri, tmp_path_factory):
    from napari_mrisynth.training.train import train_segmentation

    out = tmp_path_factory.mktemp("seg_models")
    card = train_segmentation(cohort, out, id="seg-test", tracking_uri=tracking_uri,
                              experiment="tests", **TINY_SEG)  # fmt: skip
    return card, out


# -- splits ----------------------------------------------------------------------------------
def _participants(counts: dict[str, int]) -> list[dict[str, str]]:
    rows, n = [], 0
    for diagnosis, count in counts.items():
        for _ in range(count):
            n += 1
            rows.append({"participant_id": f"sub-{n:03d}", "diagnosis": diagnosis})
    return rows


def test_split_is_stratified_disjoint_and_complete():
    rows = _participants({"bvFTD": 30, "control": 20})
    splits = split_subjects(rows, fractions=(0.6, 0.2, 0.2), seed=4)
    diagnosis = {r["participant_id"]: r["diagnosis"] for r in rows}
    per_split = {k: Counter(diagnosis[s] for s in v) for k, v in splits.items()}
    assert per_split["train"] == {"bvFTD": 18, "control": 12}
    assert per_split["val"] == {"bvFTD": 6, "control": 4}
    assert per_split["test"] == {"bvFTD": 6, "control": 4}
    everyone = [s for v in splits.values() for s in v]
    assert sorted(everyone) == sorted(diagnosis) and len(set(everyone)) == len(everyone)


def test_split_is_seeded_and_ignores_row_order():
    rows = _participants({"bvFTD": 12, "control": 9})
    first = split_subjects(rows, seed=1)
    assert split_subjects(list(reversed(rows)), seed=1) == first
    assert split_subjects(rows, seed=2) != first


def test_split_puts_every_class_in_every_split_when_possible():
    rows = _participants({"bvFTD": 3, "control": 4, "other": 5})
    splits = split_subjects(rows, seed=0)
    diagnosis = {r["participant_id"]: r["diagnosis"] for r in rows}
    for ids in splits.values():
        assert {diagnosis[s] for s in ids} == {"bvFTD", "control", "other"}
    with pytest.raises(MrisynthError, match="summing to 1"):
        split_subjects(rows, fractions=(0.5, 0.2, 0.2))


def test_read_participants(cohort, tmp_path):
    rows = read_participants(cohort)
    assert len(rows) == 8
    assert Counter(r["diagnosis"] for r in rows) == {"bvFTD": 4, "control": 4}
    with pytest.raises(MrisynthError, match="participants.tsv"):
        read_participants(tmp_path)


# -- the model-grid cache ------------------------------------------------------------------
def test_cache_puts_image_and_labels_on_the_model_grid_once(cohort, tmp_path):
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.training.data import cache_subject
    from napari_mrisynth.training.recipe import model_spec

    spec = model_spec(GRID)
    first = cache_subject(cohort, "sub-001", spec, tmp_path)
    image, label = load_volume(first.image), load_volume(first.label)
    assert image.shape == label.shape == tuple(spec.shape)
    np.testing.assert_allclose(image.spacing, spec.spacing, atol=1e-4)
    np.testing.assert_allclose(label.origin, spec.origin, atol=1e-3)
    values = set(np.unique(np.asarray(label.data)).tolist())
    assert {0, 1, 11, 16} <= values and values <= set(range(19))  # nearest neighbour: ids only
    brain = np.isin(np.asarray(label.data), range(1, 14))
    assert np.asarray(image.data)[brain].mean() > np.asarray(image.data)[~brain].mean()
    stamp = first.image.stat().st_mtime_ns
    again = cache_subject(cohort, "sub-001", spec, tmp_path)
    assert again == first and first.image.stat().st_mtime_ns == stamp


# -- segmentation, end to end ----------------------------------------------------------------
def test_segmentation_run_writes_a_verified_model_and_an_mlflow_run(seg_run, cohort):
    from mlflow import MlflowClient

    from napari_mrisynth.anatomy import LABELS
    from napari_mrisynth.models.card import read_card, sha256_file
    from napari_mrisynth.models.weights import verify_weights

    card, out = seg_run
    assert card.path == out / "seg-test-1.0.0"
    saved = read_card(card.path)
    assert saved.weights["sha256"] == sha256_file(card.path / "model.safetensors")
    assert verify_weights(saved) == saved.weights["sha256"]
    assert [label.name for label in saved.labels] == [LABELS[v][0] for v in range(1, 19)]
    assert saved.training["simulated"] is True and "NOT FOR CLINICAL USE" in saved.intended_use
    splits = saved.training["splits"]
    assert sorted(sum(splits.values(), [])) == [f"sub-{i:03d}" for i in range(1, 9)]
    assert saved.input.spacing == (GRID,) * 3 and saved.inference["roi_size"] == [16, 16, 16]
    test = saved.metrics["test"]
    assert set(test["dice"]) <= {label.name for label in saved.labels}
    assert 0.0 < test["dice_mean"] <= 1.0
    # held-out subjects, on their own scans, after 12 steps of a 4-channel UNet (0.11 here)
    assert test["dice"]["white_matter"] > 0.05

    info = saved.training["mlflow"]
    client = MlflowClient(tracking_uri=info["tracking_uri"])
    run = client.get_run(info["run_id"])
    assert run.data.params["options.epochs"] == "3"
    assert run.data.params["card.id"] == "seg-test" and run.data.params["world_size"] == "1"
    losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert len(client.get_metric_history(run.info.run_id, "val/dice_mean")) == 3
    assert run.data.metrics["test/dice_mean"] == pytest.approx(test["dice_mean"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "model")}
    assert {"model/card.json", "model/model.safetensors"} <= artifacts
    assert client.list_artifacts(run.info.run_id, "reports")
    version = client.get_model_version("seg-test", info["version"])
    assert version.run_id == run.info.run_id and version.source.endswith("/model")


def test_finetuning_starts_from_the_base_weights(seg_run, cohort, tracking_uri, tmp_path):
    import lightning.pytorch as pl
    import torch

    from napari_mrisynth.models.weights import load_weights
    from napari_mrisynth.training.train import train_segmentation

    base, out = seg_run
    base_weights = load_weights(base)
    seen = {}

    class FirstStep(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if not seen:
                seen.update({k: v.detach().clone() for k, v in module.network.state_dict().items()})

    # Another seed would draw another split; fine-tuning keeps the base model's held-out set.
    # Network and grid options come from the base too; the card says so, not the defaults.
    options = {**TINY_SEG, "epochs": 1, "callbacks": [FirstStep()], "seed": 99,
               "channels": [16, 32], "spacing": 4.0}  # fmt: skip
    card = train_segmentation(cohort, out, id="seg-test-tuned", init="seg-test@1.0.0",
                              tracking_uri=tracking_uri, experiment="tests", **options)  # fmt: skip
    assert card.training["splits"] == base.training["splits"]
    assert card.training["splits_from"] == "seg-test@1.0.0"
    assert set(seen) == set(base_weights)
    for key, value in base_weights.items():
        assert torch.equal(seen[key], value), key
    assert card.training["init"]["model"] == "seg-test@1.0.0"
    assert card.training["init"]["reinitialised"] == []
    assert card.architecture == base.architecture and card.input == base.input
    recorded = card.training["options"]
    assert (recorded["architecture"], recorded["channels"], recorded["spacing"]) == (
        "UNet",
        [4, 8],
        GRID,
    )
    tuned = load_weights(card)
    assert any(not torch.equal(tuned[k], base_weights[k]) for k in base_weights)


def test_a_wider_head_fine_tunes_from_the_base_with_the_same_outputs_and_segments(
    cohort, tracking_uri, tmp_path
):
    import lightning.pytorch as pl
    import torch

    from napari_mrisynth.models.inference import segment
    from napari_mrisynth.models.networks import build_network
    from napari_mrisynth.models.weights import load_model, load_weights
    from napari_mrisynth.training.data import subject_image
    from napari_mrisynth.training.train import train_segmentation

    out = tmp_path / "models"
    seg = {**TINY_SEG, "architecture": "SegResNet", "init_filters": 4, "epochs": 1}
    base = train_segmentation(cohort, out, id="seg-plain", tracking_uri=tracking_uri,
                              experiment="tests", **seg)  # fmt: skip
    assert "head" not in base.architecture
    first = {}

    class FirstStep(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if not first:
                first.update(
                    {k: v.detach().clone() for k, v in module.network.state_dict().items()}
                )
                first["_x"] = batch["image"][:1].clone()

    card = train_segmentation(cohort, out, id="seg-wide", init="seg-plain@1.0.0",
                              head_channels=8, tracking_uri=tracking_uri, experiment="tests",
                              **{**seg, "seed": 5, "callbacks": [FirstStep()]})  # fmt: skip
    assert card.architecture["head"] == {"channels": 8}
    assert card.training["init"]["head"] == 8
    assert card.training["init"]["reinitialised"] == []
    assert card.training["options"]["head_channels"] == 8
    assert card.training["options"]["init_filters"] == 4  # the base's, not the default 16
    assert "output head of 8 features" in card.title and "output head" not in base.title
    # the widened network computed the base's outputs when training started
    plain, wide = build_network(base.architecture), build_network(card.architecture)
    plain.load_state_dict(load_weights(base))
    x = first.pop("_x")
    wide.load_state_dict(first)
    with torch.no_grad():
        torch.testing.assert_close(wide.eval()(x), plain.eval()(x), atol=1e-4, rtol=1e-4)
    # and the saved model loads and segments like any other
    assert load_model(card, "segmentation").network.conv_final[2].out_channels == 8
    from napari_mrisynth.io.files import load_volume

    scan = load_volume(subject_image(cohort, card.training["splits"]["test"][0]))
    result = segment(scan, card)
    assert result.labels.shape == scan.shape and result.card.ref == "seg-wide@1.0.0"
    from napari_mrisynth.cli.models import describe_card

    assert "SegResNet(" in describe_card(card) and "output head of 8 features" in describe_card(
        card
    )
    # fine-tuning the widened model keeps its head; another width or a UNet is refused
    with pytest.raises(MrisynthError, match="has a head of 8"):
        train_segmentation(cohort, out, id="seg-wider", init="seg-wide@1.0.0", head_channels=16,
                           tracking_uri=tracking_uri, experiment="tests", **seg)  # fmt: skip
    with pytest.raises(MrisynthError, match="for SegResNet"):
        train_segmentation(cohort, out, id="seg-unet-head", head_channels=8,
                           tracking_uri=tracking_uri, experiment="tests", **TINY_SEG)  # fmt: skip


def test_finetuning_on_the_cohort_rebuilt_elsewhere_keeps_the_held_out_set(
    seg_run, cohort, tracking_uri, tmp_path
):
    import shutil

    from napari_mrisynth.training.recipe import inherited_splits
    from napari_mrisynth.training.train import train_segmentation

    base, _ = seg_run
    rebuilt = shutil.copytree(cohort, tmp_path / "rebuilt")  # same recipe, another folder
    options = {**TINY_SEG, "epochs": 1, "seed": 7}
    card = train_segmentation(rebuilt, tmp_path / "models", id="seg-test-moved",
                              init=str(base.path), tracking_uri=tracking_uri,
                              experiment="tests", **options)  # fmt: skip
    assert card.training["splits"] == base.training["splits"]
    assert card.training["splits_from"] == "seg-test@1.0.0"
    # a cohort missing some of the base's subjects is another cohort: a fresh split
    rows = read_participants(rebuilt)
    assert inherited_splits(base, rebuilt, rows[:-1]) is None


def test_randomized_training_sees_images_drawn_from_the_labels(cohort, tracking_uri, tmp_path):
    import lightning.pytorch as pl

    from napari_mrisynth.training.randomize import DomainRandomization
    from napari_mrisynth.training.train import train_classification, train_segmentation

    batches = []

    class Batches(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            batches.append((batch["image"].clone(), batch["label"].clone()))

    options = {**TINY_SEG, "epochs": 1, "randomize": True, "balance_labels": True,
               "strip_fraction": 0.25, "callbacks": [Batches()]}  # fmt: skip
    card = train_segmentation(cohort, tmp_path, id="seg-test-randomized",
                              tracking_uri=tracking_uri, experiment="tests", **options)  # fmt: skip
    assert card.training["randomization"] == DomainRandomization(strip_prob=0.25).to_json()
    sampling = card.training["patch_sampling"]
    assert sampling["foreground_ratio"] == 0.7
    assert sampling["class_weights"] == {str(v): 1.0 for v in range(1, 19)}  # every label
    # The cohort's T1 has white matter brighter than cortex everywhere; drawn images put
    # them in either order.
    order = []
    for images, labels in batches:
        for image, label in zip(images, labels, strict=True):
            wm, gm = label == 11, (label >= 1) & (label <= 8)
            if wm.sum() > 20 and gm.sum() > 20:
                order.append(float(image[wm].mean()) > float(image[gm].mean()))
    assert len(order) >= 4 and 0 < sum(order) < len(order)
    with pytest.raises(MrisynthError, match="segmentation only"):
        train_classification(cohort, tmp_path, balance_labels=True, **TINY_CLS)


def test_randomized_classification_reads_masked_anatomy(cohort, tracking_uri, tmp_path):
    import lightning.pytorch as pl

    from napari_mrisynth.preprocess import reference_on_grid
    from napari_mrisynth.preprocess.grid import ModelGrid
    from napari_mrisynth.training.train import train_classification

    batches = []

    class Batches(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            batches.append((batch["image"].clone(), batch["label"].clone()))

    options = {**TINY_CLS, "epochs": 2, "randomize": True, "paint_fraction": 1.0,
               "callbacks": [Batches()]}  # fmt: skip
    card = train_classification(
        cohort, tmp_path, id="cls-test-randomized", tracking_uri=tracking_uri,
        experiment="tests", **options,
    )  # fmt: skip
    assert card.title.endswith(", domain-randomized")
    settings = card.training["randomization"]
    assert settings["paint_prob"] == 1.0
    assert settings["rotation_deg"] == 5.0 and settings["scale"] == 0.05  # aligned heads
    brain = reference_on_grid(ModelGrid.from_input_spec(card.input))[1].astype(bool)
    labels, contrasts = [], []
    for images, targets in batches:
        assert images.shape[2:] == brain.shape and targets.ndim == 1
        labels += targets.tolist()
        for image in images[:, 0].numpy():
            assert not image[~brain].any()  # masked as prepare() masks every scan
            inside = image[brain]
            contrasts.append(float(np.percentile(inside, 90) - np.percentile(inside, 10)))
    assert set(labels) == {0, 1}  # class ids, not label maps
    assert len(set(np.round(contrasts, 4))) == len(contrasts)  # every volume drawn anew
    assert len(card.metrics["test"]["subjects"]) == len(card.training["splits"]["test"]) == 2


def test_balanced_sampling_shows_small_labels_as_often_as_large(cohort, tmp_path):
    from napari_mrisynth.training import data
    from napari_mrisynth.training.recipe import model_spec

    spec = model_spec(4.0)
    subjects = [row["participant_id"] for row in read_participants(cohort)][:2]
    cached = data.cache_subjects(cohort, subjects, spec, tmp_path)

    def share_with(label: int, weights) -> float:
        dataset = data.segmentation_dataset(
            cached, patch_size=1, patches_per_volume=300, seed=0, augment=False,
            foreground_ratio=1.0, class_weights=weights,
        )  # fmt: skip
        return float(np.mean([(sample["label"] == label).any() for sample in dataset]))

    uniform = {v: 1.0 for v in range(1, 19)}
    for small in (12, 15, 18):  # ventricles, spinal cord, eyes: a few mL of a 3 L head
        balanced, plain = share_with(small, uniform), share_with(small, None)
        # 1-voxel patches: the centre's label. Each label centres 1/18 of the 600 patches
        # (the bound leaves 3 sd); in proportion to volume, under 1/100
        assert balanced > 0.5 / 18 and balanced > 4 * plain


def test_an_existing_model_version_is_refused_before_training(seg_run, cohort, tracking_uri):
    from napari_mrisynth.errors import ModelError
    from napari_mrisynth.training.train import train_segmentation

    card, out = seg_run
    stamp = (card.path / "card.json").stat().st_mtime_ns
    with pytest.raises(ModelError, match="already exists"):
        train_segmentation(cohort, out, id="seg-test", tracking_uri=tracking_uri, **TINY_SEG)
    assert (card.path / "card.json").stat().st_mtime_ns == stamp


def test_init_with_another_label_count_reinitialises_only_the_output_layer(seg_run):
    import torch

    from napari_mrisynth.errors import ModelError
    from napari_mrisynth.models.networks import build_network
    from napari_mrisynth.models.weights import load_weights
    from napari_mrisynth.training.train import load_initial_weights

    base, _ = seg_run
    architecture = {**base.architecture, "args": {**base.architecture["args"], "out_channels": 3}}
    network = build_network(architecture)
    record = load_initial_weights(network, base, 3)
    base_weights, own = load_weights(base), network.state_dict()
    assert record["reinitialised"] and all(3 in own[k].shape for k in record["reinitialised"])
    assert all(k.startswith("model.2.") for k in record["reinitialised"])  # the last up stage
    assert record["loaded"] == len(own) - len(record["reinitialised"])
    for key in set(own) - set(record["reinitialised"]):
        assert torch.equal(own[key], base_weights[key]), key
    wider = {**base.architecture, "args": {**base.architecture["args"], "channels": [8, 16]}}
    with pytest.raises(ModelError, match="do not fit"):
        load_initial_weights(build_network(wider), base, 19)


def test_focal_tversky_loss_matches_its_formula():
    import torch

    from napari_mrisynth.training.modules import FocalTverskyLoss

    target = torch.zeros(1, 1, 2, 2, 2, dtype=torch.long)
    target[0, 0, 0] = 1  # 4 voxels of label 1, 4 of background
    perfect = torch.where(torch.cat([1 - target, target], 1).bool(), 50.0, -50.0)
    loss = FocalTverskyLoss(alpha=0.3, beta=0.7, gamma=0.75, smooth=0.0)
    assert float(loss(perfect, target)) == pytest.approx(0.0, abs=1e-6)
    half = torch.zeros(1, 2, 2, 2, 2)  # p = 0.5 everywhere: TP 2, FP 2, FN 2
    expected = (1 - 2 / (2 + 0.3 * 2 + 0.7 * 2)) ** 0.75
    assert float(loss(half, target)) == pytest.approx(expected, rel=1e-5)


def test_batch_dice_does_not_punish_a_label_one_patch_lacks():
    """Two patches, label 1 only in the first. The network finds it exactly there and lets a
    trace of it (p = 0.2 on 4 of 64 voxels) into the second. Per patch (``dicece``), that
    trace scores the second patch's label-1 Dice at ~0, so the Dice part rises by about 1/4
    (one of two labels in one of two patches); over the batch (``dicece_batch``) it is 0.8
    soft false positives against 16 true voxels."""
    import torch

    from napari_mrisynth.training.modules import segmentation_loss
    from napari_mrisynth.training.train import TrainOptions

    target = torch.zeros(2, 1, 4, 4, 4, dtype=torch.long)
    target[0, 0, :1] = 1  # 16 voxels of label 1 in the first patch only
    exact = torch.where(torch.cat([1 - target, target], 1).bool(), 50.0, -50.0)
    traced = exact.clone()
    p = torch.tensor(0.2)  # background/label-1 logits giving p(label 1) = 0.2
    traced[1, 1, :1, :2, :2] = traced[1, 0, :1, :2, :2] + torch.log(p / (1 - p))

    def rise(name: str) -> float:
        loss = segmentation_loss(name)
        return float(loss(traced, target) - loss(exact, target))

    per_patch, over_batch = rise("dicece"), rise("dicece_batch")
    assert per_patch > 0.24  # the second patch's label-1 Dice goes from 1 to ~0
    assert 0 < over_batch < per_patch / 5
    with pytest.raises(ValueError, match="dicece_batch"):
        segmentation_loss("dice")
    assert TrainOptions().loss == "dicece"


def test_median_frequency_weights_from_label_maps(tmp_path):
    """Counts 600/300/100 voxels of labels 0/1/2 and none of 3 over two maps: frequencies
    0.6/0.3/0.1, median 0.3, weights 0.5/1/3, and the absent label gets the largest."""
    import nibabel as nib

    from napari_mrisynth.training.train import median_frequency_weights

    first = np.zeros(500, np.uint8)
    first[:200] = 1
    second = np.zeros(500, np.uint8)
    second[:100], second[100:200] = 1, 2
    paths = []
    for name, values in (("a", first), ("b", second)):
        paths.append(tmp_path / f"{name}.nii.gz")
        nib.save(nib.Nifti1Image(values.reshape(5, 10, 10), np.eye(4)), paths[-1])
    assert median_frequency_weights(paths, 4) == pytest.approx([0.5, 1.0, 3.0, 3.0])
    with pytest.raises(MrisynthError, match=r"b\.nii\.gz: labels outside 0\.\.1"):
        median_frequency_weights(paths, 2)


def test_label_weights_give_a_rare_label_the_gradient_the_background_takes():
    """One patch, 4 voxels of label 1 in 1,000, the network blind to it (p = 0.01 there).
    Unweighted, the cross-entropy pulls on those 4 voxels' label-1 logit with 1/1000 of the
    mean; weighted by median frequency the pull is hundreds of times stronger, and the
    focal Tversky loss refuses weights it cannot use."""
    import torch

    from napari_mrisynth.training.modules import segmentation_loss

    target = torch.zeros(1, 1, 10, 10, 10, dtype=torch.long)
    target[0, 0, 0, 0, :4] = 1
    frequency = np.array([996, 4]) / 1000
    weights = list(np.median(frequency) / frequency)

    def pull(loss_weights):
        logits = torch.zeros(1, 2, 10, 10, 10)
        logits[:, 1] = float(np.log(0.01 / 0.99))
        logits.requires_grad_(True)
        segmentation_loss("dicece", loss_weights)(logits, target).backward()
        return -float(logits.grad[0, 1][target[0, 0] == 1].sum())

    plain, weighted = pull(None), pull(weights)
    assert plain > 0 and weighted > 100 * plain
    with pytest.raises(ValueError, match="no label weights"):
        segmentation_loss("focal_tversky", [1.0, 2.0])


def test_a_median_frequency_weighted_run_records_its_weights(cohort, tracking_uri, tmp_path):
    from napari_mrisynth.training.train import median_frequency_weights, train_segmentation

    card = train_segmentation(cohort, tmp_path, id="seg-weighted", loss_weights="median-frequency",
                              tracking_uri=tracking_uri, experiment="tests",
                              **{**TINY_SEG, "epochs": 1})  # fmt: skip
    record = card.training["loss_weights"]
    assert record["method"] == "median-frequency"
    labels = sorted((tmp_path / "cache").rglob("*_labels.nii.gz"))
    train = set(card.training["splits"]["train"])
    maps = [p for p in labels if p.name.split("_")[0] in train]
    assert len(maps) == len(train)
    expected = median_frequency_weights(maps, len(record["weights"]))
    assert record["weights"] == pytest.approx(expected, abs=1e-4)
    assert record["weights"][0] < 1 < max(record["weights"])  # background is the commonest
    milder = train_segmentation(cohort, tmp_path, id="seg-sqrt", tracking_uri=tracking_uri,
                                loss_weights="sqrt-median-frequency", experiment="tests",
                                **{**TINY_SEG, "epochs": 1})  # fmt: skip
    assert milder.training["loss_weights"]["weights"] == pytest.approx(np.sqrt(expected), abs=1e-4)
    with pytest.raises(MrisynthError, match="dicece, dicece_batch"):
        train_segmentation(cohort, tmp_path, id="seg-ft", loss="focal_tversky",
                           loss_weights="median-frequency", tracking_uri=tracking_uri,
                           experiment="tests", **TINY_SEG)  # fmt: skip
    with pytest.raises(
        MrisynthError, match="use one of none, median-frequency, sqrt-median-frequency"
    ):
        train_segmentation(cohort, tmp_path, id="seg-x", loss_weights="inverse",
                           tracking_uri=tracking_uri, experiment="tests", **TINY_SEG)  # fmt: skip


# -- classification ------------------------------------------------------------------------
def test_classification_run_reports_auc_with_confidence_interval(cohort, tracking_uri, seg_run):
    from mlflow import MlflowClient

    from napari_mrisynth.training.train import train_classification

    _, out = seg_run  # same cohort, grid and seed: the model-grid cache is shared
    card = train_classification(cohort, out, id="cls-test", tracking_uri=tracking_uri,
                                experiment="tests", **TINY_CLS)  # fmt: skip
    assert [(label.value, label.name) for label in card.labels] == [(0, "control"), (1, "bvFTD")]
    test = card.metrics["test"]
    for name in ("auc", "accuracy", "sensitivity", "specificity"):
        value, (low, high) = test[name]["value"], test[name]["ci95"]
        assert 0.0 <= low <= value <= high <= 1.0, name
    assert len(test["subjects"]) == len(card.training["splits"]["test"]) == 2
    assert card.training["class_weights"] == [1.0, 1.0]  # 2 + 2 training subjects
    client = MlflowClient(tracking_uri=tracking_uri)
    run_id = card.training["mlflow"]["run_id"]
    assert len(client.get_metric_history(run_id, "val/auc")) == card.training["epochs"]
    assert client.get_model_version("cls-test", card.training["mlflow"]["version"])


def test_mixed_precision_needs_a_gpu(cohort, tmp_path):
    from napari_mrisynth.training.train import train_classification

    with pytest.raises(MrisynthError, match="needs a GPU"):
        train_classification(cohort, tmp_path, **{**TINY_CLS, "precision": "16-mixed"})


# -- command line and distributed ----------------------------------------------------------
def _parser():
    import argparse

    from napari_mrisynth.cli.train import register

    parser = argparse.ArgumentParser(prog="mrisynth")
    register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_options_reach_the_training_function(tmp_path):
    from napari_mrisynth.cli.train import options_from_args

    args = _parser().parse_args([
        "train", "segmentation", "--data", "cohort", "--out", str(tmp_path), "--devices", "4",
        "--strategy", "ddp", "--num-nodes", "2", "--loss", "focal_tversky", "--channels", "8",
        "16", "--split", "0.7", "0.15", "0.15", "--init", "seg-head-demo", "--randomize",
        "--loss-weights", "median-frequency", "--calibrate", "--epochs", "0",
    ])  # fmt: skip
    options = options_from_args(args)
    assert options["devices"] == 4 and options["strategy"] == "ddp" and options["num_nodes"] == 2
    assert options["loss"] == "focal_tversky" and options["channels"] == [8, 16]
    assert options["fractions"] == [0.7, 0.15, 0.15] and options["init"] == "seg-head-demo"
    assert options["randomize"] is True and options["loss_weights"] == "median-frequency"
    assert options["calibrate"] is True and options["epochs"] == 0
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "classification", "--data", "c", "--out", "o",
                              "--loss", "dicece"])  # fmt: skip


def test_train_command_needs_neither_torch_nor_lightning_to_build():
    code = (
        "import argparse, sys\n"
        "from napari_mrisynth.cli.train import register\n"
        "parser = argparse.ArgumentParser()\n"
        "register(parser.add_subparsers())\n"
        "print(sorted(m for m in ('torch', 'lightning', 'mlflow', 'monai') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_missing_training_extra_says_how_to_install(monkeypatch, cohort, tmp_path):
    from napari_mrisynth.training.train import train_segmentation

    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    with pytest.raises(ImportError, match=r"pip install 'napari-mrisynth\[train\]'"):
        train_segmentation(cohort, tmp_path)


def test_ddp_two_cpu_processes(cohort, seg_run, tmp_path):
    """Lightning's ddp strategy re-runs this script as rank 1; gloo joins the two."""
    script = tmp_path / "train_ddp.py"
    script.write_text(
        textwrap.dedent("""
        import argparse, json, sys
        from napari_mrisynth.cli.train import options_from_args, register
        from napari_mrisynth.training.train import train_segmentation

        parser = argparse.ArgumentParser()
        register(parser.add_subparsers(dest="command"))
        args = parser.parse_args(sys.argv[1:])
        card = train_segmentation(args.data, args.out, **options_from_args(args))
        if card is not None:
            print("CARD", json.dumps(card.training))
    """)
    )
    _, out = seg_run  # shares the model-grid cache
    command = [sys.executable, str(script), "train", "segmentation", "--data", str(cohort),
               "--out", str(out), "--id", "seg-ddp", "--architecture", "UNet", "--channels", "4",
               "8", "--spacing", str(GRID), "--patch-size", "16", "--patches-per-volume", "2",
               "--batch-size", "1", "--epochs", "2", "--accelerator", "cpu", "--devices", "2",
               "--strategy", "ddp", "--no-progress", "--tracking-uri",
               f"sqlite:///{tmp_path / 'mlflow.db'}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("CARD ")]
    assert len(printed) == 1  # rank 0 alone writes the model
    training = json.loads(printed[0][5:])
    assert training["world_size"] == 2 and training["strategy"] == "DDPStrategy"
    # 4 training subjects x 2 patches, batch 1, 2 epochs: 8 batches on each rank
    assert training["batches_per_rank"] == [8, 8]
    assert (out / "seg-ddp-1.0.0" / "card.json").exists()
    assert not [p for p in out.iterdir() if p.name.startswith(".seg-ddp")]  # no partial copy
    from mlflow import MlflowClient

    run = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}").get_run(
        training["mlflow"]["run_id"]
    )
    assert run.data.params["world_size"] == "2"
    assert run.data.params["batches_per_rank"] == "[8, 8]"


def test_a_calibrated_run_fits_offsets_on_validation_and_inference_applies_them(
    seg_run, cohort, tracking_uri, tmp_path
):
    import dataclasses

    from napari_mrisynth.errors import ModelError
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.models.inference import segment
    from napari_mrisynth.models.weights import load_weights
    from napari_mrisynth.training.data import subject_image
    from napari_mrisynth.training.train import train_segmentation

    base, out = seg_run
    # --epochs 0: the base's weights, calibrated on the base's validation subjects
    card = train_segmentation(cohort, out, id="seg-test-calibrated", init="seg-test@1.0.0",
                              calibrate=True, tracking_uri=tracking_uri, experiment="tests",
                              **{**TINY_SEG, "epochs": 0})  # fmt: skip
    import torch

    tuned, original = load_weights(card), load_weights(base)
    assert all(torch.equal(tuned[k], original[k]) for k in original)
    assert card.training["splits"] == base.training["splits"]
    record = card.training["calibration"]
    assert record["subjects"] == base.training["splits"]["val"]
    assert record["val_dice_mean_after"] >= record["val_dice_mean_before"]
    offsets = card.inference["logit_offsets"]
    assert len(offsets) == card.out_channels and offsets[0] == 0.0
    assert all(abs(v) <= 1.5 for v in offsets)
    assert "test" in card.metrics and card.title.endswith(", calibrated label offsets")
    # inference adds the card's offsets: a large one for one label takes every voxel
    scan = load_volume(subject_image(cohort, card.training["splits"]["test"][0]))
    label = card.brain_labels[0]
    forced = [0.0] * card.out_channels
    forced[label] = 100.0
    heavy = dataclasses.replace(
        card, version="9.0.0", inference={**card.inference, "logit_offsets": forced}
    )
    labels = np.asarray(segment(scan, heavy, device="cpu").labels.data)
    plain = np.asarray(segment(scan, base, device="cpu").labels.data)
    inside = plain > 0  # the model box (outside it the labels are background either way)
    assert inside.any() and np.all(labels[inside] == label)
    wrong = dataclasses.replace(
        card, version="9.0.1", inference={**card.inference, "logit_offsets": [0.0, 1.0]}
    )
    with pytest.raises(ModelError, match="2 logit offsets in its card for"):
        segment(scan, wrong, device="cpu")
    with pytest.raises(MrisynthError, match="give --init"):
        train_segmentation(cohort, tmp_path, id="seg-none", tracking_uri=tracking_uri,
                           experiment="tests", **{**TINY_SEG, "epochs": 0})  # fmt: skip
    with pytest.raises(MrisynthError, match="segmentation only"):
        from napari_mrisynth.training.train import train_classification

        train_classification(cohort, tmp_path, id="cls-cal", calibrate=True,
                             tracking_uri=tracking_uri, experiment="tests", **TINY_CLS)  # fmt: skip
