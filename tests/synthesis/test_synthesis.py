"""Synthesis: tiny generators of every family train for real, land in the registry with
their cards and MLflow runs, and generate deterministic volumes with provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.support.tiny_generators import TINY, make_tiny_generator

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")
pytest.importorskip("mlflow")

FAMILIES = ("vae", "gan", "ldm")


@pytest.fixture(scope="module")
def cohort(simulated_cohort):
    return simulated_cohort(10, 5)


@pytest.fixture(scope="module")
def trained(cohort, tracking_uri, tmp_path_factory):
    """One tiny model per family, trained for two optimiser steps on an 8 mm grid."""
    from napari_mrisynth.synthesis.train import train_generator

    out = tmp_path_factory.mktemp("generators")
    cards = {}
    for family in FAMILIES:
        cards[family] = train_generator(
            family,
            cohort,
            out,
            id=f"test-{family}",
            spacing=8.0,
            max_steps=2,
            epochs=1,
            autoencoder_epochs=1,
            batch_size=2,
            fractions=(0.5, 0.1, 0.4),
            sample_steps=3,
            evaluate_per_class=3 if family == "ldm" else 0,
            tracking_uri=tracking_uri,
            experiment="tests",
            progress=False,
            accelerator="cpu",
            # the VAE also learns age and sex from participants.tsv
            conditions=("diagnosis", "age", "sex") if family == "vae" else ("diagnosis",),
            **TINY[family],
        )
    return cards, out


@pytest.mark.slow
def test_every_family_trains_into_the_registry_with_its_card(trained, tracking_uri, monkeypatch):
    from mlflow import MlflowClient

    from napari_mrisynth.models.weights import verify_weights
    from napari_mrisynth.synthesis.generate import list_generators

    cards, out = trained
    monkeypatch.setenv("MRISYNTH_MODEL_PATH", str(out))
    found = {c.id: c for c in list_generators()}
    client = MlflowClient(tracking_uri=tracking_uri)
    for family, card in cards.items():
        assert card.task == "generation" and card.inference["family"] == family
        assert found[card.id].weights["sha256"] == verify_weights(card)
        assert card.input.spacing == (8.0, 8.0, 8.0)
        wanted = ["diagnosis", "age", "sex"] if family == "vae" else ["diagnosis"]
        assert card.training["conditions"] == card.inference["conditions"] == wanted
        assert card.training["simulated"] is True
        test_subjects = set(card.training["splits"]["test"])
        assert test_subjects and not test_subjects & set(card.training["splits"]["train"])
        run = client.get_run(card.training["mlflow"]["run_id"])
        assert run.data.params["card.family"] == family
        assert card.training["mlflow"]["version"] is not None
    stages = cards["ldm"].training["stages"]
    assert {"autoencoder", "diffusion"} <= set(stages)
    assert len(stages["latent_normalisation"]["latent_scale"]) == 2  # TINY ldm: 2 channels
    assert cards["ldm"].architecture["args"]["prediction_type"] == "v_prediction"
    assert stages["autoencoder"]["global_steps"] == 2 and stages["diffusion"]["global_steps"] == 2


@pytest.mark.slow
def test_trained_ldm_card_has_metrics_with_floors_and_an_audit(trained):
    card = trained[0]["ldm"]
    test = card.metrics["test"]
    for name in ("fid", "kid", "ms_ssim", "mmd"):
        assert np.isfinite(test[name]["value"]), name
    assert test["memorization"]["n"] == 6
    assert 0 <= test["memorization"]["flagged"] <= 6
    assert test["seconds_per_volume"]["value"] > 0
    assert card.metric("fid") == test["fid"]["value"]
    figure = card.path.parent / "reports" / f"{card.ref}" / "real_vs_synthetic.png"
    assert figure.stat().st_size > 10_000


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_trained_generator_is_deterministic_per_seed_and_index(trained, family):
    from napari_mrisynth.synthesis.generate import generate

    card = trained[0][family]
    a = generate(card, 3, condition="bvftd", seed=11, batch_size=3)
    b = generate(card, 3, condition="bvftd", seed=11, batch_size=3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.volume.data, y.volume.data)
    # volume 2 alone (another batch size) is volume 2 of the set, to float rounding
    alone = generate(card, 1, condition="bvftd", seed=11, start=2)[0]
    np.testing.assert_allclose(alone.volume.data, a[2].volume.data, atol=1e-4)
    other = generate(card, 1, condition="bvftd", seed=12)[0]
    assert np.abs(other.volume.data - a[0].volume.data).max() > 1e-3
    control = generate(card, 1, condition="control", seed=11)[0]
    assert np.abs(control.volume.data - a[0].volume.data).max() > 1e-4
    if family == "vae":  # trained on age and sex too
        old = generate(card, 1, condition="bvftd", age=80, sex="M", seed=11)[0]
        assert old.provenance["condition"] == {"diagnosis": "bvFTD", "age": 80.0, "sex": "M"}
        assert np.abs(old.volume.data - a[0].volume.data).max() > 1e-4


def test_untrained_generators_write_nifti_dicom_and_provenance(tmp_path):
    from napari_mrisynth.io.files import load_volume
    from napari_mrisynth.synthesis.generate import generate, noise_seed

    card = make_tiny_generator(tmp_path / "models", "ldm")
    out = tmp_path / "synth"
    made = generate(
        card,
        2,
        condition="control",
        seed=5,
        out=out,
        format=("nifti", "dicom"),
        steps=3,
        guidance=2.0,
    )
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".json") == [
        "tiny-ldm_control_seed5_0000.json",
        "tiny-ldm_control_seed5_0001.json",
    ]
    for i, item in enumerate(made):
        side = json.loads(item.sidecar.read_text())
        assert side["synthetic"] is True
        assert side["generator"] == {
            "id": "tiny-ldm",
            "version": "1.0.0",
            "family": "ldm",
            "weights_sha256": card.weights["sha256"],
            "architecture": "LatentDiffusion",
        }
        assert side["seed"] == 5 and side["index"] == i and side["noise_seed"] == noise_seed(5, i)
        assert side["condition"] == {"diagnosis": "control", "age": None, "sex": None}
        assert side["sampling"] == {"sampler": "ddim", "steps": 3, "guidance": 2.0, "eta": 0.0}
        assert side["seconds"] > 0
        nifti = load_volume(out / side["files"]["nifti"]).compute()
        assert nifti.shape == tuple(card.input.shape)
        np.testing.assert_allclose(nifti.spacing, card.input.spacing)
        np.testing.assert_allclose(nifti.origin, card.input.origin, atol=1e-4)
        np.testing.assert_allclose(nifti.data, item.volume.data, atol=1e-6)
        dicom = load_volume(out / side["files"]["dicom"]).compute()
        np.testing.assert_allclose(dicom.origin, card.input.origin, atol=1e-3)
        np.testing.assert_allclose(dicom.data, item.volume.data, atol=1e-3)
    assert not list(out.glob(".*partial*"))


def test_python_api_finds_generators_by_id_and_ranks_them(tmp_path, monkeypatch):
    from napari_mrisynth import generate
    from napari_mrisynth.synthesis import rank_generators

    root = tmp_path / "models"
    make_tiny_generator(root, "vae", model_id="good-vae", metrics={"test": {"fid": {"value": 1.0}}})
    make_tiny_generator(
        root, "gan", model_id="worse-gan", metrics={"test": {"fid": {"value": 9.0}}}
    )
    make_tiny_generator(root, "ldm", model_id="unrated-ldm")
    monkeypatch.setenv("MRISYNTH_MODEL_PATH", str(root))
    ranked = [
        (c.id, v)
        for c, v in rank_generators("fid")
        if c.id in {"good-vae", "worse-gan", "unrated-ldm"}
    ]
    assert ranked == [("good-vae", 1.0), ("worse-gan", 9.0), ("unrated-ldm", None)]
    made = generate("good-vae", n=2, out=tmp_path / "synth", seed=1)
    assert [m.path.name for m in made] == [
        "good-vae_bvFTD_seed1_0000.nii.gz",
        "good-vae_bvFTD_seed1_0001.nii.gz",
    ]


def test_conditions_a_model_was_not_trained_on_are_refused(tmp_path):
    from napari_mrisynth.synthesis import ConditionError, generate

    card = make_tiny_generator(tmp_path, "vae")
    with pytest.raises(ConditionError, match="cannot take age"):
        generate(card, 1, condition="bvftd", age=70)
    with pytest.raises(ConditionError, match="use bvftd or control"):
        generate(card, 1, condition="alzheimer")
    aged = make_tiny_generator(
        tmp_path, "vae", model_id="tiny-vae-aged", conditions=("diagnosis", "age", "sex")
    )
    young, old = (generate(aged, 1, condition="bvftd", age=a, sex="F", seed=3)[0] for a in (50, 80))
    assert young.provenance["condition"] == {"diagnosis": "bvFTD", "age": 50.0, "sex": "F"}
    assert np.abs(young.volume.data - old.volume.data).max() > 0


def test_generate_cli_writes_volumes_and_json(tmp_path, monkeypatch, capsys):
    from napari_mrisynth.cli import main

    make_tiny_generator(tmp_path / "models", "gan")
    monkeypatch.setenv("MRISYNTH_MODEL_PATH", str(tmp_path / "models"))
    code = main(
        [
            "generate",
            "--model",
            "tiny-gan",
            "--n",
            "3",
            "--condition",
            "control",
            "--seed",
            "4",
            "--out",
            str(tmp_path / "out"),
            "--json",
            "--no-progress",
        ]
    )
    assert code == 0
    records = json.loads(capsys.readouterr().out)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert all(r["condition"]["diagnosis"] == "control" for r in records)
    assert len(list((tmp_path / "out").glob("*.nii.gz"))) == 3
    code = main(
        ["generate", "--model", "no-such-model", "--out", str(tmp_path / "x"), "--no-progress"]
    )
    assert code == 1 and "no-such-model" in capsys.readouterr().err


def test_generate_cli_without_model_uses_the_registrys_default_generator(
    tmp_path, monkeypatch, capsys
):
    from napari_mrisynth.cli import main
    from napari_mrisynth.models.registry import default_model

    # flagged default with a perfect test FID: it wins over every bundled generator
    make_tiny_generator(tmp_path / "models", "vae", model_id="chosen-vae",
                        metrics={"test": {"fid": {"value": 0.0}}})  # fmt: skip
    make_tiny_generator(tmp_path / "models", "gan", model_id="other-gan", default=False)
    monkeypatch.setenv("MRISYNTH_MODEL_PATH", str(tmp_path / "models"))
    assert default_model("generation").id == "chosen-vae"
    code = main(["generate", "--n", "1", "--out", str(tmp_path / "out"), "--json",
                 "--no-progress"])  # fmt: skip
    assert code == 0
    records = json.loads(capsys.readouterr().out)
    assert records[0]["generator"]["id"] == "chosen-vae"
    assert len(list((tmp_path / "out").glob("chosen-vae*.nii.gz"))) == 1


def test_diff_augment_keeps_shape_and_passes_gradients():
    from napari_mrisynth.training.augment import diff_augment

    x = torch.rand(3, 1, 8, 10, 12, requires_grad=True)
    y = diff_augment(x, generator=torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    same = diff_augment(x.detach(), generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(same.numpy(), y.detach().numpy())


def test_condition_vector_encoding():
    from napari_mrisynth.models.conditions import Condition

    assert Condition.parse("bvftd").vector() == [1.0, 0.0, 0.0]
    assert Condition.parse("Control", 75, "female").vector() == [-1.0, 1.0, -1.0]
    assert Condition.parse("bvFTD", sex="m").label == "bvFTD-M"


def test_default_generator_is_the_lowest_fid_unless_one_is_flagged(tmp_path):
    from napari_mrisynth.models.registry import default_model

    root = tmp_path / "models"
    for model_id, fid in (("worse-ldm", 9.0), ("best-vae", 1.0), ("mid-gan", 4.0)):
        make_tiny_generator(
            root,
            model_id.split("-")[1],
            model_id=model_id,
            default=False,
            metrics={"test": {"fid": {"value": fid}}},
        )
    assert default_model("generation", roots=[root]).id == "best-vae"
    make_tiny_generator(root, "gan", model_id="flagged-gan", default=True)
    assert default_model("generation", roots=[root]).id == "flagged-gan"
