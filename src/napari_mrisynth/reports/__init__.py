"""Reports: test metrics, plots and JSON for classifiers and segmenters, logged to MLflow.

``metrics`` (NumPy/SciPy only) computes every statistic; ``plots`` draws PNGs with
matplotlib's Agg backend; ``model_report`` writes ``report.json`` and the figures of one
evaluation and logs them to MLflow. The command is ``mrisynth report classifier|segmenter``
(:mod:`napari_mrisynth.cli.report`).
"""
