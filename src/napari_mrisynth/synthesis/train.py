"""Train a generator (VAE, GAN or latent diffusion) on a cohort; same path as the other models::

    participants.tsv -> stratified, seeded subject split -> subjects cached on the model grid
    -> Lightning fit (LDM: autoencoder, then diffusion on its latents) -> registry model
    (safetensors + card) -> generated volumes assessed against the held-out test subjects
    (FID/KID/IS/MS-SSIM/MMD with real-vs-real floors) and audited against the training
    subjects (memorization) -> card metrics -> MLflow run and registered model version

The test subjects are never trained on: they are the real set the synthetic one is compared
with, and the training subjects are the set a copy would come from.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import ModelError, MrisynthError
from napari_mrisynth.models.card import SIMULATED_USE, InputSpec, LabelSpec, ModelCard, write_card
from napari_mrisynth.synthesis.conditions import CONDITION_NAMES, Condition, encoding

FAMILIES = ("vae", "gan", "ldm")
#: A latent diffusion model's stage-1 arguments (``--autoencoder`` copies them).
AUTOENCODER_ARGS = (
    "shape",
    "autoencoder_channels",
    "latent_channels",
    "autoencoder_res_blocks",
    "norm_num_groups",
)
ARCHITECTURE_NAMES = {"vae": "ConditionalVAE", "gan": "ConditionalGAN", "ldm": "LatentDiffusion"}
TITLES = {"vae": "conditional VAE", "gan": "conditional GAN", "ldm": "latent diffusion"}
DETAILS = {
    "vae": "MONAI AutoencoderKL encoder and decoder, both seeing the condition",
    "gan": "AutoencoderKL-style decoder generator and PatchDiscriminator critic, hinge loss, "
    "DiffAugment, R1 penalty, generator EMA",
    "ldm": "AutoencoderKL (stage 1) and DiffusionModelUNet (stage 2), DDIM sampling, "
    "classifier-free guidance",
}
#: Classes a generator can be asked for (the card's labels).
CLASSES = (LabelSpec(0, "control", (60, 160, 230)), LabelSpec(1, "bvFTD", (220, 20, 10)))


@dataclass
class GenerativeOptions:
    """Everything a generator's training run is configured by (the CLI's options)."""

    id: str | None = None
    version: str = "1.0.0"
    spacing: float = 4.0
    conditions: Sequence[str] = ("diagnosis",)
    channels: Sequence[int] | None = None
    latent_channels: int | None = None
    epochs: int = 100
    autoencoder_epochs: int = 100
    max_steps: int = -1
    batch_size: int = 4
    lr: float | None = None
    kl_weight: float | None = None
    sample_steps: int = 50
    guidance: float = 1.0
    evaluate_per_class: int = 6
    init: str | None = None
    autoencoder: str | None = None
    fractions: Sequence[float] = (0.6, 0.2, 0.2)
    seed: int = 0
    source: str = "nifti"
    accelerator: str = "auto"
    devices: int | str = 1
    strategy: str = "auto"
    num_nodes: int = 1
    precision: str = "32-true"
    tracking_uri: str | None = None
    experiment: str = "mrisynth"
    progress: bool = True
    overwrite: bool = False
    callbacks: list[Any] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        from napari_mrisynth.training.train import options_record

        return options_record(self)


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
    from napari_mrisynth.preprocess import default_model_grid

    default = 16 if opts.spacing <= 2.0 else 8 if opts.spacing <= 4.0 else 4
    multiple = max(default, grid_multiple(family, opts))
    return InputSpec(**default_model_grid(opts.spacing, multiple).to_input_spec_fields())


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


def _trainer(pl: Any, opts: GenerativeOptions, logger: Any, epochs: int, out: Path) -> Any:
    return pl.Trainer(
        accelerator=opts.accelerator,
        devices=opts.devices,
        strategy=opts.strategy,
        num_nodes=opts.num_nodes,
        precision=opts.precision,
        max_epochs=epochs,
        max_steps=opts.max_steps,
        logger=logger,
        callbacks=list(opts.callbacks),
        log_every_n_steps=1,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=opts.progress,
        enable_checkpointing=False,
        default_root_dir=out,
    )


def _train(family: str, data: Path, out: Path, opts: GenerativeOptions) -> ModelCard | None:
    from napari_mrisynth.training import data as tdata
    from napari_mrisynth.training import tracking
    from napari_mrisynth.training.splits import read_participants, split_subjects
    from napari_mrisynth.training.train import (
        _check_precision,
        _read_simulated,
        _require_lightning,
        _software,
    )

    pl = _require_lightning()
    import torch

    started = time.perf_counter()
    _check_precision(opts)  # type: ignore[arg-type]
    unknown = set(opts.conditions) - set(CONDITION_NAMES)
    if unknown or "diagnosis" not in opts.conditions:
        raise MrisynthError(
            f"--condition {','.join(opts.conditions)}: diagnosis, optionally with age and sex"
        )
    participants = read_participants(data)
    splits = split_subjects(participants, fractions=opts.fractions, seed=opts.seed)
    if not splits["train"] or not splits["val"]:
        raise MrisynthError(
            f"{data}: {len(participants)} subjects are too few to split into "
            "train, validation and test"
        )
    rows = {row["participant_id"]: row for row in participants}
    try:
        condition_of = {
            s: Condition.from_participant(rows[s], tuple(opts.conditions)) for s in rows
        }
    except (MrisynthError, ValueError) as exc:
        raise MrisynthError(f"{data / 'participants.tsv'}: {exc}") from exc
    base = None
    if opts.init:
        from napari_mrisynth.training.train import inherited_splits, resolve_init

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
        splits = inherited_splits(base, data, participants) or splits
    stage1_base = None
    if opts.autoencoder:
        if family != "ldm" or base is not None:
            raise MrisynthError(
                "--autoencoder takes a latent diffusion model's stage 1 for a new "
                "ldm (not with --init)"
            )
        from napari_mrisynth.training.train import inherited_splits, resolve_init

        stage1_base = resolve_init(opts.autoencoder, "generation", out)
        if stage1_base.inference.get("family") != "ldm":
            raise ModelError(
                f"--autoencoder {opts.autoencoder}: {stage1_base.ref} is not a "
                "latent diffusion model"
            )
        splits = inherited_splits(stage1_base, data, participants) or splits
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
    if (out / f"{model_id}-{opts.version}").exists() and not opts.overwrite:
        raise ModelError(
            f"{out / f'{model_id}-{opts.version}'}: model {model_id}@{opts.version} "
            "already exists; give it a new --version, or --overwrite"
        )

    everyone = splits["train"] + splits["val"] + splits["test"]
    bar = None
    if opts.progress:
        from tqdm import tqdm

        bar = tqdm(total=len(everyone), unit="subject", desc="model grid")
    cached = tdata.cache_subjects(
        data,
        everyone,
        spec,
        out / "cache",
        source=opts.source,
        labels=None,
        progress=(lambda done, total: bar.update(done - bar.n)) if bar else None,
    )
    if bar:
        bar.close()
    by_id = {c.subject: c for c in cached}
    part = {k: [by_id[s] for s in v] for k, v in splits.items()}
    x_train, c_train = _tensors(part["train"], [condition_of[s] for s in splits["train"]])
    x_val, c_val = _tensors(part["val"], [condition_of[s] for s in splits["val"]])

    pl.seed_everything(opts.seed, workers=True, verbose=False)
    run_name = f"{model_id}@{opts.version}"
    tracking_uri = opts.tracking_uri or tracking.default_tracking_uri()
    logger = tracking.make_logger(
        tracking_uri,
        opts.experiment,
        run_name,
        {
            "task": "generation",
            "family": family,
            "model_id": model_id,
            "model_version": opts.version,
        },
    )
    train_loader = _loader(x_train, c_train, opts.batch_size, True, opts.seed)
    val_loader = _loader(x_val, c_val, opts.batch_size, False, opts.seed)
    stages: dict[str, Any] = {}
    if family == "vae":
        from napari_mrisynth.synthesis.modules import VAEModule

        module = VAEModule(
            architecture,
            lr=opts.lr or 1e-3,
            kl_weight=0.01 if opts.kl_weight is None else opts.kl_weight,
        )
        _load_init(module.network, base)
        trainer = _trainer(pl, opts, logger, opts.epochs, out)
        trainer.fit(module, train_loader, val_loader)
        network = module.network
        state = {k: v.detach().cpu() for k, v in network.state_dict().items()}
        stages["vae"] = _stage_record(trainer, module.hparams)
    elif family == "gan":
        from napari_mrisynth.synthesis.modules import GANModule

        module = GANModule(architecture, lr=opts.lr or 2e-4)
        if _load_init(module.network, base):
            module.ema.load_state_dict(module.network.generator.state_dict())
        trainer = _trainer(pl, opts, logger, opts.epochs, out)
        trainer.fit(module, train_loader, val_loader)
        state = module.generation_state()
        network = module.network
        network.load_state_dict(state)
        stages["gan"] = _stage_record(trainer, module.hparams)
    else:
        from napari_mrisynth.models.networks import build_network
        from napari_mrisynth.synthesis.modules import DiffusionModule, VAEModule

        network = build_network(architecture)
        _load_init(network, base)
        if stage1_base is not None:
            from napari_mrisynth.models.registry import load_weights

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
            trainer = _trainer(pl, opts, logger, max(1, opts.autoencoder_epochs), out)
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
        trainer = _trainer(pl, opts, logger, opts.epochs, out)
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

    simulated = _read_simulated(data)
    training = {
        "data": str(data.resolve()),
        "participants": len(participants),
        "simulated": simulated,
        "splits": splits,
        "split_fractions": list(opts.fractions),
        "seed": opts.seed,
        "conditions": list(opts.conditions),
        "stages": stages,
        "checkpoint": "last (generators: validation loss does not rank sample quality)",
        "options": opts.record(),
        "init": None if base is None else {"model": base.ref, "sha256": base.weights.get("sha256")},
        "autoencoder_from": None
        if stage1_base is None
        else {"model": stage1_base.ref, "sha256": stage1_base.weights.get("sha256")},
        "world_size": int(trainer.world_size),
        "strategy": type(trainer.strategy).__name__,
        "source": opts.source,
    }
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
    card = ModelCard(
        id=model_id,
        version=opts.version,
        task="generation",
        title=f"{TITLES[family]}, bvFTD/control T1, {opts.spacing:g} mm",
        description=(
            f"{TITLES[family][0].upper()}{TITLES[family][1:]} ({DETAILS[family]}) conditioned on "
            f"{', '.join(opts.conditions)}, trained with "
            f"napari-mrisynth on {len(splits['train'])} {'simulated ' if simulated else ''}"
            f"subjects of {data.name} at {spec.spacing[0]:g} mm (grid {tuple(spec.shape)}); "
            f"{len(splits['test'])} held-out subjects are the real set its metrics use."
        ),
        architecture=architecture,
        labels=list(CLASSES),
        input=spec,
        inference=inference,
        training=training,
        intended_use=SIMULATED_USE if simulated else "Research use only.",
        software=_software(),
    )
    out.mkdir(parents=True, exist_ok=True)
    from napari_mrisynth.models.registry import save_model

    card = save_model(card, state, out, overwrite=opts.overwrite)
    client = _client(tracking_uri)
    run_id = logger.run_id
    metrics: dict[str, Any] = {}
    if opts.evaluate_per_class > 0 and part["test"]:
        from napari_mrisynth.synthesis.assess import assess_generator

        metrics = assess_generator(
            card,
            part["test"],
            part["train"],
            [condition_of[s] for s in splits["test"]],
            per_class=opts.evaluate_per_class,
            seed=opts.seed,
            report_dir=out / "reports" / run_name,
        )
    training["seconds"] = round(time.perf_counter() - started, 1)
    training["mlflow"] = {
        "tracking_uri": tracking_uri,
        "experiment": opts.experiment,
        "run_id": run_id,
        "registered_model": card.id,
        "version": None,
    }
    card = card.replace(training=training, metrics={"test": metrics} if metrics else {})
    write_card(card, card.path)
    _log_run(client, tracking, run_id, card, opts, out / "reports" / run_name, metrics)
    training["mlflow"]["version"] = tracking.register_version(
        client, card.id, run_id, "model", description=card.description
    )
    write_card(card, card.path)
    client.log_artifact(run_id, str(card.path / "card.json"), "model")
    return card


def _load_init(network: Any, base: ModelCard | None) -> bool:
    """Copy a registry generator's weights into ``network`` (same architecture, strict)."""
    if base is None:
        return False
    from napari_mrisynth.models.registry import load_weights

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


def _client(tracking_uri: str) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri)


def _log_run(
    client: Any,
    tracking: Any,
    run_id: str,
    card: ModelCard,
    opts: GenerativeOptions,
    report_dir: Path,
    metrics: dict[str, Any],
) -> None:
    tracking.log_params(
        client,
        run_id,
        {
            "options": opts.record(),
            "card": {
                "id": card.id,
                "version": card.version,
                "task": card.task,
                "family": card.inference["family"],
                "architecture": card.architecture,
                "input_spacing": list(card.input.spacing),
                "input_shape": list(card.input.shape),
            },
            "data": card.training["data"],
            "participants": card.training["participants"],
            "simulated": card.training["simulated"],
            "splits": {k: len(v) for k, v in card.training["splits"].items()},
        },
    )
    from napari_mrisynth.reports.report import flatten_metrics

    for name, value in flatten_metrics(metrics, "test/").items():
        client.log_metric(run_id, name, value)
    client.log_artifacts(run_id, str(card.path), "model")
    if report_dir.exists():
        client.log_artifacts(run_id, str(report_dir), "reports")
