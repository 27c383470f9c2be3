"""The model registry: find, rank, save, verify and load models, offline.

A model is a folder ``<id>-<version>/`` holding ``card.json`` and ``model.safetensors``.
Folders are looked for one level deep under these roots, in this order:

1. ``env``: each folder in ``$MRISYNTH_MODEL_PATH`` (``os.pathsep``-separated);
2. ``user``: :func:`user_models_dir` (where ``mrisynth train`` saves models);
3. ``bundled``: the demo models shipped inside the package (:data:`BUNDLED_DIR`).

An earlier root shadows a later one for the same ``id@version``. Nothing here touches the
network, and weights are read only as safetensors after their SHA-256 has been checked
against the card: a pickle is never unpickled, whatever its file is called.

torch, MONAI and safetensors are imported inside the functions that need them, so listing
and searching models (``mrisynth models list``) stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import sys
import tempfile
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_mrisynth.errors import ModelError
from napari_mrisynth.models.card import CARD_FILE, TASKS, WEIGHTS_FILE, ModelCard, read_card

if TYPE_CHECKING:
    import torch

#: Demo models shipped with the package, one ``<id>-<version>/`` folder each.
BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"

#: Extra model folders, searched before the user's and the bundled ones.
ENV_VAR = "MRISYNTH_MODEL_PATH"

#: Overrides the per-user data folder (models go in its ``models/`` sub-folder).
DATA_DIR_ENV_VAR = "MRISYNTH_DATA_DIR"

#: The metric that ranks models of each task when none is named.
KEY_METRICS = {"segmentation": "dice_mean", "classification": "auc", "generation": "fid"}
#: Key metrics where lower is better.
LOWER_IS_BETTER = frozenset({"fid", "kid", "mmd"})

#: safetensors refuses headers larger than this; so do we, before reading them.
_MAX_HEADER_BYTES = 100_000_000

RootsArg = Iterable[tuple[str, Path] | str | Path] | None


class ModelCardWarning(UserWarning):
    """A folder in a model root could not be read as a model and was skipped."""


# -- where models live -------------------------------------------------------------------
def user_models_dir() -> Path:
    """The per-user model folder (it need not exist yet).

    ``$MRISYNTH_DATA_DIR/models`` when that variable is set, else
    ``$XDG_DATA_HOME/napari-mrisynth/models``, else the platform's user data folder:
    ``~/.local/share`` on Linux, ``~/Library/Application Support`` on macOS and
    ``%LOCALAPPDATA%`` on Windows.
    """
    if os.environ.get(DATA_DIR_ENV_VAR):
        return Path(os.environ[DATA_DIR_ENV_VAR]).expanduser() / "models"
    if os.environ.get("XDG_DATA_HOME"):
        base = Path(os.environ["XDG_DATA_HOME"]).expanduser()
    elif sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path.home() / ".local" / "share"
    return base / "napari-mrisynth" / "models"


def model_roots() -> list[tuple[str, Path]]:
    """Every model root in search order: ``[("env", p)..., ("user", p), ("bundled", p)]``.

    Roots that do not exist are listed too (so that a message can say where it looked); a
    folder named twice keeps its first place.
    """
    found: list[tuple[str, Path]] = []
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if entry.strip():
            found.append(("env", Path(entry.strip()).expanduser()))
    found += [("user", user_models_dir()), ("bundled", BUNDLED_DIR)]
    return _unique_roots(found)


def _unique_roots(roots: Iterable[tuple[str, Path]]) -> list[tuple[str, Path]]:
    seen: set[Path] = set()
    unique = []
    for kind, path in roots:
        key = Path(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            unique.append((kind, Path(path)))
    return unique


def _resolve_roots(roots: RootsArg) -> list[tuple[str, Path]]:
    if roots is None:
        return model_roots()
    resolved = []
    for item in roots:
        if isinstance(item, (str, os.PathLike)):
            resolved.append(("folder", Path(item)))
        else:
            kind, path = item
            resolved.append((str(kind), Path(path)))
    return _unique_roots(resolved)


def _describe_roots(roots: list[tuple[str, Path]]) -> str:
    return ", ".join(f"{path} ({kind})" for kind, path in roots) or "no folders"


# -- versions ------------------------------------------------------------------------------
def version_key(version: str) -> tuple:
    """Sort key for semantic versions: ``1.10.0 > 1.9.0`` and ``1.0.0 > 1.0.0-rc.1``.

    Pre-release identifiers compare as in SemVer 2.0: numbers numerically and below words.
    """
    core, sep, pre = version.partition("-")
    parts = core.split(".")
    if len(parts) > 3:  # "1.2.3.dev0": the fourth dotted part is a pre-release tag
        pre, parts = ".".join(parts[3:]) + (f".{pre}" if pre else ""), parts[:3]
        sep = "-"
    try:
        numbers = tuple(int(p) for p in parts)
    except ValueError as exc:
        raise ModelError(f"version {version!r} is not MAJOR.MINOR.PATCH") from exc
    if not sep:
        return (*numbers, 1, ())
    tags = tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in pre.split("."))
    return (*numbers, 0, tags)


def parse_ref(ref: str) -> tuple[str, str | None]:
    """``"id@1.2.0"`` -> ``("id", "1.2.0")``; ``"id"`` -> ``("id", None)``."""
    model_id, sep, version = ref.strip().partition("@")
    if not model_id or (sep and not version):
        raise ModelError(f"model reference {ref!r}: use ID or ID@VERSION, e.g. seg-head@1.0.0")
    return model_id, (version or None)


# -- discovery -----------------------------------------------------------------------------
def _check_task(task: str | None) -> None:
    if task is not None and task not in TASKS:
        raise ModelError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")


def _discover(roots: RootsArg) -> list[tuple[str, ModelCard]]:
    """(root kind, card) for every readable card, earlier roots shadowing later ones."""
    found: dict[str, tuple[str, Path, ModelCard]] = {}
    for kind, root in _resolve_roots(roots):
        try:
            folders = sorted(p for p in root.iterdir() if p.is_dir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            warnings.warn(f"{root}: model folder unreadable ({exc})", ModelCardWarning, 3)
            continue
        for folder in folders:
            # Hidden folders are save_model's half-written ones (or a VCS's): never models.
            if folder.name.startswith(".") or not (folder / CARD_FILE).is_file():
                continue
            try:
                card = read_card(folder)
            except ModelError as exc:
                problem = str(exc)
                if str(folder / CARD_FILE) not in problem:  # e.g. a bad id: say which file
                    problem = f"{folder / CARD_FILE}: {problem}"
                warnings.warn(f"skipped: {problem}", ModelCardWarning, 3)
                continue
            if card.ref not in found:
                found[card.ref] = (kind, root, card)
            elif found[card.ref][1] == root:  # two folders of one root claim the same model
                first = found[card.ref][2].path
                warnings.warn(
                    f"{folder / CARD_FILE}: skipped: {card.ref} is also in {first}",
                    ModelCardWarning,
                    3,
                )
    return [(kind, card) for kind, _, card in found.values()]


def _ordered(cards: Iterable[ModelCard]) -> list[ModelCard]:
    """By id, newest version first."""
    by_version = sorted(cards, key=lambda c: version_key(c.version), reverse=True)
    return sorted(by_version, key=lambda c: c.id)


def list_models(task: str | None = None, *, roots: RootsArg = None) -> list[ModelCard]:
    """Every model found under the roots, by id and then newest version first.

    Parameters
    ----------
    task : str, optional
        Keep only models of this task.
    roots : iterable of (kind, folder) or folders, optional
        Where to look; default :func:`model_roots`.

    Unreadable or invalid cards are skipped with a :class:`ModelCardWarning` naming the file.
    """
    _check_task(task)
    return _ordered(card for _, card in _discover(roots) if task is None or card.task == task)


def model_location(card: ModelCard, *, roots: RootsArg = None) -> str:
    """The kind of root (``env``, ``user``, ``bundled``) a card was read from, or ``""``."""
    if card.path is None:
        return ""
    parent = Path(os.path.abspath(card.path)).parent
    for kind, root in _resolve_roots(roots):
        if Path(os.path.abspath(root)) == parent:
            return kind
    return ""


def find_model(ref: str, *, task: str | None = None, roots: RootsArg = None) -> ModelCard:
    """The model named by ``"id"`` (its newest version), ``"id@version"`` or a folder path.

    A reference holding a path separator is a model folder (``./models/seg-head-1.0.0``),
    read directly; ids never contain one.

    Raises
    ------
    ModelError
        Unknown id or version (the message lists what is available for the task), a folder
        without a valid card, or a model of another task.
    """
    _check_task(task)
    if "/" in ref or os.sep in ref:
        card = read_card(Path(ref).expanduser())
        if task is not None and card.task != task:
            raise ModelError(f"model {card.ref} ({ref}) is a {card.task} model, not {task}")
        return card
    model_id, version = parse_ref(ref)
    resolved = _resolve_roots(roots)
    cards = [card for _, card in _discover(resolved)]
    same_id = [c for c in cards if c.id == model_id]
    same_task = [c for c in same_id if task is None or c.task == task]
    matching = [c for c in same_task if version is None or c.version == version]
    if matching:
        return max(matching, key=lambda c: version_key(c.version))
    if same_id and not same_task:
        raise ModelError(f"model {model_id} is a {same_id[0].task} model, not {task}")
    if same_task:
        versions = ", ".join(c.version for c in _ordered(same_task))
        raise ModelError(f"model {model_id} has no version {version} (found: {versions})")
    ids = sorted({c.id for c in cards if task is None or c.task == task})
    what = f"{task} models" if task else "models"
    available = f"available {what}: {', '.join(ids)}" if ids else f"no {what} found"
    raise ModelError(
        f"unknown model {model_id!r}; {available} (searched {_describe_roots(resolved)})"
    )


def default_model(task: str, *, roots: RootsArg = None) -> ModelCard:
    """The model to use for a task when none is named.

    A card whose ``training.default`` is true wins; among equals, the best test key
    metric (highest ``dice_mean`` for segmentation and ``auc`` for classification, lowest
    ``fid`` for generation), then the newest
    version, then the earlier root. All roots count, ``$MRISYNTH_MODEL_PATH`` included: a
    folder put there is one the user chose.
    """
    _check_task(task)
    resolved = _resolve_roots(roots)
    candidates = [card for _, card in _discover(resolved) if card.task == task]
    if not candidates:
        raise ModelError(
            f"no {task} model found (searched {_describe_roots(resolved)}); train one with "
            f"`mrisynth train {task} --data COHORT --out {user_models_dir()}` (see "
            f"`mrisynth train {task} --help`), or name a folder of models in ${ENV_VAR}"
        )
    key_metric = KEY_METRICS.get(task, "")

    sign = -1.0 if key_metric in LOWER_IS_BETTER else 1.0

    def preference(card: ModelCard) -> tuple:
        metric = card.metric(key_metric) if key_metric else None
        metric = None if metric is None else sign * metric
        return (
            card.training.get("default") is True,
            metric is not None,
            metric if metric is not None else 0.0,
            version_key(card.version),
        )

    return max(candidates, key=preference)  # max keeps the first (earliest root) of equals


def search_models(
    query: str | None = None,
    *,
    task: str | None = None,
    rank_by: str | None = None,
    descending: bool = True,
    roots: RootsArg = None,
) -> list[ModelCard]:
    """Models whose id, title, description or label names contain ``query``, ranked.

    Parameters
    ----------
    query : str, optional
        Case-insensitive substring; None or empty matches every model.
    task : str, optional
        Keep only models of this task.
    rank_by : str, optional
        A dotted test metric (``auc``, ``dice_mean``, ``dice.frontal_gm``; see
        :meth:`ModelCard.metric`). Models without it come last, in either direction.
        Without ``rank_by`` the order is that of :func:`list_models`.
    descending : bool
        Best (highest) first; False for metrics where lower is better.
    """
    cards = list_models(task, roots=roots)
    if query:
        needle = query.lower()
        cards = [
            card
            for card in cards
            if any(
                needle in text.lower()
                for text in (card.id, card.title, card.description, *card.label_names.values())
            )
        ]
    if rank_by:
        with_metric = [c for c in cards if c.metric(rank_by) is not None]
        without = [c for c in cards if c.metric(rank_by) is None]
        with_metric.sort(key=lambda c: c.metric(rank_by), reverse=descending)
        cards = with_metric + without
    return cards


# -- weights -------------------------------------------------------------------------------
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


def _architecture_mismatch(
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


def _check_output_channels(card: ModelCard) -> None:
    args = card.architecture.get("args", {})
    declared = args.get("out_channels", args.get("num_classes"))
    if declared is not None and int(declared) != card.out_channels:
        raise ModelError(
            f"model {card.ref}: the network has {declared} outputs but the card's labels need "
            f"{card.out_channels} ({card.task})"
        )


# -- saving --------------------------------------------------------------------------------
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
    _check_output_channels(card)
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
    mismatch = _architecture_mismatch(card, template.state_dict(), tensors)
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


# -- loading -------------------------------------------------------------------------------
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

    _check_task(task)
    if ref is None:
        card = default_model(task, roots=roots)
    elif isinstance(ref, ModelCard):
        card = ref
    else:
        card = find_model(ref, task=task, roots=roots)
    if card.task != task:
        raise ModelError(f"model {card.ref} is a {card.task} model, not {task}")
    _check_output_channels(card)
    state = load_weights(card)
    network = build_network(card.architecture)
    mismatch = _architecture_mismatch(card, network.state_dict(), state)
    if mismatch:
        raise ModelError(mismatch)
    network.load_state_dict(state, strict=True)
    chosen = choose_device(device)
    network.to(chosen).eval()
    return LoadedModel(card=card, network=network, device=chosen)
