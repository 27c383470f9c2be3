"""One run recipe for every model the project trains: segmenters, classifiers and generators.

::

    participants.tsv -> stratified, seeded subject split (or the base model's)
    -> subjects cached on the model grid -> MLflow logger -> Lightning Trainer(s)
    -> registry model (safetensors + card) -> test metrics on held-out subjects
    -> card -> MLflow parameters, metrics, artifacts and a registered model version

A task supplies only what differs: its networks and Lightning modules, how many stages it
fits, and how its held-out test metrics are measured (:mod:`.train` for segmentation and
classification, :mod:`napari_mrisynth.synthesis.train` for the generator families).

Under a distributed strategy every rank runs the recipe; only global rank 0 writes the
model, the card, the reports and the MLflow registration.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_mrisynth.errors import MissingExtraError, ModelError, MrisynthError
from napari_mrisynth.models import tracking
from napari_mrisynth.models.card import InputSpec, ModelCard, write_card

MIXED_PRECISIONS = ("16-mixed", "bf16-mixed")


@dataclass
class RunOptions:
    """What every training run is configured by (each task's options extend it)."""

    id: str | None = None
    version: str = "1.0.0"
    epochs: int = 50
    max_steps: int = -1
    batch_size: int = 2
    fractions: Sequence[float] = (0.6, 0.2, 0.2)
    seed: int = 0
    init: str | None = None
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
    #: Extra Lightning callbacks (not recorded in the card).
    callbacks: list[Any] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        """The options as plain JSON values (for the card and MLflow), without callbacks."""
        data = dataclasses.asdict(self)
        data.pop("callbacks", None)
        return json.loads(json.dumps(data, default=list))


def require_lightning() -> Any:
    """Lightning's ``pytorch`` package, or :class:`MissingExtraError` (with MLflow checked)."""
    try:
        import lightning.pytorch as pl
    except ImportError as exc:
        raise MissingExtraError("training needs Lightning and MLflow", "train") from exc
    tracking.require_mlflow("training")
    return pl


def resolve_init(ref: str, task: str, out: Path) -> ModelCard:
    """The base model for fine-tuning: a model folder, or a registry ``id[@version]``
    (``out`` is searched first, then the usual registry folders)."""
    from napari_mrisynth.models.card import read_card
    from napari_mrisynth.models.registry import find_model, model_roots

    if (Path(ref) / "card.json").exists():
        card = read_card(ref)
    else:
        card = find_model(ref, task=task, roots=[("folder", out), *model_roots()])
    if card.task != task:
        raise ModelError(f"--init {ref}: {card.ref} is a {card.task} model, not {task}")
    return card


def inherited_splits(base: ModelCard | None, data: Path, participants: list[dict]) -> dict | None:
    """The base model's split when fine-tuning on the cohort it was trained on.

    A new seeded split would put some of the base model's training subjects into the test
    set, and the fine-tuned model's test figures would no longer be held out. The cohort
    counts as the same when it is the folder the base was trained on, or when it holds every
    subject the base's split names (a cohort rebuilt elsewhere from the same recipe cannot
    be told from a different one by its ids, and keeping the split is harmless there).
    """
    if base is None or not base.training.get("splits"):
        return None
    ids = {row["participant_id"] for row in participants}
    same_folder = Path(str(base.training.get("data", ""))).resolve() == data.resolve()
    named = {s for v in base.training["splits"].values() for s in v}
    if not same_folder and not named <= ids:
        return None
    splits = {k: [s for s in v if s in ids] for k, v in base.training["splits"].items()}
    return splits if splits.get("train") and splits.get("val") else None


def model_spec(
    spacing: float, multiple: int | None = None, *, brain_mask: bool = False
) -> InputSpec:
    """The input spec of a new model: the default model grid at ``spacing`` mm (sides padded
    to ``multiple`` voxels; see :func:`~napari_mrisynth.preprocess.default_model_grid`)."""
    from napari_mrisynth.preprocess import default_model_grid

    fields = default_model_grid(spacing, multiple).to_input_spec_fields()
    return InputSpec(**fields, brain_mask=brain_mask)


def _launcher_rank() -> int:
    """This process's rank as a launcher set it before Lightning starts (0 when unset)."""
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


def _read_simulated(data: Path) -> bool:
    try:
        return bool(json.loads((data / "dataset_description.json").read_text())["Simulated"])
    except (OSError, KeyError, ValueError):
        return False


def _software() -> dict[str, str]:
    import lightning
    import mlflow

    return {"lightning": lightning.__version__, "mlflow": mlflow.__version__}


class TrainingRun:
    """One training run, step by step (see the module docstring).

    Parameters
    ----------
    task : str
        ``segmentation``, ``classification`` or ``generation`` (the card's task).
    data : path
        The cohort folder (``participants.tsv``, ``sub-*/``).
    out : path
        The registry folder the model goes to; ``cache/``, ``checkpoints/`` and
        ``reports/`` are made beside it.
    options : RunOptions
    """

    def __init__(self, task: str, data: Path, out: Path, options: RunOptions):
        from napari_mrisynth.training.splits import read_participants

        self.pl = require_lightning()
        self.started = time.perf_counter()
        self.task, self.data, self.out, self.opts = task, Path(data), Path(out), options
        self._check_precision()
        self.participants = read_participants(self.data)
        self.simulated = _read_simulated(self.data)
        self.splits: dict[str, list[str]] = {}
        self.inherited_from: ModelCard | None = None
        self.tracking_uri = options.tracking_uri or tracking.default_tracking_uri()
        self.logger: Any = None

    def _check_precision(self) -> None:
        import torch

        opts = self.opts
        gpu = opts.accelerator in ("gpu", "cuda") or (
            opts.accelerator == "auto" and torch.cuda.is_available()
        )
        if opts.precision in MIXED_PRECISIONS and not gpu:
            raise MrisynthError(f"--precision {opts.precision} needs a GPU; on the CPU use 32-true")

    # -- data ------------------------------------------------------------------------------
    def split(self, bases: Sequence[ModelCard | None] = ()) -> dict[str, list[str]]:
        """Stratified, seeded train/val/test split of the cohort's subjects, or the split of
        the first base model trained on this cohort (its test subjects stay held out)."""
        from napari_mrisynth.training.splits import split_subjects

        splits = split_subjects(self.participants, fractions=self.opts.fractions,
                                seed=self.opts.seed)  # fmt: skip
        if not splits["train"] or not splits["val"]:
            raise MrisynthError(f"{self.data}: {len(self.participants)} subjects are too few to "
                                "split into train, validation and test")  # fmt: skip
        for base in bases:
            inherited = inherited_splits(base, self.data, self.participants)
            if inherited:
                self.inherited_from, splits = base, inherited
                break
        self.splits = splits
        return splits

    def check_new(self, model_id: str) -> None:
        """Refuse to replace ``model_id@version`` in the registry folder unless asked to."""
        target = self.out / f"{model_id}-{self.opts.version}"
        if target.exists() and not self.opts.overwrite:
            raise ModelError(f"{target}: model {model_id}@{self.opts.version} already exists; "
                             "give it a new --version, or --overwrite")  # fmt: skip

    def cache(self, subjects: Sequence[str], spec: InputSpec, *, labels: bool | None) -> dict:
        """The subjects on the model grid, once (another rank or a rerun reads the cache);
        returns ``{subject: CachedSubject}``."""
        from napari_mrisynth.training import data as tdata

        bar = None
        if self.opts.progress and _launcher_rank() == 0:
            from tqdm import tqdm

            bar = tqdm(total=len(subjects), unit="subject", desc="model grid")
        cached = tdata.cache_subjects(
            self.data, list(subjects), spec, self.out / "cache", source=self.opts.source,
            labels=labels, progress=(lambda done, total: bar.update(done - bar.n)) if bar else None,
        )  # fmt: skip
        if bar:
            bar.close()
        return {c.subject: c for c in cached}

    # -- fitting ---------------------------------------------------------------------------
    def start_logging(self, model_id: str, **tags: str) -> str:
        """Lightning's MLflow logger for this run (it creates the run on rank 0 only);
        returns the run name ``id@version``."""
        run_name = f"{model_id}@{self.opts.version}"
        self.logger = tracking.make_logger(
            self.tracking_uri, self.opts.experiment, run_name,
            {"task": self.task, "model_id": model_id, "model_version": self.opts.version, **tags},
        )  # fmt: skip
        self.pl.seed_everything(self.opts.seed, workers=True, verbose=False)
        return run_name

    def trainer(self, epochs: int, callbacks: Sequence[Any] = (), *, checkpointing: bool) -> Any:
        """A Lightning Trainer with the run's accelerator, strategy, precision and logger."""
        opts = self.opts
        return self.pl.Trainer(
            accelerator=opts.accelerator, devices=opts.devices, strategy=opts.strategy,
            num_nodes=opts.num_nodes, precision=opts.precision, max_epochs=epochs,
            max_steps=opts.max_steps, logger=self.logger,
            callbacks=[*callbacks, *opts.callbacks], log_every_n_steps=1,
            num_sanity_val_steps=0, enable_model_summary=False,
            enable_progress_bar=opts.progress, enable_checkpointing=checkpointing,
            default_root_dir=self.out,
        )  # fmt: skip

    # -- the model -------------------------------------------------------------------------
    def training_record(self, trainer: Any, **extra: Any) -> dict[str, Any]:
        """The card's ``training`` section: data, split, seed, options, world size, plus the
        task's own entries."""
        return {
            "data": str(self.data.resolve()),
            "participants": len(self.participants),
            "simulated": self.simulated,
            "splits": self.splits,
            "split_fractions": list(self.opts.fractions),
            "seed": self.opts.seed,
            **extra,
            "options": self.opts.record(),
            "world_size": int(trainer.world_size),
            "strategy": type(trainer.strategy).__name__,
            "source": self.opts.source,
        }

    def card(self, **fields: Any) -> ModelCard:
        """A new card for this run, with its intended use and the training software."""
        from napari_mrisynth.models.card import SIMULATED_USE

        use = SIMULATED_USE if self.simulated else "Research use only, not for clinical decisions."
        return ModelCard(task=self.task, version=self.opts.version, intended_use=use,
                         software=_software(), **fields)  # fmt: skip

    def finish(
        self,
        card: ModelCard,
        state: Mapping[str, Any],
        test_metrics: Callable[[ModelCard, Path], dict[str, Any]],
        *,
        params: Mapping[str, Any] | None = None,
    ) -> ModelCard:
        """Save the model, measure it on the held-out subjects, and record everything.

        ``test_metrics(card, report_dir)`` returns the card's ``metrics["test"]`` (``{}``
        for none) and may write figures into ``report_dir``; ``params`` are logged on the
        MLflow run beside the options and the card's facts.
        """
        from napari_mrisynth.models.saving import save_model

        self.out.mkdir(parents=True, exist_ok=True)
        card = save_model(card, dict(state), self.out, overwrite=self.opts.overwrite)
        report_dir = self.out / "reports" / f"{card.id}@{card.version}"
        metrics = test_metrics(card, report_dir)
        run_id = self.logger.run_id
        training = dict(card.training)
        training["seconds"] = round(time.perf_counter() - self.started, 1)
        training["mlflow"] = {
            "tracking_uri": self.tracking_uri,
            "experiment": self.opts.experiment,
            "run_id": run_id,
            "registered_model": card.id,
            "version": None,
        }
        card = card.replace(training=training, metrics={"test": metrics} if metrics else {})
        write_card(card, card.path)
        client = tracking.mlflow_client(self.tracking_uri)
        facts = {"id": card.id, "version": card.version, "task": card.task}
        if "family" in card.inference:
            facts["family"] = card.inference["family"]
        facts.update(architecture=card.architecture, input_spacing=list(card.input.spacing),
                     input_shape=list(card.input.shape))  # fmt: skip
        tracking.log_params(client, run_id, {
            "options": self.opts.record(), "card": facts, "data": training["data"],
            "participants": training["participants"], "simulated": training["simulated"],
            "splits": {k: len(v) for k, v in training["splits"].items()},
            "world_size": training["world_size"], **(params or {}),
        })  # fmt: skip
        tracking.log_metrics(client, run_id, tracking.flatten_metrics(metrics, "test/"))
        client.log_artifacts(run_id, str(card.path), "model")
        if report_dir.exists():
            client.log_artifacts(run_id, str(report_dir), "reports")
        version = tracking.register_version(
            client, card.id, run_id, "model", description=card.description
        )
        training["mlflow"] = {**training["mlflow"], "version": version}
        card = card.replace(training=training)
        write_card(card, card.path)
        client.log_artifact(run_id, str(card.path / "card.json"), "model")
        return card
