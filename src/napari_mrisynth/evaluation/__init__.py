"""Evaluation of synthetic volumes: generative metrics and the memorization audit.

    from napari_mrisynth.evaluation import evaluate_sets, audit_memorization, load_folder
    report = evaluate_sets(load_folder("real/"), load_folder("synthetic/"))
    audit = audit_memorization(load_folder("train/"), load_folder("synthetic/"))

No Qt or napari here; torch and MONAI are imported inside the functions that use them.
"""

from __future__ import annotations

from napari_mrisynth.evaluation.evaluate import METRICS, EvaluationReport, evaluate_sets
from napari_mrisynth.evaluation.features import FeatureExtractor
from napari_mrisynth.evaluation.folders import EvaluationError, load_folder
from napari_mrisynth.evaluation.memorization import AuditReport, audit_memorization

__all__ = [
    "METRICS",
    "AuditReport",
    "EvaluationError",
    "EvaluationReport",
    "FeatureExtractor",
    "audit_memorization",
    "evaluate_sets",
    "load_folder",
]
