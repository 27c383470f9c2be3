"""Train a generator (VAE, GAN or latent diffusion) on a cohort, by the run recipe every model
follows (:mod:`napari_mrisynth.training.recipe`). What is particular to generators: the
family's network on a grid the networks divide, one Lightning fit (LDM: the autoencoder,
then diffusion on its latents), and test metrics that are generated volumes assessed against
the held-out test subjects (FID/KID/IS/MS-SSIM/MMD with real-vs-real floors) and audited
against the training subjects (memorization).

The test subjects are never trained on: they are the real set the synthetic one is compared
with, and the training subjects are the set a copy would come from.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import ModelError, MrisynthError
from napari_mrisynth.models.card import InputSpec, ModelCard
from napari_mrisynth.models.conditions import (
    CONDITION_NAMES,
    DIAGNOSIS_CLASSES,
    Condition,
    encoding,
)
from napari_mrisynth.training.recipe import RunOptions, TrainingRun, model_spec, resolve_init

FAMILIES = ("anatomy", "vae", "gan", "ldm")
#: A latent diffusion model's stage-1 arguments (``--autoencoder`` copies them).
AUTOENCODER_ARGS = (
    "shape",
    "autoencoder_channels",
    "latent_channels",
    "autoencoder_res_blocks",
    "norm_num_groups",
)
ARCHITECTURE_NAMES = {"vae": "ConditionalVAE", "gan": "ConditionalGAN", "ldm": "LatentDiffusion",
                      "anatomy": "AnatomyFirst"}  # fmt: skip
TITLES = {"vae": "conditional VAE", "gan": "conditional GAN", "ldm": "latent diffusion",
          "anatomy": "anatomy-first"}  # fmt: skip
DETAILS = {
    "anatomy": "a groupwise template built by SimpleITK diffeomorphic demons, stationary "
    "velocity fields on a 6 mm grid under a conditional shape model, regional grey-matter, "
    "white-matter and ventricle shares of the brain drawn per diagnosis and reached exactly "
    "after the warp, tissue appearance, fine folding and texture; rendered at native "
    "resolution with exact label maps",
    "vae": "MONAI AutoencoderKL encoder and decoder, both seeing the condition",
    "gan": "AutoencoderKL-style decoder generator and PatchDiscriminator critic, hinge loss, "
    "DiffAugment, R1 penalty, generator EMA",
    "ldm": "AutoencoderKL (stage 1) and DiffusionModelUNet (stage 2), DDIM sampling, "
    "classifier-free guidance",
}


@dataclass
class GenerativeOptions(RunOptions):
    """Everything a generator's training run is configured by (the CLI's options)."""

    spacing: float = 4.0
    conditions: Sequence[str] = ("diagnosis",)
    channels: Sequence[int] | None = None
    latent_channels: int | None = None
    epochs: int = 100
    autoencoder_epochs: int = 100
    batch_size: int = 4
    lr: float | None = None
    kl_weight: float | None = None
    sample_steps: int = 50
    guidance: float = 1.0
    evaluate_per_class: int = 6
    autoencoder: str | None = None
    #: anatomy-first: velocity node grid and registration resolution (mm), groupwise
    #: rounds, and the shape model ("auto" compares the Gaussian and the VAE)
    node_mm: float = 6.0
    registration_mm: float = 4.0
    rounds: int = 3
    shape_model: str = "auto"


def architecture_for(family: str, shape: Sequence[int], opts: GenerativeOptions) -> dict:
    """The card's ``architecture`` for a family on a grid of ``shape`` (z, y, x)."""
    if family not in FAMILIES:
        raise MrisynthError(f"family {family!r}: use one of {', '.join(FAMILIES)}")
    args: dict[str, Any] = {"shape": [int(s) for s in shape]}
    if family == "vae":
        args["channels"] = list(opts.channels or (16, 32, 64))
        args["latent_channels"] = opts.latent_channels or 4
        args["global_latent"] = 128  # one latent vector per volume: prior samples are heads
    elif family == "gan":
        args["channels"] = list(opts.channels or (16, 32, 64, 64))
        args["noise_channels"] = opts.latent_channels or 8
    else:
        args["autoencoder_channels"] = list(opts.channels or (16, 32, 64))
        args["latent_channels"] = opts.latent_channels or 3
        # v-prediction and per-channel latent normalisation: the global layout of a volume
        # is decided at high noise, where epsilon-prediction of offset latents drifts
        args["prediction_type"] = "v_prediction"
        args["latent_normalisation"] = "channel"
    return {"name": ARCHITECTURE_NAMES[family], "args": args}


def grid_multiple(family: str, opts: GenerativeOptions) -> int:
    """How many voxels each side of the grid must divide by: every down-sampling halves."""
    args = architecture_for(family, (1, 1, 1), opts)["args"]
    levels = len(args.get("channels") or args["autoencoder_channels"])
    factor = 2 ** (levels - 1)
    return factor * 2 if family == "ldm" else factor  # the diffusion UNet halves once more


def generation_spec(family: str, opts: GenerativeOptions) -> InputSpec:
    """The default model grid at ``opts.spacing``, padded so the networks divide it."""
    from napari_mrisynth.preprocess.grid import default_multiple

    multiple = max(default_multiple(opts.spacing), grid_multiple(family, opts))
    return model_spec(opts.spacing, multiple)


def train_generator(
    family: str, data: str | Path, out: str | Path, **options: Any
) -> ModelCard | None:
    """Train a conditional generator of T1 volumes and write it to a registry folder.

    Parameters
    ----------
    family : {"vae", "gan", "ldm"}
    data : path
        A cohort folder (``participants.tsv`` with ``diagnosis``, ``age``, ``sex``).
    out : path
        Registry folder: the model goes to ``out/<id>-<version>/``; ``cache/``,
        ``checkpoints/`` and ``reports/`` beside it.
    **options
        Fields of :class:`GenerativeOptions`.

    Returns
    -------
    ModelCard or None
        The saved card (None on non-zero ranks of a distributed run).
    """
    return _train(family, Path(data), Path(out), GenerativeOptions(**options))


def _tensors(cached: Sequence[Any], conditions: Sequence[Condition]) -> tuple[Any, Any]:
    import torch

    from napari_mrisynth.io.files import load_volume

    images = [np.asarray(load_volume(c.image).compute().data, dtype=np.float32) for c in cached]
    x = torch.from_numpy(np.stack(images)[:, None])
    c = torch.tensor([cond.vector() for cond in conditions], dtype=torch.float32)
    return x, c


def _loader(x: Any, c: Any, batch_size: int, shuffle: bool, seed: int) -> Any:
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(x, c),
        batch_size=batch_size,
        shuffle=shuffle,
        generator=generator if shuffle else None,
        drop_last=shuffle and len(x) > batch_size,
    )


def _train(family: str, data: Path, out: Path, opts: GenerativeOptions) -> ModelCard | None:
    if family == "anatomy":
        return _train_anatomy(data, out, opts)
    run = TrainingRun("generation", data, out, opts)
    import torch

    unknown = set(opts.conditions) - set(CONDITION_NAMES)
    if unknown or "diagnosis" not in opts.conditions:
        raise MrisynthError(
            f"--condition {','.join(opts.conditions)}: diagnosis, optionally with age and sex"
        )
    condition_of = participant_conditions(run, opts.conditions)
    base = None
    if opts.init:
        base = resolve_init(opts.init, "generation", out)
        if base.inference.get("family") != family:
            raise ModelError(
                f"--init {opts.init}: {base.ref} is a "
                f"{base.inference.get('family')} generator, not {family}"
            )
        if list(base.inference.get("conditions", ["diagnosis"])) != list(opts.conditions):
            raise ModelError(
                f"--init {opts.init}: {base.ref} was trained on "
                f"{base.inference.get('conditions')}, not {list(opts.conditions)}"
            )
    stage1_base = None
    if opts.autoencoder:
        if family != "ldm" or base is not None:
            raise MrisynthError(
                "--autoencoder takes a latent diffusion model's stage 1 for a new "
                "ldm (not with --init)"
            )
        stage1_base = resolve_init(opts.autoencoder, "generation", out)
        if stage1_base.inference.get("family") != "ldm":
            raise ModelError(
                f"--autoencoder {opts.autoencoder}: {stage1_base.ref} is not a "
                "latent diffusion model"
            )
    splits = run.split([base, stage1_base])
    if base is not None:
        spec = base.input
        architecture = json.loads(json.dumps(base.architecture))
    elif stage1_base is not None:
        spec = stage1_base.input
        architecture = architecture_for(family, spec.shape, opts)
        inherited = stage1_base.architecture["args"]
        for key in AUTOENCODER_ARGS:
            if key in inherited:
                architecture["args"][key] = inherited[key]
    else:
        spec = generation_spec(family, opts)
        architecture = architecture_for(family, spec.shape, opts)
    model_id = opts.id or f"{family}-bvftd-{opts.spacing:g}mm"
    run.check_new(model_id)

    by_id = run.cache(splits["train"] + splits["val"] + splits["test"], spec, labels=None)
    part = {k: [by_id[s] for s in v] for k, v in splits.items()}
    x_train, c_train = _tensors(part["train"], [condition_of[s] for s in splits["train"]])
    x_val, c_val = _tensors(part["val"], [condition_of[s] for s in splits["val"]])

    run.start_logging(model_id, family=family)
    train_loader = _loader(x_train, c_train, opts.batch_size, True, opts.seed)
    val_loader = _loader(x_val, c_val, opts.batch_size, False, opts.seed)
    stages: dict[str, Any] = {}
    if family == "vae":
        from napari_mrisynth.training.generator_modules import VAEModule

        module = VAEModule(
            architecture,
            lr=opts.lr or 1e-3,
            kl_weight=0.01 if opts.kl_weight is None else opts.kl_weight,
        )
        _load_init(module.network, base)
        trainer = run.trainer(opts.epochs, checkpointing=False)
        trainer.fit(module, train_loader, val_loader)
        network = module.network
        state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        stages["vae"] = _stage_record(trainer, module.hparams)
    elif family == "gan":
        from napari_mrisynth.training.generator_modules import GANModule

        module = GANModule(architecture, lr=opts.lr or 2e-4)
        if _load_init(module.network, base):
            module.ema.load_state_dict(module.network.generator.state_dict())
        trainer = run.trainer(opts.epochs, checkpointing=False)
        trainer.fit(module, train_loader, val_loader)
        state = module.generation_state()
        network = module.network
        network.load_state_dict(state)
        stages["gan"] = _stage_record(trainer, module.hparams)
    else:
        from napari_mrisynth.models.networks import build_network
        from napari_mrisynth.training.generator_modules import DiffusionModule, VAEModule

        network = build_network(architecture)
        _load_init(network, base)
        if stage1_base is not None:
            from napari_mrisynth.models.weights import load_weights

            weights = {
                k[len("autoencoder.") :]: v
                for k, v in load_weights(stage1_base).items()
                if k.startswith("autoencoder.")
            }
            network.autoencoder.load_state_dict(weights, strict=True)
        trained_before = base is not None or stage1_base is not None
        if opts.autoencoder_epochs > 0 or not trained_before:
            stage1 = VAEModule(
                architecture,
                lr=opts.lr or 1e-3,
                network=network,
                kl_weight=1e-6 if opts.kl_weight is None else opts.kl_weight,
            )
            trainer = run.trainer(max(1, opts.autoencoder_epochs), checkpointing=False)
            trainer.fit(stage1, train_loader, val_loader)
            stages["autoencoder"] = _stage_record(trainer, stage1.hparams)
        else:  # a trained autoencoder, unchanged
            stages["autoencoder"] = {"from": (base or stage1_base).ref}
        network.eval()
        with torch.no_grad():
            mu_train = network.autoencoder.encode(x_train)[0]
            mu_val = network.autoencoder.encode(x_val)[0]
        if base is None or "from" not in stages["autoencoder"]:
            stages["latent_normalisation"] = network.fit_latent_normalisation(mu_train)
        network.unet.train()  # the frozen autoencoder stays in eval mode
        stage2 = DiffusionModule(network, diffusion_lr=opts.lr or 2.5e-4)
        trainer = run.trainer(opts.epochs, checkpointing=False)
        trainer.fit(
            stage2,
            _loader(
                network.to_diffusion_space(mu_train), c_train, opts.batch_size, True, opts.seed
            ),
            _loader(network.to_diffusion_space(mu_val), c_val, opts.batch_size, False, opts.seed),
        )
        stages["diffusion"] = _stage_record(trainer, stage2.hparams)
        state = stage2.generation_state()
        network.load_state_dict(state)
    if not trainer.is_global_zero:
        return None

    training = run.training_record(
        trainer,
        conditions=list(opts.conditions),
        stages=stages,
        checkpoint="last (generators: validation loss does not rank sample quality)",
        init=None if base is None else {"model": base.ref, "sha256": base.weights.get("sha256")},
        autoencoder_from=None
        if stage1_base is None
        else {"model": stage1_base.ref, "sha256": stage1_base.weights.get("sha256")},
    )
    inference = {
        "family": family,
        "conditions": list(opts.conditions),
        "condition_encoding": encoding(),
        "batch_size": 4,
    }
    if family == "ldm":
        inference.update(
            sampler="ddim", steps=int(opts.sample_steps), guidance=float(opts.guidance), eta=0.0
        )
    card = run.card(
        id=model_id,
        title=f"{TITLES[family]}, bvFTD/control T1, {opts.spacing:g} mm",
        description=(
            f"{TITLES[family][0].upper()}{TITLES[family][1:]} ({DETAILS[family]}) conditioned on "
            f"{', '.join(opts.conditions)}, trained with "
            f"napari-mrisynth on {len(splits['train'])} {'simulated ' if run.simulated else ''}"
            f"subjects of {data.name} at {spec.spacing[0]:g} mm (grid {tuple(spec.shape)}); "
            f"{len(splits['test'])} held-out subjects are the real set its metrics use."
        ),
        architecture=architecture,
        labels=list(DIAGNOSIS_CLASSES),
        input=spec,
        inference=inference,
        training=training,
    )

    return run.finish(card, state, _test_metrics(opts, part, [condition_of[s] for s in
                                                              splits["test"]]))  # fmt: skip


def _test_metrics(opts: GenerativeOptions, part: dict[str, list[Any]],
                  test_conditions: list[Condition]) -> Any:  # fmt: skip
    """The card's test metrics of a generator: :func:`.assess.assess_generator` on the
    held-out test subjects (none when ``--evaluate-per-class 0`` or no test split)."""

    def test_metrics(card: ModelCard, report_dir: Path) -> dict[str, Any]:
        if opts.evaluate_per_class <= 0 or not part["test"]:
            return {}
        from napari_mrisynth.synthesis.assess import assess_generator

        return assess_generator(card, part["test"], part["train"], test_conditions,
                                per_class=opts.evaluate_per_class, seed=opts.seed,
                                report_dir=report_dir)  # fmt: skip

    return test_metrics


def _load_init(network: Any, base: ModelCard | None) -> bool:
    """Copy a registry generator's weights into ``network`` (same architecture, strict)."""
    if base is None:
        return False
    from napari_mrisynth.models.weights import load_weights

    network.load_state_dict(load_weights(base), strict=True)
    return True


def _stage_record(trainer: Any, hparams: Any) -> dict[str, Any]:
    metrics = {
        k: float(v)
        for k, v in trainer.callback_metrics.items()
        if getattr(v, "numel", lambda: 1)() == 1
    }
    return {
        "epochs": int(trainer.current_epoch),
        "global_steps": int(trainer.global_step),
        "hyperparameters": {
            k: v for k, v in dict(hparams).items() if isinstance(v, (int, float, str, bool))
        },
        "final_metrics": metrics,
    }


def _vae_trainer(run: TrainingRun, opts: GenerativeOptions) -> Any:
    """``vae_fit`` for :func:`~napari_mrisynth.synthesis.anatomy.fit_anatomy_first`: a
    ConditionalVAE on the velocity fields (3 channels on the node grid, padded), condition
    dropout 0.2 for classifier-free guidance, trained by the run's Lightning Trainer."""

    def fit(velocities: np.ndarray, design: np.ndarray, nodes: Sequence[int]) -> dict:
        import torch

        from napari_mrisynth.models.networks import build_network
        from napari_mrisynth.training.generator_modules import VAEModule

        padded = [-(-int(n) // 4) * 4 for n in nodes]
        scale = float(np.std(velocities)) or 1.0
        x = np.zeros((len(velocities), 3, *padded), np.float32)
        x[:, :, : nodes[0], : nodes[1], : nodes[2]] = velocities / scale
        args = {"shape": padded, "channels": [16, 32, 32], "latent_channels": 4,
                "global_latent": 16, "in_channels": 3}  # fmt: skip
        architecture = {"name": "ConditionalVAE", "args": args}
        module = VAEModule(architecture, lr=1e-3, kl_weight=0.01, condition_dropout=0.2)
        c = torch.tensor(design[:, 1:], dtype=torch.float32)
        loader = _loader(torch.from_numpy(x), c, min(8, len(x)), True, opts.seed)
        trainer = run.trainer(max(1, opts.epochs), checkpointing=False)
        trainer.fit(module, loader)
        network = module.network.eval()
        state = {k: v.detach().cpu().numpy() for k, v in network.state_dict().items()}

        def sample(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
            z = torch.from_numpy(rng.standard_normal((len(rows), 16)).astype(np.float32))
            with torch.no_grad():
                out = network.decode(z, torch.tensor(rows[:, 1:], dtype=torch.float32))
            return out[:, :, : nodes[0], : nodes[1], : nodes[2]].numpy() * scale

        return {"args": args, "state": state, "scale": scale, "sample": sample,
                "network": build_network}  # fmt: skip

    return fit


def participant_conditions(run: TrainingRun, conditions: Sequence[str]) -> dict[str, Condition]:
    """Every participant's condition vector (``conditions``: the names a model is conditioned
    on), read from the run's ``participants.tsv``.

    Raises
    ------
    MrisynthError
        A participant's row cannot give one; the message names the file.
    """
    rows = {row["participant_id"]: row for row in run.participants}
    try:
        return {s: Condition.from_participant(rows[s], tuple(conditions)) for s in rows}
    except (MrisynthError, ValueError) as exc:
        raise MrisynthError(f"{run.data / 'participants.tsv'}: {exc}") from exc


def anatomy_spec(spacing: float) -> InputSpec:
    """The model grid an anatomy-first model of ``spacing`` mm is fitted on."""
    from napari_mrisynth.preprocess.grid import default_multiple

    return model_spec(spacing, default_multiple(spacing))


def anatomy_inference(conditions: Sequence[str]) -> dict[str, Any]:
    """The card's ``inference`` of an anatomy-first model conditioned on ``conditions``."""
    return {"family": "anatomy", "conditions": list(conditions),
            "condition_encoding": encoding(), "batch_size": 2, "guidance": 1.0,
            "labels": True}  # fmt: skip


def cached_arrays(items: Sequence[Any], attribute: str) -> list[np.ndarray]:
    """The arrays of cached subjects' ``image`` or ``label`` files (:meth:`TrainingRun.cache`)."""
    from napari_mrisynth.io.files import load_volume

    return [np.asarray(load_volume(getattr(c, attribute)).compute().data) for c in items]


def _train_anatomy(data: Path, out: Path, opts: GenerativeOptions) -> ModelCard | None:
    """The anatomy-first family (:mod:`.anatomy`): no gradient descent but for its optional
    VAE shape model; the run recipe around it is the same as every model's."""
    import torch

    from napari_mrisynth.synthesis.anatomy import fit_anatomy_first
    from napari_mrisynth.synthesis.anatomy_template import AnatomyOptions

    run = TrainingRun("generation", data, out, opts)
    condition_of = participant_conditions(run, opts.conditions)
    splits = run.split()
    spec = anatomy_spec(opts.spacing)
    model_id = opts.id or f"anatomy-bvftd-{opts.spacing:g}mm"
    run.check_new(model_id)
    by_id = run.cache(splits["train"] + splits["val"] + splits["test"], spec, labels=True)
    part = {k: [by_id[s] for s in v] for k, v in splits.items()}
    run.start_logging(model_id, family="anatomy")
    options = AnatomyOptions(node_mm=opts.node_mm, registration_mm=opts.registration_mm,
                             rounds=opts.rounds, shape_model=opts.shape_model)  # fmt: skip
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(desc="anatomy-first", unit="step")

    def progress(stage: str, done: int, total: int) -> None:
        if bar is not None:
            bar.set_description(stage)
            bar.total = total
            bar.n = done
            bar.refresh()

    fitted = fit_anatomy_first(
        cached_arrays(part["train"], "image"), cached_arrays(part["train"], "label"),
        [condition_of[s] for s in splits["train"]], opts.spacing, options,
        validation=(cached_arrays(part["val"], "image"),
                    [condition_of[s] for s in splits["val"]]),
        vae_fit=_vae_trainer(run, opts) if opts.shape_model in ("auto", "vae") else None,
        progress=progress,
    )  # fmt: skip
    if bar is not None:
        bar.close()
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in fitted.buffers.items()}
    architecture = {"name": "AnatomyFirst", "args": fitted.args}

    class _Finished:  # the record's Lightning facts for a run that fits in closed form
        world_size = 1
        strategy = type("SingleProcess", (), {})()

    training = run.training_record(
        _Finished(), conditions=list(opts.conditions), fit=fitted.report,
        checkpoint="closed-form fit (the VAE shape model, when chosen, its last epoch)",
    )  # fmt: skip
    inference = anatomy_inference(opts.conditions)
    card = run.card(
        id=model_id,
        title=f"anatomy-first bvFTD/control T1, {opts.spacing:g} mm",
        description=(
            f"Anatomy-first generator ({DETAILS['anatomy']}), conditioned on "
            f"{', '.join(opts.conditions)}, fitted with napari-mrisynth on "
            f"{len(splits['train'])} {'simulated ' if run.simulated else ''}subjects of "
            f"{data.name} at {opts.spacing:g} mm (grid {tuple(spec.shape)}); shape model "
            f"{fitted.report['shape_model']}; {len(splits['test'])} held-out subjects are the "
            "real set its metrics use."
        ),
        architecture=architecture,
        labels=list(DIAGNOSIS_CLASSES),
        input=spec,
        inference=inference,
        training=training,
    )

    return run.finish(card, state, _test_metrics(opts, part, [condition_of[s] for s in
                                                              splits["test"]]))  # fmt: skip
