"""Model cards: everything needed to use, trust and reproduce a model, beside its weights.

A model on disk is a folder holding ``card.json`` and ``model.safetensors``. The card is the
single source for the model's label schema (names and colours), its input grid (spacing,
shape, orientation of the model space), intensity normalisation, training data, metrics and
the SHA-256 of its weights; nothing about a model is hard-coded elsewhere.

No pickle is ever read: weights are safetensors only, and a card is plain JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_mrisynth.errors import ModelError

CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
CARD_SCHEMA_VERSION = 1

#: Tasks a card can declare. Generators (VAE, GAN, latent diffusion) are all "generation";
#: their family is the architecture's and ``inference["family"]``.
TASKS = ("segmentation", "classification", "generation")

#: Model ids: lower-case words joined by hyphens, e.g. ``seg-head-demo``.
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{1,63}$")
_VERSION = re.compile(r"^\d+\.\d+\.\d+([.-][0-9A-Za-z.]+)?$")

#: What every card says about the simulated demo models.
SIMULATED_USE = (
    "Research demonstration only. Trained and tested on simulated T1-weighted heads built from "
    "the MNI152 template (napari-mrisynth's simulated cohort), not on patients: NOT FOR "
    "CLINICAL USE, and figures on real scans will be lower."
)


@dataclass(frozen=True)
class LabelSpec:
    """One output value of a model: a segmentation label or a classifier's class."""

    value: int
    name: str
    color: tuple[int, int, int] = (128, 128, 128)
    #: Inside the brain mask (brain tissue, ventricles, sulcal CSF): what "brain volume" sums.
    brain: bool = False

    def to_json(self) -> dict[str, Any]:
        data = {"value": self.value, "name": self.name, "color": list(self.color)}
        if self.brain:
            data["brain"] = True
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelSpec:
        return cls(int(data["value"]), str(data["name"]), tuple(int(c) for c in data["color"]),
                   bool(data.get("brain", False)))  # fmt: skip


@dataclass(frozen=True)
class InputSpec:
    """The model's input grid and how images are brought onto it.

    ``spacing`` and ``origin`` are in ITK (x, y, z) order, millimetres, LPS patient
    coordinates, like :class:`~napari_mrisynth.volume.Volume`; ``shape`` is (z, y, x).
    ``space`` names the reference the images are affinely aligned to before resampling.
    """

    spacing: tuple[float, float, float]
    shape: tuple[int, int, int]
    origin: tuple[float, float, float]
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    space: str = "mrisynth-head-mni152-2009c"
    modality: str = "MR"
    sequence: str = "T1w"
    alignment: str = "affine"
    #: Multiply the image by the reference brain mask (dilated) after alignment.
    brain_mask: bool = False
    normalisation: dict[str, Any] = field(
        default_factory=lambda: {"method": "percentile", "lower": 0.5, "upper": 99.5}
    )

    def to_json(self) -> dict[str, Any]:
        return {
            "spacing": list(self.spacing),
            "shape": list(self.shape),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "orientation": "LPS",
            "space": self.space,
            "modality": self.modality,
            "sequence": self.sequence,
            "alignment": self.alignment,
            "brain_mask": self.brain_mask,
            "normalisation": dict(self.normalisation),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InputSpec:
        return cls(
            spacing=tuple(float(v) for v in data["spacing"]),
            shape=tuple(int(v) for v in data["shape"]),
            origin=tuple(float(v) for v in data["origin"]),
            direction=tuple(float(v) for v in data.get("direction", InputSpec.direction)),
            space=str(data.get("space", InputSpec.space)),
            modality=str(data.get("modality", "MR")),
            sequence=str(data.get("sequence", "T1w")),
            alignment=str(data.get("alignment", "affine")),
            brain_mask=bool(data.get("brain_mask", False)),
            normalisation=dict(data.get("normalisation", {"method": "percentile"})),
        )


@dataclass
class ModelCard:
    """A model's identity, interface, provenance and measured quality.

    Parameters
    ----------
    id, version : str
        ``seg-head-demo`` and ``1.0.0``; together they name one immutable set of weights.
    task : {"segmentation", "classification", "generation"}
    title, description : str
    architecture : dict
        ``{"name": <class in monai.networks.nets>, "args": {...}}``: enough to rebuild the
        network before loading the weights.
    labels : list of LabelSpec
        Segmentation labels (value 0 is background and is not listed) or classifier classes
        (values 0..n-1, in output order).
    input : InputSpec
    inference : dict
        ``roi_size`` (z, y, x), ``overlap``, ``sw_batch_size`` for sliding-window inference.
    training : dict
        Data (and whether it is simulated), split, seed, epochs, MLflow run id and tracking
        URI, base model for fine-tuning.
    metrics : dict
        Held-out test metrics, e.g. ``{"test": {"dice": {...}, "auc": {"value", "ci95"}}}``.
    weights : dict
        ``file``, ``sha256``, ``parameters``, ``bytes``.
    intended_use : str
    created : str
        ISO 8601 time the model was written.
    software : dict
        Versions of napari-mrisynth, torch and MONAI that wrote it.
    """

    id: str
    version: str
    task: str
    title: str
    architecture: dict[str, Any]
    labels: list[LabelSpec]
    input: InputSpec
    description: str = ""
    inference: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    weights: dict[str, Any] = field(default_factory=dict)
    intended_use: str = SIMULATED_USE
    created: str = ""
    software: dict[str, Any] = field(default_factory=dict)
    #: Folder the card was read from (not serialised).
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not _ID.match(self.id):
            raise ModelError(f"model id {self.id!r}: use 2-64 lower-case letters, digits, '-._'")
        if not _VERSION.match(self.version):
            raise ModelError(f"model {self.id}: version {self.version!r} is not MAJOR.MINOR.PATCH")
        if self.task not in TASKS:
            raise ModelError(f"model {self.id}: task {self.task!r} is not one of {TASKS}")
        if "name" not in self.architecture:
            raise ModelError(f"model {self.id}: architecture has no 'name'")
        values = [label.value for label in self.labels]
        if len(set(values)) != len(values):
            raise ModelError(f"model {self.id}: label values repeat: {values}")
        if self.task == "classification" and sorted(values) != list(range(len(values))):
            raise ModelError(f"model {self.id}: classes must be numbered 0..n-1, got {values}")

    # -- derived facts -------------------------------------------------------------------
    @property
    def ref(self) -> str:
        """``id@version``."""
        return f"{self.id}@{self.version}"

    @property
    def label_names(self) -> dict[int, str]:
        return {label.value: label.name for label in self.labels}

    @property
    def label_colors(self) -> dict[int, tuple[int, int, int]]:
        return {label.value: label.color for label in self.labels}

    @property
    def brain_labels(self) -> tuple[int, ...]:
        """Values of the labels inside the brain mask (empty when the card does not say)."""
        return tuple(label.value for label in self.labels if label.brain)

    @property
    def out_channels(self) -> int:
        """Network output channels: background + labels, or one per class."""
        if self.task == "segmentation":
            return max(label.value for label in self.labels) + 1
        if self.task == "generation":
            return 1
        return len(self.labels)

    def metric(self, name: str) -> float | None:
        """A test metric by dotted name (``auc``, ``dice_mean``, ``dice.frontal_gm``).

        Values stored as ``{"value": v, "ci95": [lo, hi]}`` give ``v``; missing gives None.
        """
        node: Any = self.metrics.get("test", self.metrics)
        for part in name.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        if isinstance(node, dict):
            node = node.get("value")
        return float(node) if isinstance(node, (int, float)) else None

    # -- JSON ----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        data = {
            "schema": CARD_SCHEMA_VERSION,
            "id": self.id,
            "version": self.version,
            "task": self.task,
            "title": self.title,
            "description": self.description,
            "intended_use": self.intended_use,
            "architecture": self.architecture,
            "labels": [label.to_json() for label in self.labels],
            "input": self.input.to_json(),
            "inference": self.inference,
            "training": self.training,
            "metrics": self.metrics,
            "weights": self.weights,
            "created": self.created,
            "software": self.software,
        }
        return json.loads(json.dumps(data))  # plain types only, fails early on numpy scalars

    @classmethod
    def from_json(cls, data: dict[str, Any], path: Path | None = None) -> ModelCard:
        where = Path(path) / CARD_FILE if path is not None else "card"
        try:
            schema = int(data.get("schema", CARD_SCHEMA_VERSION))
            if schema > CARD_SCHEMA_VERSION:
                raise ModelError(
                    f"{where}: card schema {schema} is newer than this napari-mrisynth reads "
                    f"({CARD_SCHEMA_VERSION}); upgrade napari-mrisynth"
                )
            return cls(
                id=str(data["id"]),
                version=str(data["version"]),
                task=str(data["task"]),
                title=str(data.get("title", data["id"])),
                description=str(data.get("description", "")),
                intended_use=str(data.get("intended_use", "")),
                architecture=dict(data["architecture"]),
                labels=[LabelSpec.from_json(item) for item in data["labels"]],
                input=InputSpec.from_json(data["input"]),
                inference=dict(data.get("inference", {})),
                training=dict(data.get("training", {})),
                metrics=dict(data.get("metrics", {})),
                weights=dict(data.get("weights", {})),
                created=str(data.get("created", "")),
                software=dict(data.get("software", {})),
                path=path,
            )
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"{type(exc).__name__}: {exc}"
            raise ModelError(f"{where}: not a valid model card ({problem})") from exc

    def replace(self, **changes: Any) -> ModelCard:
        return dataclasses.replace(self, **changes)


def read_card(folder: str | Path) -> ModelCard:
    """Read ``folder/card.json``; a missing or malformed card raises :class:`ModelError`."""
    path = Path(folder) / CARD_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ModelError(f"{path}: no model card") from exc
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{path}: unreadable model card ({exc})") from exc
    if not isinstance(data, dict):
        raise ModelError(f"{path}: a model card is a JSON object")
    return ModelCard.from_json(data, path=Path(folder))


def write_card(card: ModelCard, folder: str | Path) -> Path:
    """Write ``folder/card.json`` (atomically) and return its path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / CARD_FILE
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(card.to_json(), indent=2) + "\n", encoding="utf-8")
    partial.replace(path)
    return path


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()
