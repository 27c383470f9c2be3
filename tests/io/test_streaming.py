"""Streaming dataset: every item once per epoch, the same patches whatever the workers,
image and label cut at the same place, one volume per worker at a time."""

import gc
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from napari_mrisynth import GeometryError, Volume
from napari_mrisynth.io.dicom_write import write_dicom_series
from napari_mrisynth.io.streaming import SeriesPatchDataset, StreamItem, shard
from napari_mrisynth.volume import reorient_to_patient_axes, volume_to_nifti

SHAPE = (16, 20, 24)  # z, y, x
N_ITEMS = 5  # odd, so workers and ranks get unequal shares
LABEL_CLASSES = 7


def _image_volume(index: int) -> Volume:
    """Voxel value = flat (z, y, x) index + 100 * item: a patch tells where it was cut."""
    data = (np.arange(np.prod(SHAPE)).reshape(SHAPE) + 100 * index).astype(np.int16)
    direction = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # sagittal
    return Volume(data, (0.9, 1.1, 1.3), (-40.0 + index, 12.5, 30.0), direction)


def _label_of(image_values):
    return image_values % LABEL_CLASSES


@pytest.fixture(scope="session")
def cohort(tmp_path_factory) -> list[dict]:
    """DICOM images with NIfTI label maps (label = image % 7) and a diagnosis each."""
    root = tmp_path_factory.mktemp("stream")
    items = []
    for i in range(N_ITEMS):
        image = _image_volume(i)
        write_dicom_series(
            image, root / f"sub-{i}", series_number=i + 1, seed=i, vendor_header=False
        )
        label_path = root / f"sub-{i}_label.nii.gz"
        labels = image.with_data(_label_of(image.data).astype(np.uint8))
        nib.save(volume_to_nifti(labels), label_path)
        items.append(
            {"image": root / f"sub-{i}", "label": label_path, "diagnosis": ["CN", "bvFTD"][i % 2]}
        )
    return items


def _collect(dataset, num_workers=0, batch_size=None):
    return list(DataLoader(dataset, batch_size=batch_size, num_workers=num_workers))


def _key(sample):
    """What identifies a sample: item, patch position and content."""
    meta = sample["meta"]
    return (
        int(meta["index"]),
        tuple(meta["patch_start"].tolist()),
        float(sample["image"].sum()),
    )


def test_each_item_once_per_epoch_same_patches_any_workers(cohort):
    runs = {}
    for workers in (0, 1, 2):
        dataset = SeriesPatchDataset(cohort, patch_size=(8, 8, 8), patches_per_volume=3, seed=7)
        runs[workers] = [_key(s) for s in _collect(dataset, workers)]
    indices = sorted(k[0] for k in runs[0])
    assert indices == sorted(list(range(N_ITEMS)) * 3)
    assert runs[1] == runs[0]
    assert sorted(runs[2]) == sorted(runs[0])
    assert len(dataset) == N_ITEMS * 3
    # The loader takes batches from its workers in turn: with one item per batch, the
    # order does not change either.
    orders = [
        [b["meta"]["index"].tolist() for b in _collect(dataset, workers, batch_size=3)]
        for workers in (0, 2)
    ]
    assert orders[0] == orders[1]


def test_epochs_differ_and_repeat(cohort):
    dataset = SeriesPatchDataset(cohort, patch_size=8, patches_per_volume=2, seed=3)
    first = [_key(s) for s in _collect(dataset)]
    dataset.set_epoch(1)
    second = [_key(s) for s in _collect(dataset)]
    dataset.set_epoch(0)
    again = [_key(s) for s in _collect(dataset)]
    assert again == first
    assert second != first
    assert {k[0] for k in second} == set(range(N_ITEMS))
    other_seed = SeriesPatchDataset(cohort, patch_size=8, patches_per_volume=2, seed=4)
    assert [_key(s) for s in _collect(other_seed)] != first


def test_set_epoch_reaches_persistent_workers(cohort):
    dataset = SeriesPatchDataset(cohort, patch_size=8, seed=5)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in range(2):
        dataset.set_epoch(epoch)
        epochs.append([_key(s) for s in loader])
    reference = SeriesPatchDataset(cohort, patch_size=8, seed=5)
    reference.set_epoch(1)
    assert epochs[1] == [_key(s) for s in _collect(reference)]
    assert epochs[1] != epochs[0]


def test_image_and_label_patches_cut_at_the_same_place(cohort):
    dataset = SeriesPatchDataset(cohort, patch_size=(6, 7, 9), patches_per_volume=4, seed=1)
    for sample in _collect(dataset, 2):
        image, label, meta = sample["image"], sample["label"], sample["meta"]
        assert image.shape == label.shape == (1, 6, 7, 9)
        assert image.dtype == torch.float32 and label.dtype == torch.int64
        z, y, x = meta["patch_start"].tolist()
        expected = np.arange(np.prod(SHAPE)).reshape(SHAPE)[z : z + 6, y : y + 7, x : x + 9]
        expected = expected + 100 * int(meta["index"])
        np.testing.assert_array_equal(image[0].numpy(), expected)
        np.testing.assert_array_equal(label[0].numpy(), _label_of(expected))
        assert meta["diagnosis"] == ["CN", "bvFTD"][int(meta["index"]) % 2]


def test_patch_affine_places_the_patch_in_patient_space(cohort):
    dataset = SeriesPatchDataset(cohort, patch_size=8, seed=2)
    sample = next(iter(dataset))
    source = _image_volume(int(sample["meta"]["index"]))
    z, y, x = sample["meta"]["patch_start"].tolist()
    patch_affine = sample["meta"]["affine"].numpy()
    np.testing.assert_allclose(patch_affine[:3, 3], source.index_to_lps([x, y, z]), atol=1e-4)
    np.testing.assert_allclose(patch_affine[:3, :3], source.affine[:3, :3], atol=1e-5)


def test_patch_larger_than_volume_is_padded(cohort):
    dataset = SeriesPatchDataset(
        cohort[:1], patch_size=(20, 20, 30), patches_per_volume=4, pad_value=-1, seed=0
    )
    for sample in dataset:
        z, y, x = sample["meta"]["patch_start"].tolist()
        assert -4 <= z <= 0 and y == 0 and -6 <= x <= 0
        image = sample["image"][0].numpy()
        inside = image[-z : -z + SHAPE[0], :, -x : -x + SHAPE[2]]
        np.testing.assert_array_equal(inside, np.arange(np.prod(SHAPE)).reshape(SHAPE))
        assert (image == -1).sum() == image.size - np.prod(SHAPE)
        assert (sample["label"] != 0).sum() == (_label_of(inside) != 0).sum()


def test_volume_mode_yields_whole_volumes(cohort):
    dataset = SeriesPatchDataset(cohort, mode="volume", seed=0)
    samples = _collect(dataset, 2)
    assert sorted(int(s["meta"]["index"]) for s in samples) == list(range(N_ITEMS))
    for sample in samples:
        index = int(sample["meta"]["index"])
        source = _image_volume(index)
        assert sample["image"].shape == (1, *SHAPE)
        np.testing.assert_array_equal(sample["image"][0].numpy(), source.data)
        np.testing.assert_array_equal(sample["label"][0].numpy(), _label_of(source.data))
        np.testing.assert_allclose(sample["meta"]["affine"].numpy(), source.affine, atol=1e-4)


def test_ranks_see_disjoint_data_whatever_their_workers(cohort):
    per_rank = {}
    for rank in range(2):
        seen = []
        for workers in (0, 2):
            dataset = SeriesPatchDataset(cohort, patch_size=8, seed=9, rank=rank, world_size=2)
            seen.append(sorted(_key(s) for s in _collect(dataset, workers)))
            assert len(dataset) == len(seen[-1])
        assert seen[0] == seen[1]
        per_rank[rank] = {k[0] for k in seen[0]}
    assert per_rank[0].isdisjoint(per_rank[1])
    assert per_rank[0] | per_rank[1] == set(range(N_ITEMS))
    assert sorted(map(len, per_rank.values())) == [2, 3]
    padded = [
        SeriesPatchDataset(cohort, seed=9, rank=r, world_size=2, even_ranks=True) for r in (0, 1)
    ]
    assert [len(d) for d in padded] == [3, 3]
    assert set(padded[0].rank_items()) | set(padded[1].rank_items()) == set(range(N_ITEMS))


def test_shard_splits_ranks_before_workers():
    order = list(range(11))
    shards = [
        shard(order, rank=r, world_size=2, worker=w, num_workers=3)
        for r in range(2)
        for w in range(3)
    ]
    assert sorted(sum(shards, [])) == order
    assert sorted(sum(shards[:3], [])) == order[0::2]
    with pytest.raises(ValueError, match="rank 2 of 2"):
        shard(order, rank=2, world_size=2, worker=0, num_workers=1)


class _CountResidentVolumes:
    """A transform that records how many `Volume`s read from ``root`` are alive in its process.

    Only volumes from this cohort count: other tests' session fixtures hold volumes too.
    """

    def __init__(self, root):
        self.root = str(root)

    def __call__(self, sample):
        gc.collect(0)  # volumes form no cycles: refcounts free them, a young pass suffices
        sample["resident"] = sum(
            isinstance(o, Volume) and str(o.metadata.get("source", "")).startswith(self.root)
            for o in gc.get_objects()
        )
        return sample


@pytest.mark.parametrize("mode", ["patch", "volume"])
def test_one_item_resident_per_worker(cohort, mode):
    dataset = SeriesPatchDataset(
        cohort[:3],
        mode=mode,
        patch_size=8,
        patches_per_volume=2,
        transform=_CountResidentVolumes(cohort[0]["image"].parent),
    )
    for workers in (0, 2):
        resident = [int(s["resident"]) for s in _collect(dataset, workers)]
        # an image and its label while patches are cut; nothing once the last one is
        assert max(resident) <= 2
        if mode == "patch":
            assert max(resident) >= 1  # the counter sees the volume being cut
        if mode == "volume":
            assert max(resident) == 0


def test_monai_transforms_are_applied_deterministically(cohort):
    from monai.transforms import Compose, RandFlipd, RandRotate90d

    def run(workers):
        transform = Compose(
            [
                RandFlipd(keys=["image", "label"], prob=0.5, spatial_axis=2),
                RandRotate90d(keys=["image", "label"], prob=0.5, spatial_axes=(1, 2)),
            ]
        )
        dataset = SeriesPatchDataset(
            cohort, patch_size=(4, 8, 8), patches_per_volume=3, transform=transform, seed=11
        )
        return _collect(dataset, workers, batch_size=3)

    batches = run(0)
    assert [b["image"].shape for b in batches] == [(3, 1, 4, 8, 8)] * N_ITEMS
    changed = 0
    for batch in batches:
        np.testing.assert_array_equal(batch["label"].numpy(), _label_of(batch["image"].numpy()))
        for image, start, index in zip(
            batch["image"], batch["meta"]["patch_start"], batch["meta"]["index"], strict=True
        ):
            z, y, x = start.tolist()
            cut = np.arange(np.prod(SHAPE)).reshape(SHAPE)[z : z + 4, y : y + 8, x : x + 8]
            changed += not np.array_equal(image[0].numpy(), cut + 100 * int(index))
    assert 0 < changed < 3 * N_ITEMS
    for batch, other in zip(batches, run(2), strict=True):
        assert torch.equal(torch.as_tensor(batch["image"]), torch.as_tensor(other["image"]))


def test_class_labels_and_metadata_collate(cohort):
    items = [
        StreamItem(Path(c["image"]), label=i % 2, meta={"diagnosis": c["diagnosis"]})
        for i, c in enumerate(cohort)
    ]
    batches = _collect(SeriesPatchDataset(items, patch_size=8, shuffle=False), 0, batch_size=2)
    assert batches[0]["label"].tolist() == [0, 1]
    assert batches[0]["meta"]["diagnosis"] == ["CN", "bvFTD"]
    assert batches[0]["meta"]["index"].tolist() == [0, 1]
    assert batches[0]["meta"]["affine"].shape == (2, 4, 4)


def test_foreground_sampling_centres_patches_on_labels(cohort, tmp_path):
    label = np.zeros(SHAPE, np.uint8)
    label[1:3, 2:4, 20:22] = 1
    label[13, 17, 2] = 2
    image = _image_volume(0)
    label_path = tmp_path / "sparse.nii.gz"
    nib.save(volume_to_nifti(image.with_data(label)), label_path)
    item = {"image": cohort[0]["image"], "label": label_path}

    def hits(value, **kwargs):
        dataset = SeriesPatchDataset([item], patch_size=6, patches_per_volume=20, **kwargs)
        return [bool((s["label"] == value).any()) for s in dataset]

    assert all(hits(1, foreground_ratio=1.0, class_weights={1: 1.0}))
    assert all(hits(2, foreground_ratio=1.0, class_weights={2: 1.0}))
    assert all(
        h1 or h2
        for h1, h2 in zip(hits(1, foreground_ratio=1.0), hits(2, foreground_ratio=1.0), strict=True)
    )
    assert not all(hits(1, foreground_ratio=0.0))
    with pytest.raises(ValueError, match="label map"):
        SeriesPatchDataset([{"image": item["image"], "label": 3}], foreground_ratio=0.5)


def test_label_stored_in_another_axis_order_is_reordered(cohort, tmp_path):
    image = _image_volume(1)
    labels = reorient_to_patient_axes(image.with_data(_label_of(image.data).astype(np.uint8)))
    assert labels.shape != image.shape  # the same grid, indexed in another order
    path = tmp_path / "lps_label.nii.gz"
    nib.save(volume_to_nifti(labels), path)
    dataset = SeriesPatchDataset([{"image": cohort[1]["image"], "label": path}], mode="volume")
    sample = next(iter(dataset))
    np.testing.assert_array_equal(sample["label"][0].numpy(), _label_of(image.data))


def test_label_on_another_grid_is_refused(cohort, tmp_path):
    image = _image_volume(0)
    shifted = Volume(image.data, image.spacing, image.origin + [0.0, 0.0, 2.0], image.direction)
    smaller = Volume(image.data[:-1], image.spacing, image.origin, image.direction)
    for name, label in (("shifted", shifted), ("smaller", smaller)):
        path = tmp_path / f"{name}.nii.gz"
        nib.save(volume_to_nifti(label.with_data(np.zeros(label.shape, np.uint8))), path)
        dataset = SeriesPatchDataset([{"image": cohort[0]["image"], "label": path}])
        with pytest.raises(GeometryError, match="does not match image"):
            next(iter(dataset))


def test_nifti_images_stream_too(cohort, tmp_path):
    path = tmp_path / "image.nii.gz"
    nib.save(volume_to_nifti(_image_volume(2)), path)
    sample = next(iter(SeriesPatchDataset([path], mode="volume")))
    np.testing.assert_array_equal(sample["image"][0].numpy(), _image_volume(2).data)
    assert "label" not in sample


def _rank_main(rank, world_size, store, items, out):
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=world_size
    )
    try:
        dataset = SeriesPatchDataset(items, patch_size=8, seed=4)
        indices = [int(s["meta"]["index"]) for s in DataLoader(dataset, batch_size=None)]
        seen = {"rank": dataset.rank, "world_size": dataset.world_size, "indices": indices}
        (out / f"rank{rank}.json").write_text(json.dumps(seen))
    finally:
        torch.distributed.destroy_process_group()


def test_ranks_of_an_initialized_process_group_split_the_items(cohort, tmp_path):
    import torch.multiprocessing as mp

    mp.start_processes(
        _rank_main,
        args=(2, tmp_path / "store", cohort, tmp_path),
        nprocs=2,
        start_method="fork",
    )
    seen = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert [(s["rank"], s["world_size"]) for s in seen] == [(0, 2), (1, 2)]
    assert sorted(seen[0]["indices"] + seen[1]["indices"]) == list(range(N_ITEMS))
