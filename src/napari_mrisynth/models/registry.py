"""The model registry: where models live, and finding and ranking them, offline.

A model is a folder ``<id>-<version>/`` holding ``card.json`` and ``model.safetensors``.
Folders are looked for one level deep under these roots, in this order:

1. ``env``: each folder in ``$MRISYNTH_MODEL_PATH`` (``os.pathsep``-separated);
2. ``user``: :func:`user_models_dir` (where ``mrisynth train`` saves models);
3. ``bundled``: the demo models shipped inside the package (:data:`BUNDLED_DIR`).

An earlier root shadows a later one for the same ``id@version``. Nothing here touches the
network or reads weights: :mod:`.weights` checks and loads them, :mod:`.saving` writes a
model folder. Listing and searching models (``mrisynth models list``) needs neither torch
nor MONAI.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from napari_mrisynth.errors import ModelError
from napari_mrisynth.models.card import CARD_FILE, TASKS, ModelCard, read_card

if TYPE_CHECKING:
    pass

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
def check_task(task: str | None) -> None:
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
    check_task(task)
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
    check_task(task)
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
    check_task(task)
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
