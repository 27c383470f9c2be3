"""A Turing study's report: Markdown, a self-contained HTML page, ``statistics.json`` and PNGs.

:func:`write_study_report` turns what
:func:`~napari_mrisynth.turing.statistics.study_statistics` returned into tables (pooled, per
tier, per rater, agreement, per volume) and three figures: accuracy per rater with Wilson
intervals, fooled rate against realism per synthetic volume, and ROC curves of the
confidence-weighted calls. Every file is written under a temporary name and moved into place,
so a reader never sees half a report; every string that comes from the data is escaped.
Figures need matplotlib (imported only when drawing); without it the report says so and holds
the tables only.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from napari_mrisynth.errors import MrisynthError
from napari_mrisynth.io.atomic import write_text
from napari_mrisynth.reports import metrics, plots
from napari_mrisynth.turing.statistics import StatisticsError

MARKDOWN_FILE = "report.md"
HTML_FILE = "report.html"
JSON_FILE = "statistics.json"

#: Figure name -> file name, in the order the report shows them.
PLOT_FILES = {
    "accuracy_by_rater": "accuracy_by_rater.png",
    "volume_scores": "volume_scores.png",
    "confidence_roc": "confidence_roc.png",
}

_REQUIRED = ("mode", "ci_level", "pooled", "raters", "tiers", "rater_tiers", "agreement",
             "agreement_by_tier", "volumes")  # fmt: skip

#: Volumes are named on the scatter plot only when there are few enough to read.
_MAX_POINT_LABELS = 30

_MISSING = "–"

#: Shown in a table cell for a statistic that is undefined and has no reason of its own.
_UNDEFINED = "undefined"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.92em; }
caption { text-align: left; font-weight: bold; padding: 0.3em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #eee; }
figure { margin: 1.5em 0; }
img { max-width: 100%; }
.note { color: #555; }
"""


class _Table(NamedTuple):
    caption: str
    header: list[str]
    rows: list[list[str]]


# -- numbers as text -----------------------------------------------------------------------
def _number(value: float | None, digits: int = 3) -> str:
    return _MISSING if value is None else f"{value:.{digits}f}"


def _estimate(entry: Mapping[str, Any]) -> str:
    """``0.700 (0.397-0.892)``: a value with its interval, or why it is undefined."""
    if entry.get("value") is None:
        return entry.get("note") or _UNDEFINED
    if not entry.get("ci95"):
        return _number(entry["value"])
    low, high = entry["ci95"]
    return f"{_number(entry['value'])} ({_number(low)}–{_number(high)})"


def _p_value(p: float | None) -> str:
    if p is None:
        return _UNDEFINED
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def _defined(value: float | None) -> str:
    """A statistic that is None only when undefined (its reason is given elsewhere)."""
    return _UNDEFINED if value is None else _number(value)


def _plain(value: Any) -> str:
    """Study metadata as text: strings as they are, anything else as compact JSON."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


# -- tables --------------------------------------------------------------------------------
def _summary_row(summary: Mapping[str, Any]) -> list[str]:
    realism = summary["mean_realism"]
    return [
        str(summary["n_trials"]),
        _estimate(summary["accuracy"]),
        _p_value(summary["binomial"]["p_value"]),
        _estimate(summary["sensitivity"]),
        _estimate(summary["specificity"]),
        _estimate(summary["auc"]),
        _number(summary["median_seconds"], 1),
        _number(realism["real"], 2),
        _number(realism["synthetic"], 2),
    ]


def _summary_header(level: str) -> list[str]:
    return [
        "trials",
        f"accuracy ({level} CI)",
        "p (binomial)",
        f"sensitivity ({level} CI)",
        f"specificity ({level} CI)",
        f"AUC ({level} CI)",
        "median time (s)",
        "realism: real",
        "realism: synthetic",
    ]


def _tables(statistics: Mapping[str, Any]) -> list[_Table]:
    level = f"{100 * statistics['ci_level']:g}%"
    groups = [(tier, summary) for tier, summary in statistics["tiers"].items()]
    groups.append(("all raters (pooled)", statistics["pooled"]))
    tables = [
        _Table(
            "Pooled and per tier",
            ["group", "raters", *_summary_header(level)],
            [[name, str(s["n_raters"]), *_summary_row(s)] for name, s in groups],
        ),
        _Table(
            "Per rater",
            ["rater", "tier", *_summary_header(level)],
            [
                [rater, statistics["rater_tiers"][rater], *_summary_row(summary)]
                for rater, summary in sorted(
                    statistics["raters"].items(),
                    key=lambda pair: (statistics["rater_tiers"][pair[0]], pair[0]),
                )
            ],
        ),
    ]
    agreements = [("all raters", statistics["agreement"]), *statistics["agreement_by_tier"].items()]
    tables.append(
        _Table(
            "Agreement between raters (calls on the items every rater of the group rated)",
            ["group", "method", "kappa", "observed agreement", "items", "raters", "note"],
            [
                [
                    name,
                    {"cohen": "Cohen", "fleiss": "Fleiss"}.get(entry["method"], _MISSING),
                    _defined(entry["kappa"]),
                    _defined(entry.get("observed_agreement")),
                    str(entry["n_items"]),
                    str(len(entry["raters"])),
                    entry.get("note", ""),
                ]
                for name, entry in agreements
            ],
        )
    )
    volumes = statistics["volumes"]
    for synthetic, rate, caption in (
        (True, "fooled_rate", "Synthetic volumes, most often taken for real first"),
        (False, "called_synthetic_rate", "Real volumes, most often called synthetic first"),
    ):
        chosen = sorted(
            (v for v in volumes if volumes[v]["synthetic"] is synthetic),
            key=lambda v: (-volumes[v][rate], v),
        )
        tables.append(
            _Table(
                caption,
                ["volume", "judgments", rate.replace("_", " "), "mean realism", "mean confidence"],
                [
                    [
                        volume,
                        str(volumes[volume]["n_judgments"]),
                        _number(volumes[volume][rate]),
                        _number(volumes[volume]["mean_realism"], 2),
                        _number(volumes[volume]["mean_confidence"], 2),
                    ]
                    for volume in chosen
                ],
            )
        )
    return tables


def _notes(statistics: Mapping[str, Any]) -> list[str]:
    """Caveats on values the tables show as numbers (e.g. a degenerate AUC interval).

    An undefined value carries its reason in its own cell; a defined one with a ``note`` gets
    a line here, named by its group.
    """
    groups = [
        ("all raters (pooled)", statistics["pooled"]),
        *((f"tier {tier}", s) for tier, s in statistics["tiers"].items()),
        *((f"rater {rater}", s) for rater, s in statistics["raters"].items()),
    ]
    return [
        f"{name}, {key}: {summary[key]['note']}"
        for name, summary in groups
        for key in ("accuracy", "sensitivity", "specificity", "auc")
        if summary[key].get("value") is not None and summary[key].get("note")
    ]


def _overview(statistics: Mapping[str, Any], study: Mapping[str, Any] | None) -> _Table:
    pooled = statistics["pooled"]
    rows = [
        ["mode", statistics["mode"]],
        ["raters", str(pooled["n_raters"])],
        ["trials", str(pooled["n_trials"])],
    ]
    rows += [
        [str(key), _plain(value)]
        for key, value in sorted((study or {}).items(), key=lambda kv: str(kv[0]))
    ]
    return _Table("Study", ["", ""], rows)


_EXPLANATION = (
    "Accuracy and the exact two-sided binomial test against 50% chance count trials (a pair "
    "counts once). Sensitivity (synthetic volumes called synthetic) and specificity (real "
    "volumes called real) count shown volumes. The AUC ranks confidence-weighted calls "
    "(+confidence when called synthetic, -confidence when called real) against the truth. "
    "Accuracy near 50% means the raters could not tell synthetic from real. A dash marks a "
    "mean realism score that nobody gave."
)


# -- figures -------------------------------------------------------------------------------
def _label(text: str) -> str:
    """Text for matplotlib, with ``$`` escaped so that a name is never read as mathtext."""
    return text.replace("$", r"\$")


def _tier_colours(statistics: Mapping[str, Any]) -> dict[str, str]:
    return {tier: f"C{k % 10}" for k, tier in enumerate(statistics["tiers"])}


def _plot_accuracy(statistics: Mapping[str, Any], path: Path, title: str) -> None:
    tiers = statistics["rater_tiers"]
    raters = sorted(statistics["raters"], key=lambda r: (tiers[r], r))
    colours = _tier_colours(statistics)
    figure = plots._figure(max(5.0, 0.45 * len(raters) + 2.5), 4.5)
    axes = figure.add_subplot()
    axes.axhline(0.5, linestyle="--", color="0.5", linewidth=1, label="chance (50%)")
    for tier in statistics["tiers"]:
        positions = [k for k, rater in enumerate(raters) if tiers[rater] == tier]
        entries = [statistics["raters"][raters[k]]["accuracy"] for k in positions]
        values = np.array([e["value"] for e in entries], dtype=np.float64)
        bounds = np.array([e["ci95"] for e in entries], dtype=np.float64)
        # Wilson bounds enclose the value; clipping only guards matplotlib against rounding
        errors = np.clip([values - bounds[:, 0], bounds[:, 1] - values], 0.0, None)
        axes.errorbar(positions, values, yerr=errors, fmt="o", color=colours[tier], capsize=4,
                      label=_label(tier), clip_on=False)  # fmt: skip
    pooled = statistics["pooled"]["accuracy"]
    axes.axhline(pooled["value"], color="k", linewidth=1,
                 label=f"pooled {pooled['value']:.2f}")  # fmt: skip
    axes.set_xticks(range(len(raters)), [_label(r) for r in raters], rotation=45, ha="right")
    level = f"{100 * statistics['ci_level']:g}%"
    axes.set(xlim=(-0.6, len(raters) - 0.4), ylim=(-0.02, 1.02), xlabel="rater",
             ylabel=f"accuracy (Wilson {level} CI)", title=_label(title))  # fmt: skip
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="best", fontsize="small")  # a point at 0 or 1 must stay visible
    plots._save(figure, path)


def _plot_volumes(statistics: Mapping[str, Any], path: Path, title: str) -> None:
    synthetic = {v: e for v, e in statistics["volumes"].items() if e["synthetic"]}
    if not synthetic:
        raise MrisynthError("no synthetic volume was shown")
    volumes = {v: e for v, e in synthetic.items() if e["mean_realism"] is not None}
    if not volumes:
        raise MrisynthError("no synthetic volume has a realism score")
    realism = [entry["mean_realism"] for entry in volumes.values()]
    fooled = [entry["fooled_rate"] for entry in volumes.values()]
    figure = plots._figure(5.5, 4.5)
    axes = figure.add_subplot()
    axes.axhline(0.5, linestyle="--", color="0.5", linewidth=1)
    axes.scatter(realism, fooled, color="C3", alpha=0.7)
    if len(volumes) <= _MAX_POINT_LABELS:
        for name, x, y in zip(volumes, realism, fooled, strict=True):
            axes.annotate(_label(name), (x, y), textcoords="offset points", xytext=(4, 3),
                          fontsize="x-small")  # fmt: skip
    axes.set(xlim=(0.8, 5.2), ylim=(-0.03, 1.03), xlabel="mean realism score (1-5)",
             ylabel="fooled rate (share of judgments calling it real)",
             title=f"{_label(title)}\n{len(volumes)} synthetic volumes")  # fmt: skip
    axes.grid(alpha=0.3)
    plots._save(figure, path)


def _rated(table: Mapping[str, Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(truth, score) per judgment from a rating table: synthetic is 1."""
    scores = np.asarray(table["scores"], dtype=np.float64)
    synthetic, real = np.asarray(table["synthetic"]), np.asarray(table["real"])
    truth = np.r_[np.ones(synthetic.sum(), np.int64), np.zeros(real.sum(), np.int64)]
    return truth, np.r_[np.repeat(scores, synthetic), np.repeat(scores, real)]


def _plot_roc(statistics: Mapping[str, Any], path: Path, title: str) -> None:
    pooled = statistics["pooled"]
    if pooled["auc"]["value"] is None:
        raise MrisynthError(pooled["auc"]["note"].removeprefix("undefined: "))
    colours = _tier_colours(statistics)
    figure = plots._figure(6.0, 5.5)
    axes = figure.add_subplot()
    axes.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    no_curve = 0
    for rater, summary in statistics["raters"].items():
        if summary["auc"]["value"] is None:  # one class only: no curve
            no_curve += 1
            continue
        fpr, tpr, _ = metrics.roc_curve(*_rated(summary["rating_table"]))
        axes.plot(fpr, tpr, "-", linewidth=1, alpha=0.6,
                  color=colours[statistics["rater_tiers"][rater]],
                  label=f"{_label(rater)} {summary['auc']['value']:.2f}")  # fmt: skip
    fpr, tpr, _ = metrics.roc_curve(*_rated(pooled["rating_table"]))
    axes.plot(fpr, tpr, "-o", color="k", linewidth=2.5, markersize=3,
              label=f"pooled {_estimate(pooled['auc'])}")  # fmt: skip
    axes.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal",
             xlabel="real volumes called synthetic (1 - specificity)",
             ylabel="synthetic volumes called synthetic (sensitivity)",
             title=f"{_label(title)}\nconfidence-weighted calls: AUC")  # fmt: skip
    if no_curve:
        axes.text(0.02, 0.98, f"no curve for {no_curve} rater(s) shown one class only",
                  transform=axes.transAxes, va="top", fontsize="x-small")  # fmt: skip
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="x-small")
    plots._save(figure, path)


_DRAWINGS = {
    "accuracy_by_rater": _plot_accuracy,
    "volume_scores": _plot_volumes,
    "confidence_roc": _plot_roc,
}


# -- rendering -----------------------------------------------------------------------------
def _md(text: str) -> str:
    """A Markdown table cell: Markdown's markup characters and HTML escaped, one line."""
    for char in "\\`*_[]|#":
        text = text.replace(char, "\\" + char)
    return html.escape(" ".join(text.split()))


def _markdown_table(table: _Table) -> list[str]:
    lines = [f"**{_md(table.caption)}**", ""]
    lines.append("| " + " | ".join(_md(cell) for cell in table.header) + " |")
    lines.append("|" + "|".join(["---"] + ["--:"] * (len(table.header) - 1)) + "|")
    lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in table.rows]
    if not table.rows:
        lines.append("| " + " | ".join([_MISSING] * len(table.header)) + " |")
    return [*lines, ""]


def _markdown(
    title: str, overview: _Table, tables: list[_Table], notes: list[str], skipped: dict[str, str]
) -> str:
    lines = [f"# {_md(title)}", "", *_markdown_table(overview), _md(_EXPLANATION), ""]
    for table in tables:
        lines += _markdown_table(table)
    if notes:
        lines += ["**Notes**", "", *(f"- {_md(note)}" for note in notes), ""]
    lines += ["## Figures", ""]
    for name, file_name in PLOT_FILES.items():
        if name in skipped:
            lines += [f"_{_md(name)}: {_md(skipped[name])}_", ""]
        else:
            lines += [f"![{_md(name)}]({file_name})", ""]
    return "\n".join(lines)


def _html_table(table: _Table) -> str:
    header = "".join(f"<th>{html.escape(cell)}</th>" for cell in table.header)
    rows = "".join(
        "<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>\n"
        for row in table.rows
    )
    return (
        f"<table>\n<caption>{html.escape(table.caption)}</caption>\n"
        f"<thead><tr>{header}</tr></thead>\n<tbody>\n{rows}</tbody>\n</table>\n"
    )


def _html(
    title: str, overview: _Table, tables: list[_Table], notes: list[str], skipped: dict[str, str]
) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        '<head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head>",
        "<body>",
        f"<h1>{html.escape(title)}</h1>",
        _html_table(overview),
        f'<p class="note">{html.escape(_EXPLANATION)}</p>',
        *(_html_table(table) for table in tables),
    ]
    if notes:
        items = "".join(f"<li>{html.escape(note)}</li>" for note in notes)
        parts.append(f'<div class="note"><b>Notes</b><ul>{items}</ul></div>')
    parts.append("<h2>Figures</h2>")
    for name, file_name in PLOT_FILES.items():
        if name in skipped:
            parts.append(f'<p class="note">{html.escape(name)}: {html.escape(skipped[name])}</p>')
        else:
            source = html.escape(file_name, quote=True)
            parts.append(f'<figure><img src="{source}" alt="{html.escape(name, quote=True)}">'
                         f"<figcaption>{html.escape(name)}</figcaption></figure>")  # fmt: skip
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def write_study_report(
    statistics: Mapping[str, Any],
    out_dir: str | Path,
    *,
    title: str,
    study: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a study's report into ``out_dir``.

    Parameters
    ----------
    statistics : dict
        What :func:`~napari_mrisynth.turing.statistics.study_statistics` returned.
    out_dir : folder
        Created if needed; existing report files in it are replaced.
    title : str
        Heading of the report and the figures.
    study : dict, optional
        Study metadata (name, dates, protocol...) listed at the top of the report.

    Returns
    -------
    dict
        ``markdown``, ``html``, ``json``: paths of ``report.md``, ``report.html`` and
        ``statistics.json`` (the statistics as given, strict JSON); ``plots``: figure name
        -> PNG path for each figure drawn. A figure that cannot be drawn (no matplotlib, no
        realism scores, one class only) is left out and the report says why.

    Raises
    ------
    StatisticsError
        When ``statistics`` lacks an entry of :func:`study_statistics`.
    """
    missing = [key for key in _REQUIRED if key not in statistics]
    if missing:
        raise StatisticsError(f"statistics lack {missing}: pass what study_statistics returned")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    drawn: dict[str, Path] = {}
    skipped: dict[str, str] = {}
    for name, draw in _DRAWINGS.items():
        try:
            draw(statistics, out_dir / PLOT_FILES[name], title)
            drawn[name] = out_dir / PLOT_FILES[name]
        except MrisynthError as exc:  # no matplotlib, or nothing to draw
            skipped[name] = f"not drawn: {exc}"
            # a figure from an earlier report would otherwise pass for this one's
            (out_dir / PLOT_FILES[name]).unlink(missing_ok=True)
    text = json.dumps(statistics, indent=2, sort_keys=True, allow_nan=False) + "\n"
    paths = {"json": write_text(out_dir / JSON_FILE, text)}
    overview, tables, notes = _overview(statistics, study), _tables(statistics), _notes(statistics)
    paths["markdown"] = write_text(
        out_dir / MARKDOWN_FILE, _markdown(title, overview, tables, notes, skipped)
    )
    paths["html"] = write_text(out_dir / HTML_FILE, _html(title, overview, tables, notes, skipped))
    return {**paths, "plots": drawn}
