"""Model weights: safetensors only, checked against the card's SHA-256 before anything is
parsed, and loaded into the card's network.

A pickle is never unpickled, whatever its file is called: the file's layout is validated as
safetensors, and the bytes that were hashed are the bytes that are parsed. torch, MONAI and
safetensors are imported inside the functions that need them.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_mrisynth.errors import ModelError
from napari_mrisynth.models.card import WEIGHTS_FILE, ModelCard
from napari_mrisynth.models.registry import RootsArg, check_task, default_model, find_model

if TYPE_CHECKING:
    import torch

#: safetensors refuses headers larger than this; so do we, before reading them.
_MAX_HEADER_BYTES = 100_000_000


def weights_path(card: ModelCard) -> Path:
    """The weights file a card points to, refusing anything but a plain ``*.safetensors``."""
    if card.path is None:
        raise ModelError(f"model {card.ref}: card has no folder (it was not read from disk)")
    name = str(card.weights.get("file") or WEIGHTS_FILE)
    if Path(name).name != name or name in (".", ".."):
        raise ModelError(f"model {card.ref}: weights file {name!r} must be a plain file name")
    path = Path(card.path) / name
    if not name.endswith(".safetensors"):
        raise ModelError(
            f"{path}: not a .safetensors file; only safetensors weights are loaded (pickled "
            "checkpoints such as .pt/.pth/.ckpt can run code when read and are refused)"
        )
    return path


def _what_it_looks_like(data: bytes) -> str:
    if data.startswith(b"PK\x03\x04"):
        return " (it is a zip archive, as torch.save writes: a pickle, which is never loaded)"
    if data[:1] == b"\x80":
        return " (it looks like a Python pickle, which is never loaded)"
    return ""


def check_safetensors(data: bytes, path: Path | str) -> dict[str, Any]:
    """Validate the safetensors layout of ``data`` without running anything; return its header.

    The format is an 8-byte little-endian header length, a JSON header describing each
    tensor's dtype, shape and byte range, then the tensor bytes. Anything else is refused.
    """
    header: Any = None
    if len(data) < 8:
        problem = f"{len(data)} bytes, too short for a header"
    else:
        (length,) = struct.unpack("<Q", data[:8])
        if length < 2 or length > _MAX_HEADER_BYTES or 8 + length > len(data):
            problem = f"header length field {length} does not fit a {len(data)}-byte file"
        else:
            try:
                header = json.loads(data[8 : 8 + length].decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                problem = f"header is not JSON ({exc})"
            else:
                problem = _header_problem(header, len(data) - 8 - length)
    if problem:
        raise ModelError(
            f"{path}: not a safetensors file: {problem}{_what_it_looks_like(data[:8])}"
        )
    return header


def _header_problem(header: Any, buffer_bytes: int) -> str:
    if not isinstance(header, dict):
        return "header is not a JSON object"
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("dtype"), str)
            and isinstance(entry.get("shape"), list)
            and isinstance(entry.get("data_offsets"), list)
            and len(entry["data_offsets"]) == 2
        ):
            return f"tensor {name!r} lacks dtype, shape or data_offsets"
        start, stop = entry["data_offsets"]
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop):
            return f"tensor {name!r} has invalid data_offsets {entry['data_offsets']}"
        end = max(end, stop)
    if end != buffer_bytes:
        return f"tensors cover {end} bytes but the file holds {buffer_bytes} after the header"
    return ""


def _read_checked(card: ModelCard, verify: bool) -> tuple[Path, bytes, str]:
    """The weights' bytes, after the layout and (if ``verify``) the SHA-256 checks."""
    path = weights_path(card)
    if not path.is_file():
        raise ModelError(f"{path}: weights file of model {card.ref} is missing")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the weights ({exc})") from exc
    check_safetensors(data, path)
    actual = hashlib.sha256(data).hexdigest()
    if verify:
        expected = str(card.weights.get("sha256") or "").lower()
        if not expected:
            raise ModelError(
                f"{path}: the card of {card.ref} records no weights SHA-256, so the weights "
                "cannot be verified"
            )
        if actual != expected:
            raise ModelError(
                f"{path}: SHA-256 {actual} does not match the card's {expected}: the weights "
                "were changed or corrupted"
            )
    return path, data, actual


def verify_weights(card: ModelCard) -> str:
    """Check a model's weights file (safetensors layout and SHA-256); return the hash.

    Raises :class:`ModelError` on a missing file, a non-safetensors file or a mismatch.
    Needs neither torch nor MONAI.
    """
    return _read_checked(card, verify=True)[2]


def load_weights(card: ModelCard, *, verify: bool = True) -> dict[str, torch.Tensor]:
    """The model's tensors, read from safetensors after the SHA-256 check (CPU tensors).

    The bytes that were hashed are the bytes that are parsed: a file swapped between the
    check and the load cannot slip through. ``torch.load`` is never called.

    Raises
    ------
    ModelError
        Missing file, a name not ending in ``.safetensors``, bytes that are not safetensors
        (e.g. a ``torch.save`` pickle), or a SHA-256 that differs from the card's.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path, data, _ = _read_checked(card, verify)
    try:
        return load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelError(f"{path}: unreadable safetensors weights ({exc})") from exc


def architecture_mismatch(
    card: ModelCard, expected: Mapping[str, Any], found: Mapping[str, Any], limit: int = 5
) -> str:
    """'' when the weights fit the network, else a message naming the first differences."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [
        f"{k}: weights {tuple(found[k].shape)} vs network {tuple(expected[k].shape)}"
        for k in expected
        if k in found and tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    if not (missing or unexpected or shapes):
        return ""
    parts = []
    for what, items in (
        ("missing from the weights", missing),
        ("not in the network", unexpected),
        ("shape mismatches", shapes),
    ):
        if items:
            more = f" and {len(items) - limit} more" if len(items) > limit else ""
            parts.append(f"{len(items)} {what} ({'; '.join(items[:limit])}{more})")
    name = card.architecture.get("name")
    return f"model {card.ref}: its weights do not fit the card's {name} network: " + ", ".join(
        parts
    )


def check_output_channels(card: ModelCard) -> None:
    """Refuse a card whose network's output count does not fit its labels."""
    args = card.architecture.get("args", {})
    declared = args.get("out_channels", args.get("num_classes"))
    if declared is not None and int(declared) != card.out_channels:
        raise ModelError(
            f"model {card.ref}: the network has {declared} outputs but the card's labels need "
            f"{card.out_channels} ({card.task})"
        )


@dataclass
class LoadedModel:
    """A model ready to run: its card and its network in eval mode on ``device``."""

    card: ModelCard
    network: torch.nn.Module
    device: torch.device


def load_model(
    ref: str | ModelCard | None,
    task: str,
    *,
    device: Any = None,
    roots: RootsArg = None,
) -> LoadedModel:
    """Find, verify and load a model for ``task``, offline.

    Parameters
    ----------
    ref : str, ModelCard or None
        ``"id"``, ``"id@version"``, a card read from disk, or None for :func:`default_model`.
    task : str
        ``"segmentation"`` or ``"classification"``; a model of another task is refused.
    device : str or torch.device, optional
        Passed to :func:`~napari_mrisynth.models.device.choose_device` (None: cuda, mps, cpu).

    Raises
    ------
    ModelError
        Unknown model, wrong task, bad or changed weights, or a card whose architecture does
        not fit its weights (the message names the first mismatching keys and shapes).
    """
    from napari_mrisynth.models.device import choose_device
    from napari_mrisynth.models.networks import build_network

    check_task(task)
    if ref is None:
        card = default_model(task, roots=roots)
    elif isinstance(ref, ModelCard):
        card = ref
    else:
        card = find_model(ref, task=task, roots=roots)
    if card.task != task:
        raise ModelError(f"model {card.ref} is a {card.task} model, not {task}")
    check_output_channels(card)
    state = load_weights(card)
    network = build_network(card.architecture)
    mismatch = architecture_mismatch(card, network.state_dict(), state)
    if mismatch:
        raise ModelError(mismatch)
    network.load_state_dict(state, strict=True)
    chosen = choose_device(device)
    network.to(chosen).eval()
    return LoadedModel(card=card, network=network, device=chosen)
