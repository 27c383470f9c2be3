"""The downstream-value report: per arm, the held-out score across repeats; per contrast, the
paired difference with a bootstrap interval and two paired tests.

Input is plain records (one per task, arm, repeat and training size, as
:mod:`napari_mrisynth.synthesis.downstream` writes them), so the statistics can be checked
against known answers without training anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: The score each task is compared on (held-out real test subjects).
SCORES = {"classification": "auc", "segmentation": "dice"}


def bootstrap_mean(
    values: Sequence[float], *, resamples: int = 10000, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """Mean of ``values`` with a percentile bootstrap interval (values resampled).

    Returns
    -------
    dict
        ``n``, ``mean`` and ``ci95`` (None with fewer than two values).

    Examples
    --------
    >>> bootstrap_mean([0.7, 0.8, 0.9])["mean"]
    0.8
    """
    x = np.asarray(values, dtype=float)
    result: dict[str, Any] = {"n": int(x.size), "mean": float(round(x.mean(), 12)) if x.size
                              else None, "ci95": None}  # fmt: skip
    if x.size >= 2:
        rng = np.random.default_rng(seed)
        means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
        tail = (1 - confidence) / 2 * 100
        result["ci95"] = [
            float(np.percentile(means, tail)),
            float(np.percentile(means, 100 - tail)),
        ]
    return result


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, resamples: int = 10000, seed: int = 0
) -> dict[str, Any]:
    """``a - b`` over paired repeats: mean, bootstrap 95 % interval, Wilcoxon signed-rank
    and paired t-test p-values (two-sided), and how often ``a`` won.

    Returns
    -------
    dict
        ``n``, ``mean``, ``ci95``, ``wilcoxon_p``, ``t_p``, ``wins``, ``losses``, ``ties``;
        the p-values are None with fewer than two pairs or when every difference is zero.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise ValueError(f"paired scores differ in length: {a.size} and {b.size}")
    d = a - b
    result = bootstrap_mean(d, resamples=resamples, seed=seed)
    result.update(wins=int(np.sum(d > 0)), losses=int(np.sum(d < 0)), ties=int(np.sum(d == 0)),
                  wilcoxon_p=None, t_p=None)  # fmt: skip
    if d.size >= 2 and np.any(d != 0):
        result["wilcoxon_p"] = float(stats.wilcoxon(d, zero_method="wilcox").pvalue)
        if np.std(d) > 0:
            result["t_p"] = float(stats.ttest_rel(a, b).pvalue)
    return result


def summarize(
    records: Iterable[Mapping[str, Any]],
    *,
    contrasts: Sequence[tuple[str, str]],
    primary: Mapping[str, Any],
    resamples: int = 10000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per task and training size: every arm's score across repeats, and the contrasts.

    Parameters
    ----------
    records : iterable of dict
        ``task``, ``arm``, ``repeat``, ``size`` and ``test`` (holding ``auc`` or ``dice``).
    contrasts : sequence of (arm, arm)
        Paired differences to report, first minus second, over the repeats both ran.
    primary : dict
        ``task``, ``size``, ``contrast`` (arm, arm) and ``gain`` (the target difference):
        the verdict asks that the mean difference reach ``gain`` and its interval exclude 0.

    Returns
    -------
    dict
        ``results[task][size]`` with ``arms`` and ``contrasts``, and ``primary`` with the
        verdict (``met``: True, False, or None while fewer than two repeats are done).
    """
    table: dict[str, dict[int, dict[str, dict[int, float]]]] = {}
    for record in records:
        score = float(record["test"][SCORES[record["task"]]])
        by_arm = table.setdefault(record["task"], {}).setdefault(int(record["size"]), {})
        by_arm.setdefault(record["arm"], {})[int(record["repeat"])] = score
    results: dict[str, Any] = {}
    for task, sizes in sorted(table.items()):
        for size, arms in sorted(sizes.items()):
            entry: dict[str, Any] = {"score": SCORES[task], "arms": {}, "contrasts": []}
            for arm, by_repeat in arms.items():
                summary = bootstrap_mean(list(by_repeat.values()), resamples=resamples, seed=seed)
                summary["repeats"] = sorted(by_repeat)
                summary["values"] = [by_repeat[r] for r in sorted(by_repeat)]
                entry["arms"][arm] = summary
            for first, second in contrasts:
                if first not in arms or second not in arms:
                    continue
                common = sorted(set(arms[first]) & set(arms[second]))
                if not common:
                    continue
                diff = paired_difference([arms[first][r] for r in common],
                                         [arms[second][r] for r in common],
                                         resamples=resamples, seed=seed)  # fmt: skip
                entry["contrasts"].append({"first": first, "second": second, **diff})
            results.setdefault(task, {})[str(size)] = entry
    verdict: dict[str, Any] = {**primary, "contrast": list(primary["contrast"]), "met": None}
    found = next(
        (c for c in results.get(primary["task"], {}).get(str(primary["size"]), {}).get(
            "contrasts", []) if [c["first"], c["second"]] == list(primary["contrast"])),
        None,
    )  # fmt: skip
    if found is not None:
        verdict["difference"] = {k: found[k] for k in ("n", "mean", "ci95", "wilcoxon_p", "t_p")}
        if found["ci95"] is not None:
            verdict["met"] = bool(found["mean"] >= primary["gain"] and found["ci95"][0] > 0)
    return {"results": results, "primary": verdict}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _interval(ci: Sequence[float] | None) -> str:
    return "–" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown(summary: Mapping[str, Any], arms: Sequence[str]) -> str:
    """The summary as Markdown tables: scores per arm, then the paired contrasts."""
    lines = []
    for task, sizes in summary["results"].items():
        for size, entry in sizes.items():
            score = entry["score"].upper() if entry["score"] == "auc" else "Dice"
            lines += [
                f"### {task}, {size} real training subjects per class",
                "",
                f"| arm | mean test {score} | 95 % CI | repeats |",
                "|---|---|---|---|",
            ]
            for arm in arms:
                if arm in entry["arms"]:
                    a = entry["arms"][arm]
                    lines.append(f"| {arm} | {_fmt(a['mean'])} | {_interval(a['ci95'])} | "
                                 f"{a['n']} |")  # fmt: skip
            lines += ["", "| contrast | mean difference | 95 % CI | Wilcoxon p | paired t p | "
                      "wins / losses / ties |", "|---|---|---|---|---|---|"]  # fmt: skip
            for c in entry["contrasts"]:
                lines.append(
                    f"| {c['first']} − {c['second']} | {_fmt(c['mean'])} | "
                    f"{_interval(c['ci95'])} | {_fmt(c['wilcoxon_p'])} | {_fmt(c['t_p'])} | "
                    f"{c['wins']} / {c['losses']} / {c['ties']} |"
                )
            lines.append("")
    p = summary["primary"]
    first, second = p["contrast"]
    met = {True: "met", False: "not met", None: "not decided (fewer than two repeats)"}[p["met"]]
    lines.append(
        f"**Primary endpoint** ({p['task']}, {p['size']} per class, {first} − {second} ≥ "
        f"{p['gain']} with a 95 % CI excluding 0): {met}."
    )
    if "difference" in p:
        d = p["difference"]
        lines.append(f"Difference {_fmt(d['mean'])}, 95 % CI {_interval(d['ci95'])}, "
                     f"Wilcoxon p {_fmt(d['wilcoxon_p'])}, {d['n']} repeats.")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_scores(summary: Mapping[str, Any], arms: Sequence[str], path: str | Path) -> Path:
    """Score against training size, one line per arm with its 95 % interval, one panel per
    task; written as PNG."""
    from napari_mrisynth.reports.plots import _figure, _save

    tasks = list(summary["results"])
    figure = _figure(5.5 * max(1, len(tasks)), 4)
    axes = figure.subplots(1, max(1, len(tasks)), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=False):
        entries = summary["results"][task]
        sizes = sorted(int(s) for s in entries)
        for offset, arm in enumerate(arms):
            points = [(s, entries[str(s)]["arms"][arm]) for s in sizes
                      if arm in entries[str(s)]["arms"]]  # fmt: skip
            if not points:
                continue
            x = np.array([s for s, _ in points], float) + (offset - len(arms) / 2) * 0.12
            y = np.array([a["mean"] for _, a in points])
            low = np.array([a["ci95"][0] if a["ci95"] else a["mean"] for _, a in points])
            high = np.array([a["ci95"][1] if a["ci95"] else a["mean"] for _, a in points])
            ax.errorbar(x, y, yerr=[y - low, high - y], marker="o", capsize=3, label=arm)
        ax.set_xlabel("real training subjects per class")
        ax.set_ylabel(f"held-out test {'AUC' if SCORES[task] == 'auc' else 'Dice'}")
        ax.set_title(task)
        ax.set_xticks(sizes)
        ax.legend(fontsize=7)
    return _save(figure, path)
