"""The model registry: saving, finding, ranking, verifying and loading models offline."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from napari_mrisynth import cli
from napari_mrisynth.errors import ModelError
from napari_mrisynth.models import registry
from napari_mrisynth.models.card import read_card
from napari_mrisynth.models.networks import build_network, count_parameters
from napari_mrisynth.models.registry import (
    ModelCardWarning,
    default_model,
    find_model,
    list_models,
    model_location,
    model_roots,
    search_models,
    user_models_dir,
    version_key,
)
from napari_mrisynth.models.saving import save_model
from napari_mrisynth.models.weights import load_model, load_weights, verify_weights
from tests.support import tiny_models

SEG_METRICS = {"test": {"dice_mean": {"value": 0.81, "ci95": [0.79, 0.83]}}}


def _seeded_state(card, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_network(card.architecture).state_dict()


def _isolate(monkeypatch, tmp_path, env_roots=()):
    """Point every registry root at folders under tmp_path; return (user, bundled)."""
    user_data, bundled = tmp_path / "data", tmp_path / "bundled"
    monkeypatch.setenv("MRISYNTH_DATA_DIR", str(user_data))
    monkeypatch.setenv(registry.ENV_VAR, os.pathsep.join(str(p) for p in env_roots))
    monkeypatch.setattr(registry, "BUNDLED_DIR", bundled)
    return user_data / "models", bundled


def _flip_byte_in_tensor_data(path: Path) -> None:
    data = bytearray(path.read_bytes())
    (header_length,) = struct.unpack("<Q", data[:8])
    data[8 + header_length + 5] ^= 0xFF  # inside the first tensor, past the JSON header
    path.write_bytes(bytes(data))


# -- saving --------------------------------------------------------------------------------
def test_save_writes_weights_then_card_with_checksum_and_provenance(tmp_path):
    card = tiny_models.make_tiny_model(tmp_path, "segmentation", metrics=SEG_METRICS)
    folder = tmp_path / "tiny-seg-test-1.0.0"
    assert card.path == folder
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temp leftovers
    assert sorted(p.name for p in folder.iterdir()) == ["card.json", "model.safetensors"]

    weights = folder / "model.safetensors"
    raw = weights.read_bytes()
    expected_network = build_network(card.architecture)
    assert card.weights == {
        "file": "model.safetensors",
        "sha256": hashlib.sha256(raw).hexdigest(),
        "parameters": count_parameters(expected_network),
        "bytes": len(raw),
    }
    assert card.weights["parameters"] == 7161  # UNet (4, 8), 19 outputs, no residual units
    assert set(card.software) == {"napari_mrisynth", "torch", "monai"}
    assert card.software["torch"] == torch.__version__
    assert datetime.fromisoformat(card.created).tzinfo is not None

    on_disk = read_card(folder)
    assert on_disk == card  # every serialised field round-trips
    assert on_disk.label_colors[2] == (220, 20, 10)  # orbitomedial frontal from cohort.LABELS
    with safe_open(str(weights), framework="pt") as stream:
        assert stream.metadata() == {"id": "tiny-seg-test", "version": "1.0.0"}
    tensors = load_weights(on_disk)
    reference = _seeded_state(card, seed=0)
    assert tensors.keys() == reference.keys()
    assert all(torch.equal(tensors[k], reference[k]) for k in reference)


def test_save_returns_a_copy_and_keeps_an_existing_created_time(tmp_path):
    card = tiny_models.tiny_card("classification", created="2025-01-02T03:04:05+00:00")
    saved = save_model(card, _seeded_state(card), tmp_path)
    assert card.weights == {} and card.path is None  # the argument is not changed
    assert saved.created == "2025-01-02T03:04:05+00:00"
    assert saved.weights["parameters"] == count_parameters(build_network(card.architecture))


def test_save_refuses_an_existing_version_unless_overwrite(tmp_path):
    first = tiny_models.make_tiny_model(tmp_path, "classification", seed=1)
    with pytest.raises(ModelError, match="tiny-cla-test@1.0.0 already exists"):
        tiny_models.make_tiny_model(tmp_path, "classification", seed=2)
    assert read_card(first.path).weights["sha256"] == first.weights["sha256"]

    second = save_model(
        tiny_models.tiny_card("classification"),
        _seeded_state(first, seed=2),
        tmp_path,
        overwrite=True,
    )
    assert second.weights["sha256"] != first.weights["sha256"]
    assert read_card(second.path).weights["sha256"] == second.weights["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-cla-test-1.0.0"]


def test_save_refuses_weights_that_do_not_fit_the_card(tmp_path):
    card = tiny_models.tiny_card("segmentation")
    state = dict(_seeded_state(card))
    dropped = next(iter(state))
    del state[dropped]
    with pytest.raises(ModelError, match=f"1 missing from the weights \\({dropped}\\)"):
        save_model(card, state, tmp_path / "root")
    assert not (tmp_path / "root").exists()

    wrong_outputs = card.replace(
        architecture={**card.architecture, "args": {**card.architecture["args"], "out_channels": 5}}
    )
    with pytest.raises(ModelError, match="5 outputs but the card's labels need 19"):
        save_model(wrong_outputs, state, tmp_path / "root")


def test_save_makes_tensors_contiguous_and_refuses_non_tensors(tmp_path):
    card = tiny_models.tiny_card("segmentation")
    state = dict(_seeded_state(card))
    key = next(k for k, v in state.items() if v.ndim == 5)
    transposed = state[key].transpose(3, 4).contiguous().transpose(3, 4)  # same shape
    assert not transposed.is_contiguous() and torch.equal(transposed, state[key])
    saved = save_model(card, {**state, key: transposed}, tmp_path / "a")
    assert torch.equal(load_weights(saved)[key], state[key])

    with pytest.raises(ModelError, match="state dict entry 'extra' is not a tensor"):
        save_model(card, {**state, "extra": [1.0]}, tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_save_stores_tied_weights_as_separate_tensors(tmp_path):
    card = tiny_models.tiny_card("segmentation")
    state = dict(_seeded_state(card))
    by_shape: dict[tuple, list[str]] = {}
    for key, tensor in state.items():
        by_shape.setdefault(tuple(tensor.shape), []).append(key)
    first, second = next(keys for keys in by_shape.values() if len(keys) > 1)[:2]
    state[second] = state[first]  # one tensor under two names, as tied weights are
    saved = save_model(card, state, tmp_path)
    loaded = load_weights(saved)
    assert torch.equal(loaded[first], loaded[second])


# -- finding -------------------------------------------------------------------------------
def test_semantic_version_order(tmp_path):
    versions = ["1.9.0", "1.10.0", "1.10.0-rc.2", "1.10.0-rc.10", "0.2.0", "1.10.0.dev1"]
    assert sorted(versions, key=version_key) == [
        "0.2.0",
        "1.9.0",
        "1.10.0.dev1",
        "1.10.0-rc.2",
        "1.10.0-rc.10",
        "1.10.0",
    ]
    for version in ("1.9.0", "1.10.0", "1.10.0-rc.2"):
        tiny_models.make_tiny_model(tmp_path, "classification", id="cls", version=version)
    assert find_model("cls", roots=[tmp_path]).version == "1.10.0"
    assert find_model("cls@1.9.0", roots=[tmp_path]).version == "1.9.0"
    assert [c.version for c in list_models(roots=[tmp_path])] == ["1.10.0", "1.10.0-rc.2", "1.9.0"]


def test_unknown_models_and_wrong_tasks_are_named(tmp_path):
    tiny_models.make_tiny_model(tmp_path, "segmentation", id="seg-a")
    tiny_models.make_tiny_model(tmp_path, "segmentation", id="seg-b", version="2.0.0")
    tiny_models.make_tiny_model(tmp_path, "classification", id="cls-a")
    roots = [tmp_path]
    with pytest.raises(ModelError) as info:
        find_model("seg-c", task="segmentation", roots=roots)
    message = str(info.value)
    assert "unknown model 'seg-c'" in message
    assert "available segmentation models: seg-a, seg-b" in message
    assert "cls-a" not in message and str(tmp_path) in message
    with pytest.raises(ModelError, match="model cls-a is a classification model, not segmentation"):
        find_model("cls-a", task="segmentation", roots=roots)
    with pytest.raises(ModelError, match=r"model seg-b has no version 1.0.0 \(found: 2.0.0\)"):
        find_model("seg-b@1.0.0", roots=roots)
    by_folder = find_model(str(tmp_path / "seg-b-2.0.0"), task="segmentation")
    assert by_folder.ref == "seg-b@2.0.0" and by_folder.path == tmp_path / "seg-b-2.0.0"
    with pytest.raises(ModelError, match=r"cls-a@1.0.0 \(.*cls-a-1.0.0\) is a classification"):
        find_model(f"{tmp_path}/cls-a-1.0.0", task="segmentation")
    with pytest.raises(ModelError, match=f"{tmp_path / 'nowhere' / 'card.json'}: no model card"):
        find_model(str(tmp_path / "nowhere"))
    with pytest.raises(ModelError, match="use ID or ID@VERSION"):
        find_model("seg-b@", roots=roots)
    with pytest.raises(ModelError, match="unknown task 'segment'"):
        list_models("segment", roots=roots)


def test_roots_from_environment_user_folder_and_package(tmp_path, monkeypatch):
    env_a, env_b = tmp_path / "env-a", tmp_path / "env-b"
    user, bundled = _isolate(monkeypatch, tmp_path, [env_a, env_b])
    assert model_roots() == [("env", env_a), ("env", env_b), ("user", user), ("bundled", bundled)]
    assert user == tmp_path / "data" / "models"

    # The same id@version in three places: the first root wins, whatever its contents.
    for root, seed in ((bundled, 1), (user, 2), (env_b, 3)):
        tiny_models.make_tiny_model(root, "segmentation", id="shared", seed=seed)
    tiny_models.make_tiny_model(user, "segmentation", id="shared", version="0.9.0")
    tiny_models.make_tiny_model(bundled, "classification", id="demo-cls")
    env_copy = read_card(env_b / "shared-1.0.0")

    found = find_model("shared@1.0.0")
    assert found.path == env_b / "shared-1.0.0"
    assert found.weights["sha256"] == env_copy.weights["sha256"]
    assert model_location(found) == "env"
    listed = {c.ref: model_location(c) for c in list_models()}
    assert listed == {"shared@1.0.0": "env", "shared@0.9.0": "user", "demo-cls@1.0.0": "bundled"}

    monkeypatch.setenv(registry.ENV_VAR, "")  # without the env folders the user copy wins
    assert find_model("shared").path == user / "shared-1.0.0"
    shutil.rmtree(user)
    assert find_model("shared").path == bundled / "shared-1.0.0"


def test_user_models_dir_follows_the_platform_conventions(tmp_path, monkeypatch):
    monkeypatch.setenv("MRISYNTH_DATA_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert user_models_dir() == tmp_path / "mine" / "models"
    monkeypatch.delenv("MRISYNTH_DATA_DIR")
    assert user_models_dir() == tmp_path / "xdg" / "napari-mrisynth" / "models"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    if sys.platform.startswith("linux"):
        expected = tmp_path / "home" / ".local" / "share" / "napari-mrisynth" / "models"
        assert user_models_dir() == expected


def test_unreadable_cards_are_skipped_with_a_warning_naming_the_file(tmp_path):
    good = tiny_models.make_tiny_model(tmp_path, "segmentation")
    broken = tmp_path / "broken-1.0.0"
    broken.mkdir()
    (broken / "card.json").write_text("{not json", encoding="utf-8")
    incomplete = tmp_path / "incomplete-1.0.0"
    shutil.copytree(good.path, incomplete)
    data = json.loads((incomplete / "card.json").read_text())
    del data["architecture"]
    (incomplete / "card.json").write_text(json.dumps(data))
    bad_id = tmp_path / "bad-id"
    shutil.copytree(good.path, bad_id)
    (bad_id / "card.json").write_text(json.dumps({**data, "id": "Bad Id", "architecture": {}}))
    twin = tmp_path / "twin"
    shutil.copytree(good.path, twin)  # the same id@version twice in one root
    (tmp_path / "no-card").mkdir()  # a folder without card.json is simply not a model
    (tmp_path / ".hidden-1.0.0.partial").mkdir()
    shutil.copy(good.path / "card.json", tmp_path / ".hidden-1.0.0.partial" / "card.json")

    with pytest.warns(ModelCardWarning) as caught:
        cards = list_models(roots=[tmp_path])
    assert [c.ref for c in cards] == ["tiny-seg-test@1.0.0"]
    messages = sorted(str(w.message) for w in caught)
    assert len(messages) == 4
    assert any(str(broken / "card.json") in m and "unreadable model card" in m for m in messages)
    assert any(
        str(incomplete / "card.json") in m and "not a valid model card" in m and "architecture" in m
        for m in messages
    )
    assert any(str(twin / "card.json") in m and "is also in" in m for m in messages)
    assert any(f"{bad_id / 'card.json'}: model id 'Bad Id'" in m for m in messages)


# -- searching and ranking -----------------------------------------------------------------
@pytest.fixture(scope="module")
def library(tmp_path_factory):
    """Five models: three segmentation, two classification, with and without metrics."""
    root = tmp_path_factory.mktemp("library")
    make = tiny_models.make_tiny_model
    make(
        root,
        "segmentation",
        id="seg-fast",
        title="Fast head segmentation",
        metrics={"test": {"dice_mean": 0.70, "dice": {"insula_gm": 0.55}}},
    )
    make(
        root,
        "segmentation",
        id="seg-accurate",
        title="Accurate HEAD segmentation",
        metrics={"test": {"dice_mean": {"value": 0.86}, "dice": {"insula_gm": 0.80}}},
    )
    make(root, "segmentation", id="seg-nometric", description="no test metrics yet")
    make(
        root,
        "classification",
        id="cls-good",
        metrics={"test": {"auc": {"value": 0.91, "ci95": [0.85, 0.96]}}},
    )
    make(
        root,
        "classification",
        id="cls-fair",
        description="Frontotemporal screening",
        metrics={"test": {"auc": {"value": 0.74}}},
        training={"default": True},
    )
    return root


def test_search_by_text_and_task(library):
    def ids(**kwargs):
        return [c.id for c in search_models(roots=[library], **kwargs)]

    assert ids() == ["cls-fair", "cls-good", "seg-accurate", "seg-fast", "seg-nometric"]
    assert ids(query="head seg") == ["seg-accurate", "seg-fast"]  # titles, any case
    assert ids(query="FRONTOTEMPORAL") == ["cls-fair"]  # description
    assert ids(query="insula_gm") == ["seg-accurate", "seg-fast", "seg-nometric"]  # labels
    assert ids(query="bvftd") == ["cls-fair", "cls-good"]  # class names
    assert ids(query="seg", task="classification") == []
    assert ids(query="nothing like this") == []


def test_rank_by_metric_puts_models_without_it_last(library):
    def ranked(**kwargs):
        return [c.id for c in search_models(roots=[library], **kwargs)]

    assert ranked(task="segmentation", rank_by="dice_mean") == [
        "seg-accurate",
        "seg-fast",
        "seg-nometric",
    ]
    assert ranked(task="segmentation", rank_by="dice_mean", descending=False) == [
        "seg-fast",
        "seg-accurate",
        "seg-nometric",
    ]
    assert ranked(rank_by="auc") == [
        "cls-good",
        "cls-fair",
        "seg-accurate",
        "seg-fast",
        "seg-nometric",
    ]
    assert ranked(rank_by="dice.insula_gm", descending=False)[:2] == ["seg-fast", "seg-accurate"]


def test_default_model_prefers_the_flagged_card_then_the_best_metric(library, tmp_path):
    # cls-fair is flagged default although cls-good has the higher AUC.
    assert default_model("classification", roots=[library]).id == "cls-fair"
    assert default_model("segmentation", roots=[library]).id == "seg-accurate"
    shutil.copytree(library / "cls-good-1.0.0", tmp_path / "cls-good-1.0.0")
    assert default_model("classification", roots=[tmp_path]).id == "cls-good"
    with pytest.raises(ModelError) as info:
        default_model("segmentation", roots=[tmp_path])
    assert "no segmentation model found" in str(info.value)
    assert "`mrisynth train segmentation --data COHORT --out " in str(info.value)


# -- verifying and loading -----------------------------------------------------------------
def test_changed_weights_are_refused_with_both_checksums(tmp_path):
    card = tiny_models.make_tiny_model(tmp_path, "segmentation")
    weights = card.path / "model.safetensors"
    _flip_byte_in_tensor_data(weights)
    actual = hashlib.sha256(weights.read_bytes()).hexdigest()
    expected = card.weights["sha256"]
    message = (
        f"{weights}: SHA-256 {actual} does not match the card's {expected}: the weights were "
        "changed or corrupted"
    )
    for attempt in (load_weights, verify_weights):
        with pytest.raises(ModelError) as info:
            attempt(card)
        assert str(info.value) == message
    with pytest.raises(ModelError, match="does not match the card's"):
        load_model("tiny-seg-test", "segmentation", device="cpu", roots=[tmp_path])
    # Unverified reading still works on a valid file, and sees the changed value.
    changed = load_weights(card, verify=False)
    reference = _seeded_state(card)
    assert sum(not torch.equal(changed[k], reference[k]) for k in reference) == 1

    weights.unlink()
    with pytest.raises(ModelError, match="weights file of model tiny-seg-test@1.0.0 is missing"):
        load_weights(card)


class _Payload:
    """A pickle that creates a file when it is unpickled: what a hostile checkpoint does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_pickle_named_model_safetensors_is_refused_without_running_it(tmp_path):
    control = tmp_path / "control-marker"
    pickle.loads(pickle.dumps(_Payload(control)))  # the payload really does run when unpickled
    assert control.exists()

    card = tiny_models.make_tiny_model(tmp_path / "models", "classification")
    weights = card.path / "model.safetensors"
    marker = tmp_path / "marker"
    payload = pickle.dumps({"state_dict": _Payload(marker)}, protocol=4)
    weights.write_bytes(payload)
    # Make the card vouch for the pickle's bytes, so only the format check stands in the way.
    data = json.loads((card.path / "card.json").read_text())
    data["weights"]["sha256"] = hashlib.sha256(payload).hexdigest()
    (card.path / "card.json").write_text(json.dumps(data))
    card = read_card(card.path)

    for attempt in (
        lambda: load_weights(card),
        lambda: load_weights(card, verify=False),
        lambda: verify_weights(card),
        lambda: load_model(card, "classification", device="cpu"),
    ):
        with pytest.raises(ModelError) as info:
            attempt()
        assert str(info.value).startswith(f"{weights}: not a safetensors file")
        assert "looks like a Python pickle, which is never loaded" in str(info.value)
    assert not marker.exists()

    torch.save({"weight": torch.zeros(3)}, weights)  # torch.save: a zip holding a pickle
    with pytest.raises(ModelError, match="zip archive, as torch.save writes"):
        load_weights(card, verify=False)


def test_weights_files_other_than_plain_safetensors_names_are_refused(tmp_path):
    card = tiny_models.make_tiny_model(tmp_path, "classification")
    shutil.copy(card.path / "model.safetensors", card.path / "model.pt")
    renamed = card.replace(weights={**card.weights, "file": "model.pt"})
    with pytest.raises(ModelError, match=r"model.pt: not a .safetensors file.*are refused"):
        load_weights(renamed)
    escaping = card.replace(weights={**card.weights, "file": "../model.safetensors"})
    with pytest.raises(ModelError, match="must be a plain file name"):
        load_weights(escaping)
    (card.path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(ModelError, match="header length field 16 does not fit a 10-byte file"):
        load_weights(card, verify=False)


def test_load_model_builds_the_network_in_eval_mode(tmp_path):
    seg = tiny_models.make_tiny_model(tmp_path, "segmentation", metrics=SEG_METRICS)
    tiny_models.make_tiny_model(tmp_path, "classification", seed=3)
    loaded = load_model("tiny-seg-test", "segmentation", device="cpu", roots=[tmp_path])
    assert loaded.card == seg and loaded.device == torch.device("cpu")
    assert not loaded.network.training
    reference = _seeded_state(seg)
    state = loaded.network.state_dict()
    assert all(torch.equal(state[k], reference[k]) for k in reference)
    with torch.no_grad():
        out = loaded.network(torch.zeros(1, 1, *seg.input.shape))
    assert tuple(out.shape) == (1, 19, *seg.input.shape)

    classifier = load_model(None, "classification", device="cpu", roots=[tmp_path])
    assert classifier.card.id == "tiny-cla-test"
    with torch.no_grad():
        logits = classifier.network(torch.zeros(1, 1, *classifier.card.input.shape))
    assert tuple(logits.shape) == (1, 2)
    with pytest.raises(ModelError, match="tiny-seg-test@1.0.0 is a segmentation model"):
        load_model(seg, "classification", device="cpu")


def test_a_card_whose_architecture_does_not_fit_its_weights_is_refused(tmp_path):
    card = tiny_models.make_tiny_model(tmp_path, "segmentation")
    data = json.loads((card.path / "card.json").read_text())
    data["architecture"]["args"]["channels"] = [8, 16]
    (card.path / "card.json").write_text(json.dumps(data))
    with pytest.raises(ModelError) as info:
        load_model("tiny-seg-test", "segmentation", device="cpu", roots=[tmp_path])
    message = str(info.value)
    assert message.startswith("model tiny-seg-test@1.0.0: its weights do not fit the card's UNet")
    assert "shape mismatches (model.0.conv.weight: weights (4, 1, 3, 3, 3) vs network " in message

    data["architecture"]["args"].update(channels=[4, 8], num_res_units=1)
    (card.path / "card.json").write_text(json.dumps(data))
    with pytest.raises(ModelError, match="missing from the weights"):
        load_model("tiny-seg-test", "segmentation", device="cpu", roots=[tmp_path])


# -- command line --------------------------------------------------------------------------
@pytest.fixture
def mrisynth(monkeypatch):
    """Run ``mrisynth`` in-process with the ``models`` command registered."""
    module = "napari_mrisynth.cli.models"
    if module not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, module))
    return cli.main


@pytest.fixture
def cli_models(library, tmp_path, monkeypatch):
    """The library as the only env root, a user model, and an empty bundled folder."""
    user, _ = _isolate(monkeypatch, tmp_path, [library])
    tiny_models.make_tiny_model(
        user,
        "segmentation",
        id="user-seg",
        version="0.1.0",
        training={"simulated": False, "mlflow": {"run_id": "0f3a9c1d2e"}},
    )
    return user


def _rows(text: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in text.splitlines() if line.strip()}


def test_cli_list_shows_metric_location_and_simulated_flag(mrisynth, cli_models, capsys):
    assert mrisynth(["models", "list"]) == 0
    out = capsys.readouterr().out
    rows = _rows(out)
    assert rows["ID"][:4] == ["ID", "VERSION", "TASK", "TITLE"]
    assert "auc 0.910 [0.850, 0.960]" in next(
        line for line in out.splitlines() if "cls-good" in line
    )
    assert rows["cls-good"][-2:] == ["env", "yes"]
    assert rows["user-seg"][-2:] == ["user", "no"]
    assert rows["seg-nometric"][-3:] == ["-", "env", "yes"]
    assert out.splitlines()[-1].startswith("searched: ")
    assert f"{cli_models} (user)" in out.splitlines()[-1]

    assert mrisynth(["models", "list", "--task", "classification", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(c["id"], c["location"]) for c in listed] == [("cls-fair", "env"), ("cls-good", "env")]
    assert listed[1]["metrics"]["test"]["auc"]["ci95"] == [0.85, 0.96]


def test_cli_show_prints_the_whole_card(mrisynth, cli_models, library, capsys):
    assert mrisynth(["models", "show", "seg-accurate@1.0.0"]) == 0
    out = capsys.readouterr().out
    card = read_card(library / "seg-accurate-1.0.0")
    assert out.startswith("seg-accurate@1.0.0  Accurate HEAD segmentation\n")
    assert "     2  orbitomedial_frontal_gm      #dc140a (220, 20, 10)" in out
    nz, ny, nx = card.input.shape
    assert f"grid          {nx}x{ny}x{nz} voxels (x, y, z) at 8 x 8 x 8 mm" in out
    assert "normalisation method=percentile, lower=0.5, upper=99.5" in out
    assert f"sha256        {card.weights['sha256']}" in out
    assert "dice_mean                0.8600" in out
    assert "NOT FOR CLINICAL USE" in out
    assert f"location      env: {library / 'seg-accurate-1.0.0'}" in out

    assert mrisynth(["models", "show", "user-seg"]) == 0
    assert "run id        0f3a9c1d2e" in capsys.readouterr().out

    assert mrisynth(["models", "show", "cls-good", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["labels"] == [
        {"value": 0, "name": "control", "color": [70, 130, 180]},
        {"value": 1, "name": "bvFTD", "color": [220, 20, 60]},
    ]
    assert shown["location"] == "env"

    assert mrisynth(["models", "show", "no-such-model"]) == 1
    err = capsys.readouterr().err
    assert "mrisynth models: error: unknown model 'no-such-model'" in err
    assert "cls-fair, cls-good, seg-accurate, seg-fast, seg-nometric, user-seg" in err


def test_cli_search_ranks_and_filters(mrisynth, cli_models, capsys):
    assert mrisynth(["models", "search", "SEG", "--rank-by", "dice_mean"]) == 0
    out = capsys.readouterr().out
    order = [line.split()[0] for line in out.splitlines()[1:] if line.startswith(("seg", "user"))]
    assert order == ["seg-accurate", "seg-fast", "seg-nometric", "user-seg"]
    assert (
        mrisynth(
            [
                "models",
                "search",
                "--task",
                "classification",
                "--rank-by",
                "auc",
                "--ascending",
                "--json",
            ]
        )
        == 0
    )
    assert [c["id"] for c in json.loads(capsys.readouterr().out)] == ["cls-fair", "cls-good"]
    assert mrisynth(["models", "search", "zzz"]) == 0
    assert "no models found" in capsys.readouterr().out


def test_cli_verify_reports_mismatches_with_exit_status(mrisynth, cli_models, capsys):
    assert mrisynth(["models", "verify"]) == 0
    out = capsys.readouterr().out
    assert out.count("OK      ") == 6 and out.strip().endswith("6 of 6 model(s) verified")

    _flip_byte_in_tensor_data(cli_models / "user-seg-0.1.0" / "model.safetensors")
    assert mrisynth(["models", "verify", "user-seg"]) == 1
    out = capsys.readouterr().out
    assert out.startswith("FAILED  user-seg@0.1.0: ")
    assert "does not match the card's" in out and "0 of 1 model(s) verified, 1 FAILED" in out
    assert mrisynth(["models", "verify", "cls-good@1.0.0"]) == 0
    assert capsys.readouterr().out.startswith("OK      cls-good@1.0.0  sha256 ")


def test_cli_reports_skipped_cards_on_stderr(mrisynth, cli_models, capsys):
    broken = cli_models / "broken-1.0.0"
    broken.mkdir()
    (broken / "card.json").write_text("[]")
    assert mrisynth(["models", "list"]) == 0
    captured = capsys.readouterr()
    assert (
        f"warning: skipped: {broken / 'card.json'}: a model card is a JSON object" in captured.err
    )
    assert "user-seg" in captured.out


def test_models_commands_do_not_import_torch(tmp_path):
    tiny_models.make_tiny_model(tmp_path, "classification")
    script = (
        "import sys\n"
        "from napari_mrisynth import cli\n"
        "rc = cli.main(['models', 'list'])\n"
        "rc += cli.main(['models', 'verify'])\n"
        "assert rc == 0, rc\n"
        "print('torch' in sys.modules, 'monai' in sys.modules)\n"
    )
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "MRISYNTH_MODEL_PATH": str(tmp_path),
        "MRISYNTH_DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert any(line.startswith("tiny-cla-test") for line in lines)
    assert lines[-1] == "False False"


def test_cli_models_without_an_action_prints_help(mrisynth, cli_models, capsys):
    assert mrisynth(["models"]) == 2
    out = capsys.readouterr().out
    assert "list" in out and "search" in out and "verify" in out and "MRISYNTH_MODEL_PATH" in out
