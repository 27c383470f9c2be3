"""Generate synthetic T1 volumes from a registry generator, with full provenance.

::

    from napari_mrisynth import generate
    volumes = generate("ldm-bvftd-demo", n=10, condition="bvftd", seed=7, out="synth/")

Every volume has its own noise, drawn from a generator seeded by ``(seed, index)``: the same
seed and index give the same volume whatever the batch size or the device it ran on
(up to floating-point differences between devices). Each file written has a JSON sidecar:
model id, version and weights SHA-256, seed and index, condition, sampler and steps, time.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import ModelError
from napari_mrisynth.models.card import ModelCard
from napari_mrisynth.models.conditions import Condition, ConditionError
from napari_mrisynth.volume import Volume

FORMATS = ("nifti", "dicom")
PRECISIONS = {"32": None, "bf16": "bfloat16", "16": "float16"}
#: DICOM stores integers: intensity 1.0 (the 99.5th percentile of the head) -> 1000.
DICOM_SCALE = 1000.0


@dataclass
class Synthetic:
    """One generated volume, on its generator's model grid, and where it came from."""

    volume: Volume
    provenance: dict[str, Any]
    path: Path | None = None
    sidecar: Path | None = None
    #: The volume's exact label map (generators that make one: the anatomy-first family).
    labels: Volume | None = None
    labels_path: Path | None = None


def label_schema() -> dict[str, dict[str, Any]]:
    """``label_names`` and ``label_colors`` of a generated label map (the template head's
    schema, which the anatomy-first family warps), as a segmentation's metadata holds them."""
    from napari_mrisynth.anatomy.labels import LABELS

    return {
        "label_names": {str(k): name for k, (name, _) in LABELS.items()},
        "label_colors": {str(k): list(rgb) for k, (_, rgb) in LABELS.items()},
    }


def noise_seed(seed: int, index: int) -> int:
    """The seed of volume ``index``'s noise (independent streams per index)."""
    return int(
        np.random.SeedSequence([int(seed), int(index)]).generate_state(1, np.uint64)[0] % (2**63)
    )


def volume_noise(shape: Sequence[int], seed: int, index: int) -> Any:
    """Standard normal noise of ``shape`` for volume ``index``, drawn on the CPU."""
    import torch

    generator = torch.Generator().manual_seed(noise_seed(seed, index))
    return torch.randn(tuple(shape), generator=generator)


def list_generators(family: str | None = None, *, roots: Any = None) -> list[ModelCard]:
    """Generator cards in the registry, optionally of one family (vae, gan, ldm)."""
    from napari_mrisynth.models.registry import list_models

    cards = list_models("generation", roots=roots)
    return [c for c in cards if family is None or c.inference.get("family") == family]


def rank_generators(
    metric: str = "fid", *, family: str | None = None, roots: Any = None
) -> list[tuple[ModelCard, float | None]]:
    """Generators with their test ``metric``, best first (lower is better for FID, KID,
    MMD and the memorization rate; higher for IS); those without it come last."""
    lower_better = metric.split(".")[0] not in ("is", "inception_score")
    cards = list_generators(family, roots=roots)
    scored = [(c, c.metric(metric)) for c in cards]
    known = sorted(
        (p for p in scored if p[1] is not None), key=lambda p: p[1], reverse=not lower_better
    )
    return known + [p for p in scored if p[1] is None]


def _card(model: str | ModelCard, roots: Any) -> ModelCard:
    from napari_mrisynth.models.registry import find_model

    card = (
        model if isinstance(model, ModelCard) else find_model(model, task="generation", roots=roots)
    )
    if card.task != "generation":
        raise ModelError(f"model {card.ref} is a {card.task} model, not a generator")
    return card


def _check_condition(card: ModelCard, condition: Condition) -> None:
    used = card.inference.get("conditions", ["diagnosis"])
    for name in ("age", "sex"):
        if getattr(condition, name) is not None and name not in used:
            raise ConditionError(
                f"model {card.ref} was trained on {', '.join(used)} only: it cannot take {name}"
            )


def generate(
    model: str | ModelCard,
    n: int = 1,
    *,
    condition: str | Condition = "bvftd",
    age: float | None = None,
    sex: str | None = None,
    seed: int = 0,
    out: str | Path | None = None,
    format: str | Sequence[str] = "nifti",
    device: Any = None,
    batch_size: int | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    precision: str = "32",
    start: int = 0,
    progress: Callable[[int, int], None] | None = None,
    roots: Any = None,
) -> list[Synthetic]:
    """Generate ``n`` volumes of one condition.

    Parameters
    ----------
    model : str or ModelCard
        ``"id"`` or ``"id@version"`` of a generation model, or its card.
    n : int
    condition : {"bvftd", "control"} or Condition
    age, sex : optional
        Only for models trained with those conditions.
    seed : int
        Volume ``start + i`` uses noise seeded by ``(seed, start + i)``.
    out : path, optional
        Folder for ``<model>_<condition>_seed<seed>_<index>.nii.gz`` (and ``.json``
        sidecars; with ``format`` including "dicom", a DICOM series folder per volume).
        None: nothing is written.
    device : str or torch.device, optional
        cuda -> mps -> cpu by default (CPU use is announced).
    batch_size : int, optional
        Volumes per forward pass (default: the card's, 4).
    steps, guidance : optional
        Latent diffusion only: DDIM steps and classifier-free guidance scale (card defaults).
    precision : {"32", "bf16", "16"}
        Float32 (exact, the default) or autocast to bfloat16 / float16 (GPU throughput).
    progress : callable(done, total), optional
        Called after each sampling step (latent diffusion) or batch, in units of
        volume-steps.

    Returns
    -------
    list of Synthetic
    """
    import torch

    from napari_mrisynth.models.inference import get_model
    from napari_mrisynth.preprocess.grid import ModelGrid

    if n < 1:
        raise ValueError(f"n = {n}: generate at least one volume")
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    formats = (format,) if isinstance(format, str) else tuple(format)
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise ValueError(f"format {bad}: use {' or '.join(FORMATS)}")
    card = _card(model, roots)
    cond = condition if isinstance(condition, Condition) else Condition.parse(condition, age, sex)
    _check_condition(card, cond)
    loaded = get_model(card, "generation", device=device)
    network, torch_device = loaded.network, loaded.device
    family = card.inference.get("family", getattr(network, "family", "?"))
    sampling: dict[str, Any] = {}
    if family == "ldm":
        sampling = {
            "sampler": card.inference.get("sampler", "ddim"),
            "steps": int(steps or card.inference.get("steps", 50)),
            "guidance": float(
                card.inference.get("guidance", 1.0) if guidance is None else guidance
            ),
            "eta": 0.0,
        }
    if family == "anatomy":
        default = card.inference.get("guidance", 1.0)
        sampling = {"guidance": float(default if guidance is None else guidance)}
    units = sampling.get("steps", 1)
    total = n * units
    batch = int(batch_size or card.inference.get("batch_size", 4))
    grid = ModelGrid.from_input_spec(card.input)
    vector = torch.tensor([cond.vector()], dtype=torch.float32)
    results: list[Synthetic] = []
    done = 0
    for first in range(start, start + n, batch):
        indices = list(range(first, min(first + batch, start + n)))
        noise = torch.stack([volume_noise(network.noise_shape, seed, i) for i in indices])
        c = vector.expand(len(indices), -1)

        def step(k: int, _steps: int, base: int = done, count: int = len(indices)) -> None:
            if progress is not None:
                progress(base + k * count, total)

        began = time.perf_counter()
        autocast = PRECISIONS[precision]
        with (
            torch.inference_mode(),
            torch.autocast(
                torch_device.type,
                dtype=getattr(torch, autocast or "float32"),
                enabled=autocast is not None,
            ),
        ):
            made = network.generate(
                c.to(torch_device),
                noise.to(torch_device),
                steps=sampling.get("steps", 50),
                guidance=sampling.get("guidance", 1.0),
                sampler=sampling.get("sampler", "ddim"),
                progress=step,
            )
        label_maps: Any = [None] * len(indices)
        if isinstance(made, tuple):  # (images, label maps)
            made, label_maps = made[0], made[1].cpu().numpy()[:, 0]
        images = made.float().cpu().numpy()[:, 0]
        seconds = (time.perf_counter() - began) / len(indices)
        done += len(indices) * units
        if progress is not None:
            progress(done, total)
        for i, image, label_map in zip(indices, images, label_maps, strict=True):
            provenance = _provenance(card, cond, seed, i, sampling, seconds, torch_device)
            provenance["precision"] = precision
            name = f"{card.id}_{cond.label}_seed{seed}_{i:04d}"
            volume = grid.volume(
                image.astype(np.float32),
                name=name,
                modality="MR",
                description=f"SYNTHETIC T1 ({card.ref})",
                synthetic=True,
            )
            item = Synthetic(volume, provenance)
            if label_map is not None:
                item.labels = volume.with_data(
                    label_map.astype(np.uint8), name=f"{name}_labels",
                    description=f"labels of {name}", **label_schema(),
                )  # fmt: skip
            if out is not None:
                _write(item, Path(out), name, formats, i)
            results.append(item)
    return results


def _provenance(
    card: ModelCard,
    cond: Condition,
    seed: int,
    index: int,
    sampling: dict[str, Any],
    seconds: float,
    device: Any,
) -> dict[str, Any]:
    import monai
    import torch

    from napari_mrisynth._version import __version__

    return {
        "synthetic": True,
        "generator": {
            "id": card.id,
            "version": card.version,
            "family": card.inference.get("family"),
            "weights_sha256": card.weights.get("sha256"),
            "architecture": card.architecture["name"],
        },
        "seed": int(seed),
        "index": int(index),
        "noise_seed": noise_seed(seed, index),
        "condition": cond.to_json(),
        "sampling": sampling or {"sampler": "single forward pass"},
        "seconds": round(float(seconds), 4),
        "device": str(device),
        "grid": {
            "spacing": list(card.input.spacing),
            "shape": list(card.input.shape),
            "origin": list(card.input.origin),
            "space": card.input.space,
        },
        "intensity": "model grid units: 0 background, 1 = the 99.5th percentile of the head",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "software": {
            "napari_mrisynth": __version__,
            "torch": torch.__version__,
            "monai": monai.__version__,
        },
        "training_data": {
            "data": card.training.get("data"),
            "simulated": card.training.get("simulated"),
        },
    }


def _write(item: Synthetic, out: Path, name: str, formats: tuple[str, ...], index: int) -> None:
    """Write the volume (atomically: a partial name, then renamed) and its sidecar."""
    from napari_mrisynth.io.files import save_volume

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    if "nifti" in formats:

        def write(volume: Volume, stem: str) -> Path:
            path, partial = out / f"{stem}.nii.gz", out / f".{stem}.{os.getpid()}.partial.nii.gz"
            save_volume(volume, partial)
            partial.replace(path)
            return path

        item.path = write(item.volume, name)
        files["nifti"] = item.path.name
        if item.labels is not None:  # beside the volume, where studies and exports find masks
            item.labels_path = write(item.labels, f"{name}_labels")
            files["labels"] = item.labels_path.name
    if "dicom" in formats:
        folder = _write_dicom(item, out, name, index)
        files["dicom"] = folder.name
        item.path = item.path or folder
    item.provenance["files"] = files
    sidecar = out / f"{name}.json"
    partial_json = out / f".{name}.{os.getpid()}.partial.json"
    partial_json.write_text(json.dumps(item.provenance, indent=2) + "\n", encoding="utf-8")
    partial_json.replace(sidecar)
    item.sidecar = sidecar


def _write_dicom(item: Synthetic, out: Path, name: str, index: int) -> Path:
    import shutil

    from napari_mrisynth.io.dicom_write import SimulatedPatient, write_dicom_series

    volume = item.volume
    # stored = value * DICOM_SCALE, whole numbers; RescaleSlope gives the value back
    values = np.rint(np.clip(np.asarray(volume.data), 0, None) * DICOM_SCALE) / DICOM_SCALE
    integer = Volume(
        values.astype(np.float32),
        volume.spacing,
        volume.origin,
        volume.direction,
        dict(volume.metadata),
    )
    folder = out / f"{name}_dicom"
    partial = out / f".{name}_dicom.{os.getpid()}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    g = item.provenance["generator"]
    write_dicom_series(
        integer,
        partial,
        description=f"SYNTHETIC T1 {g['id']}@{g['version']}"[:64],
        patient=SimulatedPatient(name=f"SYNTHETIC^{index:04d}", patient_id=f"SYN-{index:04d}"),
        rescale=(1.0 / DICOM_SCALE, 0.0),
        vendor_header=False,
        seed=item.provenance["noise_seed"] % (2**32),
    )
    if folder.exists():
        shutil.rmtree(folder)
    partial.replace(folder)
    return folder
