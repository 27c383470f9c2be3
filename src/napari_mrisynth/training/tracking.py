"""MLflow tracking: an embedded SQLite store by default, a team server when given.

Every training run is one MLflow run holding its parameters (command-line options and card
fields), per-epoch metrics (Lightning's ``MLFlowLogger``), artifacts (``card.json``, the
safetensors weights, report plots) and a version of a registered model named after the
model id. Nothing needs a network unless ``--tracking-uri`` points at a server.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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


def require_mlflow() -> Any:
    """Import MLflow, or explain how to install the training extra."""
    try:
        import mlflow
    except ImportError as exc:
        from napari_mrisynth.training import MISSING_EXTRA

        raise ImportError(MISSING_EXTRA) from exc
    return mlflow


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
