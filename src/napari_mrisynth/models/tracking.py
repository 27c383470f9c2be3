"""MLflow tracking, the one helper every station logs through: an embedded SQLite store by
default, a team server when given.

Every training run is one MLflow run holding its parameters (command-line options and card
fields), per-epoch metrics (Lightning's ``MLFlowLogger``), artifacts (``card.json``, the
safetensors weights, report plots) and a version of a registered model named after the
model id; reports and evaluations are runs of their own (or join a training run). Nothing
needs a network unless ``--tracking-uri`` points at a server. MLflow is in the ``[train]``
extra and is imported only when something is logged.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from napari_mrisynth.errors import MissingExtraError

#: Experiment used when none is named.
DEFAULT_EXPERIMENT = "mrisynth"

#: MLflow limits a parameter value to 6000 characters (8000 on recent servers).
_PARAM_LIMIT = 6000


def user_data_dir() -> Path:
    """The user's napari-mrisynth data folder (the parent of the user's model registry)."""
    from napari_mrisynth.models.registry import user_models_dir

    return Path(user_models_dir()).parent


def default_tracking_uri() -> str:
    """``sqlite:///<user data folder>/mlflow.db``; artifacts go beside it (``mlartifacts``)."""
    folder = user_data_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'mlflow.db').resolve()}"


def local_artifact_location(tracking_uri: str, experiment: str) -> str | None:
    """For a local SQLite or file store, ``<store folder>/mlartifacts/<experiment>`` as a
    ``file://`` URI; None for a server, which keeps its own artifact root."""
    parsed = urlparse(tracking_uri)
    if parsed.scheme == "sqlite":
        store = Path(tracking_uri[len("sqlite:///") :]).parent
    elif parsed.scheme in ("", "file"):
        store = Path(parsed.path or tracking_uri)
    else:
        return None
    return (store / "mlartifacts" / experiment).resolve().as_uri()


def require_mlflow(what: str = "tracking") -> Any:
    """Import MLflow, or raise :class:`MissingExtraError` saying how to install it."""
    try:
        import mlflow
    except ImportError as exc:
        raise MissingExtraError(f"{what} needs MLflow", "train") from exc
    return mlflow


def mlflow_client(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` on ``tracking_uri`` (the user's local store by default)."""
    require_mlflow()
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri or default_tracking_uri())


def start_run(
    tracking_uri: str | None, experiment: str, run_name: str, tags: Mapping[str, str]
) -> tuple[Any, str]:
    """A new run in ``experiment`` (created when missing, its artifacts beside a local
    store); returns the client and the run id."""
    uri = tracking_uri or default_tracking_uri()
    client = mlflow_client(uri)
    found = client.get_experiment_by_name(experiment)
    experiment_id = (
        found.experiment_id
        if found is not None
        else client.create_experiment(
            experiment, artifact_location=local_artifact_location(uri, experiment)
        )
    )
    return client, client.create_run(experiment_id, run_name=run_name, tags=dict(tags)).info.run_id


def make_logger(tracking_uri: str, experiment: str, run_name: str, tags: Mapping[str, str]) -> Any:
    """Lightning's ``MLFlowLogger`` for this run (it creates the run on rank 0 only)."""
    require_mlflow()
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(
        experiment_name=experiment,
        run_name=run_name,
        tracking_uri=tracking_uri,
        tags=dict(tags),
        artifact_location=local_artifact_location(tracking_uri, experiment),
        log_model=False,
    )


#: Summary entries that are tables or bookkeeping, not single metrics.
_NOT_LOGGED = frozenset({"per_label", "per_subject", "confusion", "subjects", "threshold"})


def flatten_metrics(summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Single numbers of a summary as MLflow metric names: ``auc``, ``auc.ci95_low``,
    ``sensitivity``, ``dice.frontal_gm``, ``dice_mean``... Tables, None, NaN and inf are
    left out."""
    flat: dict[str, float] = {}

    def add(name: str, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)

    for key, value in summary.items():
        if key in _NOT_LOGGED:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and "value" in value:
            add(name, value["value"])
            if value.get("ci95"):
                add(f"{name}.ci95_low", value["ci95"][0])
                add(f"{name}.ci95_high", value["ci95"][1])
        elif isinstance(value, Mapping):
            flat.update(flatten_metrics(value, f"{name}."))
        else:
            add(name, value)
    return flat


def log_metrics(client: Any, run_id: str, metrics: Mapping[str, float], *, step: int = 0) -> None:
    """Log single-number metrics on a run in batches, all at one timestamp."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(name, float(value), now, step) for name, value in metrics.items()]
    for start in range(0, len(batch), 500):
        client.log_batch(run_id, metrics=batch[start : start + 500])


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested options as ``a.b`` keys with string values MLflow accepts."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, f"{name}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            flat[name] = text[:_PARAM_LIMIT]
    return flat


def log_params(client: Any, run_id: str, params: Mapping[str, Any]) -> None:
    """Log ``params`` (flattened) on a run, skipping keys already logged."""
    from mlflow.entities import Param

    logged = set(client.get_run(run_id).data.params)
    items = [Param(k, v) for k, v in flatten_params(params).items() if k not in logged]
    for start in range(0, len(items), 100):
        client.log_batch(run_id, params=items[start : start + 100])


def register_version(
    client: Any, name: str, run_id: str, artifact_path: str, description: str = ""
) -> str:
    """Create (if needed) the registered model ``name`` and a version pointing at the
    run's artifact folder ``artifact_path``; returns the version number as a string."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        client.create_registered_model(name, description=description)
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    version = client.create_model_version(name, source=source, run_id=run_id,
                                          description=description)  # fmt: skip
    return str(version.version)
