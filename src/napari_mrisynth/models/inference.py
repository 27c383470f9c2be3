"""Segment and classify a T1 head scan with a registry model, back on the scan's own grid.

One path for the CLI, the napari widgets, the reports and the training code's test metrics:

    source (DICOM folder / NIfTI / Volume) -> checks -> affine alignment to the model space
    -> resampling onto the model grid -> intensity normalisation -> network
    (sliding window, mixed precision on GPU) -> the exact inverse onto the source grid

The model card says everything model-specific (grid, normalisation, labels, window).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import InputError, ModelError
from napari_mrisynth.models.card import ModelCard
from napari_mrisynth.volume import Volume

Progress = Callable[[int, int, str], None]

#: Stages reported to ``progress(done, total, stage)``.
STAGES = ("model", "prepare", "infer", "inverse")


@dataclass
class Segmentation:
    """A label map on the source scan's grid, and what made it."""

    labels: Volume
    card: ModelCard
    device: str
    timings: dict[str, float]
    source: str | None = None
    alignment: Any = None

    @property
    def seconds(self) -> float:
        """Wall time of the whole call (the stages; ``prepare.*`` entries detail ``prepare``)."""
        return total_seconds(self.timings)

    @property
    def volumes_ml(self) -> dict[str, float]:
        """Volume of every label of the card, in millilitres (0 when absent)."""
        return {row["name"]: row["ml"] for row in self.table()}

    def table(self) -> list[dict[str, Any]]:
        """One row per card label: value, name, voxels, mL."""
        data = np.asarray(self.labels.data)
        counts = np.bincount(data.ravel(), minlength=self.card.out_channels)
        voxel_ml = float(np.prod(self.labels.spacing)) / 1000.0
        return [
            {
                "value": label.value,
                "name": label.name,
                "voxels": int(counts[label.value]),
                "ml": round(float(counts[label.value]) * voxel_ml, 3),
            }
            for label in self.card.labels
        ]

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model": self.card.ref,
            "device": self.device,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "volumes_ml": self.volumes_ml,
        }


@dataclass
class Classification:
    """Class probabilities for one scan, and optionally where the network looked."""

    probabilities: dict[str, float]
    card: ModelCard
    device: str
    timings: dict[str, float]
    source: str | None = None
    saliency: Volume | None = None
    alignment: Any = None
    predicted: str = field(init=False)

    def __post_init__(self) -> None:
        self.predicted = max(self.probabilities, key=self.probabilities.__getitem__)

    @property
    def seconds(self) -> float:
        """Wall time of the whole call (the stages; ``prepare.*`` entries detail ``prepare``)."""
        return total_seconds(self.timings)

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "model": self.card.ref,
            "predicted": self.predicted,
            "probabilities": {k: round(v, 6) for k, v in self.probabilities.items()},
            "device": self.device,
            "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
            "simulated_training_data": bool(self.card.training.get("simulated", False)),
        }


def total_seconds(timings: dict[str, float]) -> float:
    """Sum of the top-level stages of a timings dict (sub-stages contain a dot)."""
    return float(sum(v for k, v in timings.items() if "." not in k))


# -- models, cached so that a batch does not reload them ----------------------------------
_LOADED: OrderedDict[tuple, Any] = OrderedDict()
_CACHE_SIZE = 4


def get_model(model: str | ModelCard | None, task: str, device: Any = None) -> Any:
    """A :class:`~napari_mrisynth.models.weights.LoadedModel`, cached per model and device."""
    from napari_mrisynth.models.device import choose_device
    from napari_mrisynth.models.registry import find_model
    from napari_mrisynth.models.weights import load_model

    torch_device = choose_device(device)
    if model is None or isinstance(model, str):
        from napari_mrisynth.models.registry import default_model

        card = default_model(task) if model is None else find_model(model, task=task)
    else:
        card = model
    if card.task != task:
        raise ModelError(f"model {card.ref} is a {card.task} model, not {task}")
    key = (card.ref, str(card.path), card.weights.get("sha256"), str(torch_device))
    if key in _LOADED:
        _LOADED.move_to_end(key)
        return _LOADED[key]
    loaded = load_model(card, task, device=torch_device)
    _LOADED[key] = loaded
    while len(_LOADED) > _CACHE_SIZE:
        _LOADED.popitem(last=False)
    return loaded


def resolve_source(source: Volume | str | Path, *, series: str | int | None = None) -> Volume:
    """A Volume from a Volume, a DICOM folder or file, NIfTI, MHA or NRRD path."""
    if isinstance(source, Volume):
        return source.compute()
    from napari_mrisynth.io.files import load_volume

    return load_volume(source, series=series).compute()


def _source_name(source: Volume | str | Path, volume: Volume) -> str:
    if isinstance(source, Volume):
        return str(volume.metadata.get("source") or volume.metadata.get("name") or "volume")
    return str(source)


def network_logits(network: Any, image: np.ndarray, inference: dict[str, Any], device: Any) -> Any:
    """Logits (1, C, z, y, x) on the model grid: sliding window when the card's
    ``inference`` ROI is smaller than the image."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    roi = tuple(int(v) for v in inference.get("roi_size", image.shape))
    amp = device.type == "cuda"
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        if all(r >= s for r, s in zip(roi, image.shape, strict=True)):
            logits = network(x)
        else:
            from monai.inferers import sliding_window_inference

            logits = sliding_window_inference(
                x,
                roi_size=roi,
                sw_batch_size=int(inference.get("sw_batch_size", 2)),
                predictor=network,
                overlap=float(inference.get("overlap", 0.25)),
                mode="gaussian",
            )
    return logits.float()


def _prepare(volume: Volume, card: ModelCard, device: Any, name: str) -> Any:
    from napari_mrisynth.preprocess import prepare

    if card.input.modality and volume.metadata.get("modality") not in (None, card.input.modality):
        raise InputError(
            f"{name}: modality {volume.metadata.get('modality')} but model {card.ref} "
            f"expects {card.input.modality} {card.input.sequence}"
        )
    return prepare(volume, card.input, device=device, source=name)


def segment(
    source: Volume | str | Path,
    model: str | ModelCard | None = None,
    *,
    device: Any = None,
    series: str | int | None = None,
    progress: Progress | None = None,
) -> Segmentation:
    """Segment a T1 head scan; the labels land on the source's own grid.

    Parameters
    ----------
    source : Volume or path
        A loaded volume, a DICOM folder or file, or a NIfTI/MHA/NRRD file, in any
        orientation, with or without skull.
    model : str or ModelCard, optional
        Registry id (``seg-head-demo`` or ``seg-head-demo@1.0.0``) or a card; the default
        segmentation model when omitted.
    device : str or torch.device, optional
        ``auto`` (cuda -> mps -> cpu, announced when it falls back to the CPU), or one device.
    series : str or int, optional
        The series to take from a DICOM folder holding several.
    progress : callable(done, total, stage), optional

    Returns
    -------
    Segmentation
        ``labels`` (uint8, or uint16 past 255 labels) on the source geometry, with the card's
        names and colours in its metadata.
    """
    import torch

    from napari_mrisynth.preprocess import from_model_grid

    run = _Run.start("segmentation", source, model, device, series, progress)
    card, device, volume, name = run.loaded.card, run.loaded.device, run.volume, run.name
    prepared, timings, step = run.prepared, run.timings, run.step
    logits = run.logits[0]
    offsets = card.inference.get("logit_offsets")
    if offsets is not None:
        if len(offsets) != card.out_channels:
            raise ModelError(f"model {card.ref}: {len(offsets)} logit offsets in its card for "
                             f"{card.out_channels} outputs")  # fmt: skip
        # per-label offsets fitted on validation subjects (training.calibrate)
        logits = (
            logits
            + torch.as_tensor(offsets, dtype=logits.dtype, device=logits.device)[
                :, None, None, None
            ]
        )
    probabilities = torch.softmax(logits, dim=0)
    step("infer")
    dtype = np.uint8 if card.out_channels <= 256 else np.uint16
    labels = from_model_grid(
        probabilities, prepared.grid, prepared.alignment, volume, reduce="argmax", device=device,
        out_dtype=dtype,
    )  # fmt: skip
    step("inverse")
    result = volume.with_data(
        labels,
        name=f"{card.title} labels",
        model=card.ref,
        label_names={str(k): v for k, v in card.label_names.items()},
        label_colors={str(k): list(v) for k, v in card.label_colors.items()},
        source=name,
    )
    return Segmentation(result, card, str(device), timings, name, prepared.alignment)


def classify(
    source: Volume | str | Path,
    model: str | ModelCard | None = None,
    *,
    device: Any = None,
    saliency: bool = False,
    series: str | int | None = None,
    progress: Progress | None = None,
) -> Classification:
    """Classify a T1 head scan (bvFTD vs control); optionally map where the network looked.

    The saliency map is Grad-CAM on the layer named by the card's ``inference.saliency_layer``
    (else gradient x input), upsampled to the model grid, normalised to 0..1 and resampled
    onto the source grid, so it overlays the scan it explains.
    """
    import torch

    from napari_mrisynth.preprocess import from_model_grid

    run = _Run.start("classification", source, model, device, series, progress)
    card, device, volume, name = run.loaded.card, run.loaded.device, run.volume, run.name
    prepared, timings, step = run.prepared, run.timings, run.step
    logits = run.logits[0]
    probabilities = torch.softmax(logits, dim=0).cpu().numpy()
    by_name = {label.name: float(probabilities[label.value]) for label in card.labels}
    step("infer")
    saliency_volume = None
    if saliency:
        target = int(np.argmax(probabilities))
        positive = [label.value for label in card.labels if label.name.lower() == "bvftd"]
        target = positive[0] if positive else target
        heat = saliency_map(run.loaded.network, prepared.image, target, card, device)
        on_source = from_model_grid(
            heat[None], prepared.grid, prepared.alignment, volume, reduce=None, device=device
        )[0]
        saliency_volume = volume.with_data(
            on_source.astype(np.float32),
            name=f"{card.title} saliency ({card.label_names[target]})",
            model=card.ref,
            source=name,
            saliency_class=card.label_names[target],
        )
        step("inverse")
    return Classification(by_name, card, str(device), timings, name, saliency_volume,
                          prepared.alignment)  # fmt: skip


@dataclass
class _Run:
    """What segment and classify share: the model, the scan, its preparation and logits."""

    loaded: Any
    volume: Volume
    name: str
    prepared: Any
    logits: Any
    timings: dict[str, float]
    step: Callable[[str], None]

    @classmethod
    def start(
        cls,
        task: str,
        source: Volume | str | Path,
        model: str | ModelCard | None,
        device: Any,
        series: str | int | None,
        progress: Progress | None,
    ) -> _Run:
        timings: dict[str, float] = {}
        step = _stepper(progress, timings)
        loaded = get_model(model, task, device)
        step("model")
        volume = resolve_source(source, series=series)
        name = _source_name(source, volume)
        prepared = _prepare(volume, loaded.card, loaded.device, name)
        timings.update({f"prepare.{k}": v for k, v in prepared.timings.items()})
        step("prepare")
        logits = network_logits(
            loaded.network, prepared.image, loaded.card.inference, loaded.device
        )
        if logits.shape[1] != loaded.card.out_channels:
            raise ModelError(
                f"model {loaded.card.ref}: network gives {logits.shape[1]} outputs, card "
                f"expects {loaded.card.out_channels}"
            )
        return cls(loaded, volume, name, prepared, logits, timings, step)


def saliency_map(network: Any, image: np.ndarray, target: int, card: ModelCard, device: Any):
    """Class evidence map on the model grid, float32 (z, y, x) in 0..1."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None].to(device)
    layer = card.inference.get("saliency_layer")
    with torch.enable_grad():
        if layer:
            from monai.visualize import GradCAM

            try:
                cam = GradCAM(nn_module=network, target_layers=layer)
                heat = cam(x=x, class_idx=target)[0, 0]
            except (AttributeError, KeyError, ValueError) as exc:
                problem = f"model {card.ref}: saliency layer {layer!r} unusable: {exc}"
                raise ModelError(problem) from exc
        else:
            x.requires_grad_(True)
            score = network(x)[0, target]
            (grad,) = torch.autograd.grad(score, x)
            heat = (grad * x).abs()[0, 0]
    heat = heat.detach().float()
    if heat.shape != tuple(image.shape):
        heat = torch.nn.functional.interpolate(
            heat[None, None], size=tuple(image.shape), mode="trilinear", align_corners=False
        )[0, 0]
    lo, hi = float(heat.min()), float(heat.max())
    heat = (heat - lo) / (hi - lo) if hi > lo else torch.zeros_like(heat)
    return heat.cpu().numpy().astype(np.float32)


def _stepper(progress: Progress | None, timings: dict[str, float]) -> Callable[[str], None]:
    """Record the seconds each stage took and report it."""
    last = [time.perf_counter()]

    def step(stage: str) -> None:
        now = time.perf_counter()
        timings[stage] = now - last[0]
        last[0] = now
        if progress is not None:
            progress(STAGES.index(stage) + 1, len(STAGES), stage)

    return step


def segment_many(
    sources: Sequence[Volume | str | Path], model: str | ModelCard | None = None, **kwargs: Any
) -> list[Segmentation]:
    """:func:`segment` over several scans, loading the model once."""
    return [segment(source, model, **kwargs) for source in sources]


def classify_many(
    sources: Sequence[Volume | str | Path], model: str | ModelCard | None = None, **kwargs: Any
) -> list[Classification]:
    """:func:`classify` over several scans, loading the model once."""
    return [classify(source, model, **kwargs) for source in sources]
