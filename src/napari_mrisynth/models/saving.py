"""Writing a model folder: safetensors weights, then the card, moved into place atomically."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_mrisynth.errors import ModelError
from napari_mrisynth.models.card import CARD_FILE, WEIGHTS_FILE, ModelCard
from napari_mrisynth.models.weights import architecture_mismatch, check_output_channels

if TYPE_CHECKING:
    import torch


def _software_versions() -> dict[str, str]:
    import monai
    import torch

    from napari_mrisynth._version import __version__

    return {"napari_mrisynth": __version__, "torch": torch.__version__, "monai": monai.__version__}


def _network_template(card: ModelCard) -> Any:
    """The card's network built without memory (meta device), for key/shape checks."""
    import torch

    from napari_mrisynth.models.networks import build_network

    try:
        with torch.device("meta"):
            return build_network(card.architecture)
    except (NotImplementedError, RuntimeError):  # a network that cannot be built on meta
        return build_network(card.architecture)


def save_model(
    card: ModelCard,
    state_dict: Mapping[str, torch.Tensor],
    root: Path | str,
    *,
    overwrite: bool = False,
) -> ModelCard:
    """Write ``root/<id>-<version>/`` (weights, then the card) and return the saved card.

    The weights are written with safetensors (contiguous CPU tensors, metadata ``id`` and
    ``version``); the returned card (a copy: ``card`` itself is not changed) has
    ``weights = {file, sha256, parameters, bytes}``, ``created`` (now, unless set),
    ``software`` (napari-mrisynth, torch and MONAI versions) and ``path`` filled in.
    ``parameters`` counts the network's parameters (not buffers such as normalisation
    statistics).

    Everything is written into a hidden temporary folder in ``root`` and renamed into place,
    ``card.json`` last, so a reader never sees half a model.

    Raises
    ------
    ModelError
        The state dict does not fit the card's architecture or output count, or
        ``id@version`` already exists in ``root`` and ``overwrite`` is false.
    """
    import torch
    from safetensors.torch import save_file

    from napari_mrisynth.models.networks import count_parameters

    root = Path(root)
    target = root / f"{card.id}-{card.version}"
    if target.exists() and not overwrite:
        raise ModelError(
            f"{target}: model {card.ref} already exists; give it a new version, or overwrite"
        )
    check_output_channels(card)
    tensors: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    for name, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            raise ModelError(f"model {card.ref}: state dict entry {name!r} is not a tensor")
        tensor = value.detach().to("cpu").contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in storages:  # tied weights: safetensors stores each tensor on its own
            tensor = tensor.clone()
        storages.add(tensor.untyped_storage().data_ptr())
        tensors[name] = tensor
    template = _network_template(card)
    mismatch = architecture_mismatch(card, template.state_dict(), tensors)
    if mismatch:
        raise ModelError(mismatch)

    root.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=root))
    try:
        weights_file = partial / WEIGHTS_FILE
        save_file(tensors, str(weights_file), metadata={"id": card.id, "version": card.version})
        saved = card.replace(
            weights={
                "file": WEIGHTS_FILE,
                "sha256": hashlib.sha256(weights_file.read_bytes()).hexdigest(),
                "parameters": count_parameters(template),
                "bytes": weights_file.stat().st_size,
            },
            created=card.created or datetime.now(timezone.utc).isoformat(timespec="seconds"),
            software={**card.software, **_software_versions()},
            path=target,
        )
        (partial / CARD_FILE).write_text(
            json.dumps(saved.to_json(), indent=2) + "\n", encoding="utf-8"
        )
        _move_into_place(partial, target, overwrite)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return saved


def _move_into_place(partial: Path, target: Path, overwrite: bool) -> None:
    old = None
    if target.exists():
        if not overwrite:
            raise ModelError(f"{target}: written by someone else meanwhile; not overwritten")
        old = target.with_name(f".{target.name}.{os.getpid()}.old")
        target.rename(old)
    try:
        partial.rename(target)
    except OSError as exc:
        if old is not None:
            old.rename(target)
        raise ModelError(f"{target}: cannot move the new model into place ({exc})") from exc
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
