"""Reports: test metrics, plots and JSON for classifiers and segmenters, logged to MLflow.

``metrics`` (NumPy/SciPy only) computes every statistic; ``plots`` draws PNGs with
matplotlib's Agg backend; ``report`` writes ``report.json`` and the figures of one evaluation
and logs them to MLflow; ``commands`` is ``mrisynth report classifier|segmenter``.
"""
