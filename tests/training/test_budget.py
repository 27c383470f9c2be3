"""Fixed-budget training: the same seed gives the same network, the budget is counted in
optimiser steps whatever the training set's size, and test scores come from the kept
weights."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("lightning")

from napari_mrisynth.training.budget import (  # noqa: E402
    Budget,
    fit_within_budget,
    score_classifier,
)

BUDGET = Budget(steps=6, batch_size=2, val_every=2, patience=10, init_filters=4)


@pytest.fixture(scope="module")
def cached(simulated_cohort, tmp_path_factory):
    from napari_mrisynth.training.data import cache_subjects
    from napari_mrisynth.training.recipe import model_spec
    from napari_mrisynth.training.splits import read_participants

    cohort = simulated_cohort(10, 5, 8.0)
    rows = read_participants(cohort)
    classes = {r["participant_id"]: int(r["diagnosis"] == "bvFTD") for r in rows}
    items = cache_subjects(cohort, sorted(classes), model_spec(8.0, brain_mask=True),
                           tmp_path_factory.mktemp("budget-cache"), labels=None)  # fmt: skip
    return items, classes


@pytest.mark.slow
def test_same_seed_same_network_and_the_budget_is_in_steps(cached):
    items, classes = cached
    small, val, test = items[:4], items[4:6], items[6:]
    first = fit_within_budget("classification", small, val, budget=BUDGET, seed=3,
                              augment=False, classes=classes, accelerator="cpu")  # fmt: skip
    again = fit_within_budget("classification", small, val, budget=BUDGET, seed=3,
                              augment=False, classes=classes, accelerator="cpu")  # fmt: skip
    for key, value in first.state.items():
        assert torch.equal(value, again.state[key]), key
    other = fit_within_budget("classification", small, val, budget=BUDGET, seed=4,
                              augment=False, classes=classes, accelerator="cpu")  # fmt: skip
    assert any(not torch.equal(v, other.state[k]) for k, v in first.state.items())
    # a training set twice as large gets the same number of steps, not twice as many
    double = fit_within_budget("classification", small + small, val, budget=BUDGET, seed=3,
                               augment=True, classes=classes, accelerator="cpu")  # fmt: skip
    assert first.steps == double.steps == BUDGET.steps
    assert [h["step"] for h in first.history] == [2, 4, 6]
    assert first.best_score == min(h["score"] for h in first.history)
    # the scores come from the kept network, and the AUC from those scores
    from napari_mrisynth.reports.metrics import roc_auc

    result = score_classifier(first, test, classes)
    truth = [s["truth"] for s in result["subjects"]]
    assert truth == [classes[c.subject] for c in test]
    assert result["auc"] == pytest.approx(roc_auc(np.array(truth),
                                                  np.array([s["score"] for s in
                                                            result["subjects"]])))  # fmt: skip
    assert score_classifier(first, test, classes) == result
