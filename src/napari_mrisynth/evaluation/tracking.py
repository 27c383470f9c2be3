"""An evaluation of a synthetic set as an MLflow run: every metric beside its floor, the
extractor as parameters, and the full report as a JSON artifact."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from napari_mrisynth.models import tracking


def log_evaluation(
    data: dict[str, Any], tracking_uri: str | None, experiment: str
) -> tuple[str, str]:
    """One MLflow run with every metric (``fid``, ``fid_floor``...), parameters and the JSON.

    Parameters
    ----------
    data : dict
        An evaluation report as JSON (:meth:`EvaluationReport.to_json`).
    tracking_uri : str, optional
        The store; the user's local SQLite store by default.
    experiment : str
        Created when missing.

    Returns
    -------
    (tracking_uri, run_id)
    """
    tracking.require_mlflow("logging to MLflow")
    uri = tracking_uri or tracking.default_tracking_uri()
    extractor = data["extractor"].get("model", "")
    client, run_id = tracking.start_run(
        uri, experiment, f"evaluate {extractor}".strip(),
        {"mrisynth.report": "generative-evaluation"},
    )  # fmt: skip
    metrics = {}
    for name, entry in data["metrics"].items():
        metrics[name] = float(entry["value"])
        if entry.get("floor") is not None:
            metrics[f"{name}_floor"] = float(entry["floor"])
    turing = data.get("automated_turing") or {}
    for name, entry in turing.get("two_sample", {}).items():
        if isinstance(entry, dict) and "value" in entry:
            metrics[f"c2st_{name}_auc"] = float(entry["value"])
            before = entry.get("before_matching")
            if before:
                metrics[f"c2st_{name}_auc_before_matching"] = float(before["value"])
    for name, entry in turing.get("sharpness", {}).items():
        if isinstance(entry, dict) and "ratio" in entry:
            metrics[f"{name}_ratio"] = float(entry["ratio"])
    tracking.log_metrics(client, run_id, metrics)
    tracking.log_params(client, run_id, {
        "n_real": data["n_real"], "n_synthetic": data["n_synthetic"], "seed": data["seed"],
        "extractor": extractor, "extractor_sha256": data["extractor"].get("weights_sha256", ""),
    })  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "evaluation.json"
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    return uri, run_id
