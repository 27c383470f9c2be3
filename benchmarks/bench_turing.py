"""Visual Turing test: rating commit latency under 8 concurrent raters, and trial turnover.

Two measurements, each against a reference taken in the same run:

``commit``
    8 rater processes start together (a barrier on stdin) and each commits ``--ratings``
    ratings, back to back (interval 0) or ``--intervals`` seconds apart on average (uniform
    0.5-1.5×: a human rater submits every few seconds and saves a draft on each click),
    timing every call:

    * ``store``: :meth:`RatingStore.add_rating` (trial look-up, then INSERT of the rating and
      DELETE of the draft in one transaction, SQLAlchemy Core over SQLite);
    * ``session``: :meth:`RaterSession.submit` (validation, then ``add_rating``);
    * ``sqlite3`` (the reference): a bare :mod:`sqlite3` ``INSERT`` + ``COMMIT`` of a row of
      the same shape, with the same pragmas (WAL, ``synchronous=FULL``, 30 s busy timeout),
      the same concurrency, into its own database file;
    * ``sqlite3-same``: bare :mod:`sqlite3` running ``add_rating``'s statements (trial
      look-up on a second connection, INSERT, DELETE of the draft, COMMIT, foreign keys on)
      on the store's schema: the share of the SQL work, without SQLAlchemy.

    Target: p99 ≤ 20 ms per commit.

``turnover``
    A real napari viewer (run under Xvfb) docks the *Visual Turing test* widget on a pair
    study of 20 trials whose volumes are upsampled onto a 1 mm or 2 mm grid; for every trial
    but the last the clock runs from ``widget.submit()`` until the next trial is on screen:

    * ``submit returns``: what the widget does before it gives control back (commit, layer
      data, names, view reset); the next frame is only *scheduled* then;
    * ``+ forced draw``: then ``canvas.native.repaint()`` and ``glFinish`` (see
      :func:`draw_now`): the frame with the new volumes is rendered;
    * the widget's own ``turnover_ms`` (``submit`` start to ``show_current`` end).

    The reference is napari alone in the same process: two image layers of the same size in
    grid mode whose data are replaced by the next pair's (already in memory), with the same
    forced draw; it runs before and after the widget (pooled), so that a disturbance of the
    machine during one pass shows. Target: p95 ≤ 150 ms.

Working files (study inputs, studies, databases) go to ``benchmarks/_work/turing/``.

Usage::

    python benchmarks/bench_turing.py --part commit --json commit.json
    xvfb-run -a -s "-screen 0 1400x1000x24" python benchmarks/bench_turing.py \\
        --part turnover --json turnover.json
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

WORK = Path(__file__).resolve().parent / "_work" / "turing"
ROOT = Path(__file__).resolve().parents[1]
STUDY = "bench"
#: Every benchmark rater's secret (a benchmark study is never rated by a person).
BENCH_SECRET = "bench-only-secret"
VIEWER_STATE = {
    "ndisplay": 2, "current_step": [96, 112, 88], "order": [0, 1, 2],
    "camera": {"center": [0.0, 111.5, 87.5], "zoom": 2.3, "angles": [0.0, 0.0, 90.0]},
    "layers": [{"contrast_limits": [0.0, 255.0], "gamma": 1.0}] * 2,
}  # fmt: skip  # the size of what the widget stores with each rating


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "p50": float(np.percentile(a, 50)),
            "p95": float(np.percentile(a, 95)), "p99": float(np.percentile(a, 99)),
            "max": float(a.max()), "mean": float(a.mean())}  # fmt: skip


# -- commit latency ---------------------------------------------------------------------------
def make_commit_study(db: Path, raters: list[str], n: int) -> None:
    """A study row, raters and ``n`` trials each, written straight into a new store (the
    store does not look at the volumes when it commits a rating, so none are prepared)."""
    from napari_mrisynth.turing import store as tables
    from napari_mrisynth.turing.accounts import hash_secret
    from napari_mrisynth.turing.store import RatingStore, now

    for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        path.unlink(missing_ok=True)
    with RatingStore(db, create=True) as store, store.transaction() as conn:
        conn.execute(tables.studies.insert(), {
            "study_id": STUDY, "created_at": now(), "mode": "pair", "seed": 0,
            "trials_per_rater": n, "grid": json.dumps({"spacing": 1.0}),
            "cache": str(db.parent / "no-volumes"), "design": "{}",
        })  # fmt: skip
        for rater in raters:
            conn.execute(tables.raters.insert(),
                         {"study_id": STUDY, "rater_id": rater, "added_at": now(),
                          "secret_hash": hash_secret(BENCH_SECRET)})  # fmt: skip
            conn.execute(tables.trials.insert(), [
                {"study_id": STUDY, "rater_id": rater, "position": p,
                 "item_id": f"I{p + 1:03d}", "shown": json.dumps(["V001", "V002"])}
                for p in range(n)
            ])  # fmt: skip


REFERENCE_TABLE = """CREATE TABLE ratings (
    study_id VARCHAR(64), rater_id VARCHAR(64), position INTEGER, item_id VARCHAR(16) NOT NULL,
    choice VARCHAR(16) NOT NULL, called_synthetic TEXT NOT NULL, confidence INTEGER NOT NULL,
    realism TEXT NOT NULL, comment TEXT NOT NULL, seconds FLOAT NOT NULL,
    viewer_state TEXT NOT NULL, submitted_at VARCHAR(32) NOT NULL,
    PRIMARY KEY (study_id, rater_id, position))"""


def commit_child(kind: str, db: str, rater: str, n: int, interval: float) -> dict:
    """One rater process: wait for the start line, commit ``n`` ratings (``interval`` s
    apart on average, uniform 0.5-1.5×; 0: back to back), return latencies."""
    from napari_mrisynth.turing.session import Answer, RaterSession
    from napari_mrisynth.turing.store import RatingStore, now

    store = session = con = None
    if kind == "store":
        store = RatingStore(db)
    elif kind == "session":
        session = RaterSession(db, rater, secret=BENCH_SECRET, prefetch=False)
    else:
        con = sqlite3.connect(db, timeout=30.0)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute("PRAGMA synchronous=FULL")
        if kind == "sqlite3-same":
            con.execute("PRAGMA foreign_keys=ON")
            reader = sqlite3.connect(db, timeout=30.0)
    print("READY", flush=True)
    sys.stdin.readline()
    state = json.dumps(VIEWER_STATE, sort_keys=True)
    latencies = []
    pauses = np.random.default_rng(int(rater[1:])).uniform(0.5, 1.5, n) * interval
    started = time.perf_counter()
    for k in range(n):
        if interval > 0:
            time.sleep(pauses[k])
        t0 = time.perf_counter()
        if kind == "store":
            store.add_rating(STUDY, rater, k, choice="AB"[k % 2], called_synthetic=[False, True],
                             confidence=1 + k % 5, realism=[3, 4], comment="",
                             seconds=12.5, viewer_state=VIEWER_STATE)  # fmt: skip
        elif kind == "session":
            session.submit(Answer("AB"[k % 2], 1 + k % 5, [3, 4]), VIEWER_STATE)
        elif kind == "sqlite3-same":  # add_rating's statements, without SQLAlchemy
            item, _ = reader.execute(
                "SELECT item_id, shown FROM trials WHERE study_id = ? AND rater_id = ? "
                "AND position = ?", (STUDY, rater, k),
            ).fetchone()  # fmt: skip
            con.execute(
                "INSERT INTO ratings (study_id, rater_id, position, item_id, choice, "
                "called_synthetic, confidence, realism, comment, seconds, viewer_state, "
                "submitted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (STUDY, rater, k, item, "AB"[k % 2], "[false, true]", 1 + k % 5, "[3, 4]", "",
                 12.5, state, now()),
            )  # fmt: skip
            con.execute("DELETE FROM drafts WHERE study_id = ? AND rater_id = ?", (STUDY, rater))
            con.commit()
        else:
            con.execute(
                "INSERT INTO ratings VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (STUDY, rater, k, f"I{k + 1:03d}", "AB"[k % 2], "[false, true]", 1 + k % 5,
                 "[3, 4]", "", 12.5, state, now()),
            )  # fmt: skip
            con.commit()
        latencies.append((time.perf_counter() - t0) * 1000.0)
    wall = time.perf_counter() - started
    for handle in (store, session, con):
        if handle is not None:
            handle.close()
    return {"kind": kind, "rater": rater, "ms": latencies, "wall_s": wall}


def run_commit(kind: str, db: Path, n: int, procs: int, interval: float) -> dict:
    raters = [f"r{k + 1}" for k in range(procs)]
    if kind == "sqlite3":
        for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            path.unlink(missing_ok=True)
        con = sqlite3.connect(db)
        con.execute("PRAGMA journal_mode=WAL")
        con.execute(REFERENCE_TABLE)
        con.commit()
        con.close()
    else:
        make_commit_study(db, raters, n)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT / "src"))
    children = [
        subprocess.Popen([sys.executable, __file__, "--child-commit", kind, "--db", str(db),
                          "--rater", rater, "--ratings", str(n), "--interval", str(interval)],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        for rater in raters
    ]  # fmt: skip
    for child in children:
        if child.stdout.readline().strip() != "READY":
            raise RuntimeError(f"{kind}: a rater process failed to start")
    started = time.perf_counter()
    for child in children:
        child.stdin.write("go\n")
        child.stdin.flush()
    results = []
    for child in children:
        out, _ = child.communicate(timeout=1200)
        if child.returncode:
            raise RuntimeError(f"{kind}: a rater process exited {child.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    wall = time.perf_counter() - started
    con = sqlite3.connect(db)
    stored = con.execute("SELECT count(*) FROM ratings").fetchone()[0]
    integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
    con.close()
    all_ms = [v for r in results for v in r["ms"]]
    return {"kind": kind, "processes": procs, "ratings_per_process": n, "interval_s": interval,
            **percentiles(all_ms),
            "wall_s": wall, "commits_per_s": len(all_ms) / wall, "stored": stored,
            "integrity": integrity}  # fmt: skip


# -- trial turnover --------------------------------------------------------------------------
def study_inputs(n: int) -> tuple[Path, Path]:
    sys.path.insert(0, str(ROOT))  # the test suite's builders: tests/support
    from tests.support.study_inputs import build_study_inputs

    root = WORK / f"inputs-{n}"
    if not (root / "synthetic").is_dir():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        build_study_inputs(root, n_real=n, n_synthetic=n)
    return root / "real", root / "synthetic"


def turnover_study(spacing: float, trials: int, resolution: float) -> Path:
    """The frozen pair study at ``spacing`` mm (made once, then reused)."""
    from napari_mrisynth.turing.design import create_study
    from napari_mrisynth.turing.store import RatingStore

    db = WORK / f"turnover-{spacing:g}mm-{trials}.db"
    if not db.is_file():
        real, synthetic = study_inputs(trials)
        started = time.perf_counter()
        create_study(db, key=db.with_name(f"{db.stem}-KEY.db"), real=real, synthetic=synthetic,
                     raters=["bench"], mode="pair", trials=trials, seed=0, study_id="study",
                     spacing=spacing, resolution=resolution)  # fmt: skip
        with RatingStore(db) as store:
            store.set_secret("study", "bench", BENCH_SECRET)
        print(f"  created {db.name} in {time.perf_counter() - started:.1f} s", flush=True)
    return db


def draw_now(viewer) -> None:
    """Render the canvas now, synchronously, and wait for the GL work to finish.

    ``QOpenGLWidget.repaint()`` delivers the paint event immediately (``update()``, which is
    what napari calls when a layer changes, only schedules one for the event loop): Qt calls
    vispy's ``paintGL``, which emits the draw event, napari's ``on_draw`` and the scene
    draw, including the texture upload of the new slice. Mesa's llvmpipe queues GL commands,
    so ``glFinish`` (``context.finish()``) then waits until the frame is really rendered.
    ``viewer.screenshot(canvas_only=True)`` would also force a draw, but it renders a second,
    off-screen frame and reads it back, which adds a copy the rater never waits for.

    Qt paints only what is dirty: when the canvas was already drawn with the new data (the
    widget's ``QProgressBar.setValue`` repaints the window synchronously inside ``submit``),
    the repaint finds nothing to do and costs well under a millisecond, so ``submit +
    draw_now`` is the time until the new trial is rendered either way.
    """
    canvas = viewer.window._qt_viewer.canvas
    canvas.native.repaint()
    canvas._scene_canvas.context.finish()


def _idle(seconds: float) -> None:
    """Let the event loop run (and the prefetch thread work) as while a rater looks."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.005)


SWAPS: list[float] = []  # times of the canvas's frameSwapped signal


def _first_swap(after: int, t0: float, wait_s: float = 1.0) -> float:
    """ms from ``t0`` to the first frame swapped after ``SWAPS[after]`` (the event loop runs
    until one comes, for at most ``wait_s``); nan when none came."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + wait_s
    while len(SWAPS) <= after and time.perf_counter() < end:
        QApplication.processEvents()
    return (SWAPS[after] - t0) * 1000.0 if len(SWAPS) > after else float("nan")


def _reference(viewer, arrays: list, spacing: float, think_s: float) -> tuple[list, list, list]:
    """napari alone: two image layers in grid mode, as the widget shows a pair, whose data
    are replaced by the next pair's (already in memory); ms to set the data, and to set it
    and draw."""
    layers = [viewer.add_image(a, name=f"ref {i}", colormap="gray", contrast_limits=(0, 255),
                               interpolation2d="linear", scale=(spacing,) * 3)
              for i, a in enumerate(arrays[0])]  # fmt: skip
    for layer in layers:
        layer.contrast_limits_range = (0, 255)
    viewer.grid.shape, viewer.grid.stride, viewer.grid.enabled = (1, 2), 1, True
    viewer.dims.ndisplay = 2
    viewer.reset_view()
    draw_now(viewer)
    _idle(think_s)
    data_set, drawn, on_screen = [], [], []
    for pair in arrays[1:]:
        n0 = len(SWAPS)
        t0 = time.perf_counter()
        for layer, data in zip(layers, pair, strict=True):
            layer.data = data
        t1 = time.perf_counter()
        draw_now(viewer)
        t2 = time.perf_counter()
        data_set.append((t1 - t0) * 1000.0)
        drawn.append((t2 - t0) * 1000.0)
        on_screen.append(_first_swap(n0, t0))
        _idle(think_s)
    viewer.layers.clear()
    viewer.grid.enabled = False
    _idle(0.3)
    return data_set, drawn, on_screen


def turnover_child(db: str, think_s: float) -> dict:
    import napari

    from napari_mrisynth.turing.session import RaterSession
    from napari_mrisynth.turing.store import RatingStore

    with RatingStore(db) as store:
        study_id = store.only_study()
        study = store.study(study_id)
        cache = Path(study["cache"])
        n = study["trials_per_rater"]
        pairs = [store.trial(study_id, "bench", p)["shown"] for p in range(n)]
    out: dict = {"grid": study["grid"]["shape"], "spacing": study["grid"]["spacing"]}

    viewer = napari.Viewer(show=True)
    _idle(0.5)
    from vispy.gloo import gl

    viewer.window._qt_viewer.canvas._scene_canvas.set_current()
    out["gl"] = {"renderer": gl.glGetParameter(gl.GL_RENDERER),
                 "version": gl.glGetParameter(gl.GL_VERSION)}  # fmt: skip
    draws: list[float] = []  # when each draw of the canvas had issued the scene's GL calls
    canvas = viewer.window._qt_viewer.canvas
    canvas._scene_canvas.events.draw.connect(
        lambda _event: draws.append(time.perf_counter()), position="last"
    )
    # QOpenGLWidget.frameSwapped: the window has composed the canvas's new frame and
    # returned from swapBuffers, i.e. the frame is on screen
    canvas.native.frameSwapped.connect(lambda: SWAPS.append(time.perf_counter()))
    arrays = [[np.load(cache / f"{v}.npy") for v in shown] for shown in pairs]
    spacing = study["grid"]["spacing"]
    bare, bare_drawn, bare_screen = _reference(viewer, arrays, spacing, think_s)  # before

    # -- the widget ---------------------------------------------------------------------------
    _, widget = viewer.window.add_plugin_dock_widget("napari-mrisynth", "Visual Turing test")
    widget.db_path.setText(db)
    widget.rater_id.setText("bench")
    widget.secret.setText(BENCH_SECRET)
    widget.name.setText("Bench Marker")
    widget.years.setValue(7)
    if not widget.start():
        raise RuntimeError(widget.last_error)
    draw_now(viewer)
    _idle(think_s)
    returned, drawn, first_frame, draws_inside, on_screen = [], [], [], [], []
    session: RaterSession = widget.session
    while not session.finished:
        widget.choose(0)
        widget.set_score(widget.confidence, 4)
        widget.set_score(widget.realism[0], 3)
        widget.set_score(widget.realism[1], 2)
        _idle(0.05)
        last = session.position == session.total - 1
        before = widget.presentation.position
        n0, s0 = len(draws), len(SWAPS)
        t0 = time.perf_counter()
        if not widget.submit():
            raise RuntimeError(widget.last_error or widget.status.text())
        t1 = time.perf_counter()
        if last:
            break
        inside = len(draws) - n0
        draw_now(viewer)
        t2 = time.perf_counter()
        if widget.presentation.position != before + 1:
            raise RuntimeError("the next trial was not shown")
        returned.append((t1 - t0) * 1000.0)
        drawn.append((t2 - t0) * 1000.0)
        draws_inside.append(inside)
        # the first frame drawn after submit began: inside submit when a Qt widget repaints
        # synchronously (QProgressBar.setValue does), else the forced draw
        first_frame.append(((draws[n0] if len(draws) > n0 else t2) - t0) * 1000.0)
        on_screen.append(_first_swap(s0, t0))
        _idle(think_s)
    for layer in list(viewer.layers):  # the widget's layers, if it left any
        viewer.layers.remove(layer)
    after, after_drawn, after_screen = _reference(viewer, arrays, spacing, think_s)  # after
    bare, bare_drawn, bare_screen = (
        bare + after,
        bare_drawn + after_drawn,
        bare_screen + after_screen,
    )
    out.update({
        "reference_data_set": percentiles(bare), "reference_drawn": percentiles(bare_drawn),
        "submit_returns": percentiles(returned), "submit_drawn": percentiles(drawn),
        "submit_first_frame": percentiles(first_frame), "draws_inside_submit": draws_inside,
        "submit_on_screen": percentiles(on_screen), "reference_on_screen": percentiles(bare_screen),
        "widget_turnover_ms": percentiles(widget.turnover_ms[:-1]),
        "widget_turnover_last_ms": widget.turnover_ms[-1],
        "raw": {"reference_drawn": bare_drawn, "reference_data_set": bare,
                "submit_drawn": drawn, "submit_first_frame": first_frame,
                "submit_on_screen": on_screen, "reference_on_screen": bare_screen,
                "submit_returns": returned, "widget_turnover_ms": widget.turnover_ms},
    })  # fmt: skip
    viewer.close()
    return out


def run_turnover(spacing: float, trials: int, resolution: float, think_s: float) -> dict:
    db = turnover_study(spacing, trials, resolution)
    run_db = WORK / f"run-{spacing:g}mm.db"
    for path in (run_db, run_db.with_name(run_db.name + "-wal"),
                 run_db.with_name(run_db.name + "-shm")):  # fmt: skip
        path.unlink(missing_ok=True)
    source, target = sqlite3.connect(db), sqlite3.connect(run_db)
    source.backup(target)  # a fresh copy: the rater starts at trial 1 every run
    source.close()
    target.close()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, __file__, "--child-turnover", "--db", str(run_db),
                           "--think", str(think_s)],
                          capture_output=True, text=True, env=env, timeout=1800)  # fmt: skip
    if proc.returncode:
        raise RuntimeError(f"turnover {spacing:g} mm failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- main -------------------------------------------------------------------------------------
def _loadavg() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


def _row(name: str, s: dict, ref: dict | None = None) -> str:
    ratio = f"{s['p95'] / ref['p95']:.2f}" if ref else "—"
    ratio99 = f"{s['p99'] / ref['p99']:.2f}" if ref else "—"
    return (f"| {name} | {s['n']} | {s['p50']:.1f} | {s['p95']:.1f} | {s['p99']:.1f} | "
            f"{s['max']:.1f} | {ratio} | {ratio99} |")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("commit", "turnover", "all"), default="all")
    parser.add_argument("--ratings", type=int, default=200, help="ratings per rater process")
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument(
        "--intervals",
        type=float,
        nargs="+",
        default=[0.0, 0.05, 0.5],
        help="mean seconds between one process's commits (0: back to back)",
    )
    parser.add_argument("--spacings", type=float, nargs="+", default=[1.0, 2.0])
    parser.add_argument("--trials", type=int, default=20, help="pair trials (turnover)")
    parser.add_argument("--resolution", type=float, default=4.0)
    parser.add_argument(
        "--think",
        type=float,
        default=0.4,
        help="seconds the event loop runs between trials (prefetch time)",
    )
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--child-commit", choices=("store", "session", "sqlite3", "sqlite3-same"),
                        help=argparse.SUPPRESS)  # fmt: skip
    parser.add_argument("--child-turnover", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    parser.add_argument("--rater", help=argparse.SUPPRESS)
    parser.add_argument("--interval", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child_commit:
        print(
            json.dumps(
                commit_child(args.child_commit, args.db, args.rater, args.ratings, args.interval)
            )
        )
        return 0
    if args.child_turnover:
        print(json.dumps(turnover_child(args.db, args.think)))
        return 0

    WORK.mkdir(parents=True, exist_ok=True)
    results: dict = {"loadavg_before": Path("/proc/loadavg").read_text().split()[:3]}
    if args.part in ("commit", "all"):
        commit: dict = {}
        for interval in args.intervals:
            key = f"interval {interval:g} s"
            commit[key] = {}
            for kind in ("sqlite3", "sqlite3-same", "store", "session"):
                print(f"commit latency: {kind}, {key} ...", flush=True)
                load = _loadavg()
                commit[key][kind] = run_commit(kind, WORK / f"commit-{kind}.db", args.ratings,
                                               args.processes, interval)  # fmt: skip
                commit[key][kind]["loadavg"] = [load, _loadavg()]
        results["commit"] = commit
        for key, by_kind in commit.items():
            print(f"\nCommit latency, {args.processes} processes × {args.ratings} ratings, "
                  f"{key} between one process's commits (ms)\n")  # fmt: skip
            print("| path | commits | p50 | p95 | p99 | max | p95 ÷ ref | p99 ÷ ref |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            ref = by_kind["sqlite3"]
            for kind, label in (("sqlite3", "bare sqlite3 INSERT+COMMIT (reference)"),
                                ("sqlite3-same", "bare sqlite3, add_rating's statements"),
                                ("store", "RatingStore.add_rating"),
                                ("session", "RaterSession.submit")):  # fmt: skip
                print(_row(label, by_kind[kind], None if kind == "sqlite3" else ref))
            for kind, r in by_kind.items():
                print(
                    f"  {kind}: {r['commits_per_s']:.0f} commits/s over {r['wall_s']:.1f} s, "
                    f"{r['stored']} rows stored, integrity {r['integrity']}"
                )
    if args.part in ("turnover", "all"):
        turnover = {}
        for spacing in args.spacings:
            print(f"turnover {spacing:g} mm ...", flush=True)
            load = _loadavg()
            turnover[f"{spacing:g}mm"] = run_turnover(spacing, args.trials, args.resolution,
                                                      args.think)  # fmt: skip
            turnover[f"{spacing:g}mm"]["loadavg"] = [load, _loadavg()]
        results["turnover"] = turnover
        for key, r in turnover.items():
            grid = "×".join(str(v) for v in r["grid"])
            print(f"\nOpenGL: {r['gl']['renderer']} ({r['gl']['version']})")
            print(f"\nTrial turnover, {key} grid ({grid}, uint8, 2 layers) (ms)\n")
            print("| path | trials | p50 | p95 | p99 | max | p95 ÷ ref | p99 ÷ ref |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|")
            print(_row("napari: 2 layers' data replaced (reference)", r["reference_data_set"]))
            print(_row("napari: replaced + forced draw (reference)", r["reference_drawn"]))
            print(_row("widget: submit returns", r["submit_returns"], r["reference_data_set"]))
            print(_row("napari: replaced → frame swapped (reference)", r["reference_on_screen"]))
            print(_row("widget: submit → first frame swapped", r["submit_on_screen"],
                       r["reference_on_screen"]))  # fmt: skip
            print(_row("widget: first frame drawn after submit began", r["submit_first_frame"],
                       r["reference_drawn"]))  # fmt: skip
            print(_row("widget: submit + forced draw", r["submit_drawn"], r["reference_drawn"]))
            print(_row("widget: own turnover_ms", r["widget_turnover_ms"]))
            inside = r["draws_inside_submit"]
            print(
                f"  canvas draws inside submit(): {sum(1 for d in inside if d)} of "
                f"{len(inside)} trials"
            )
    results["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
    print(f"\nload average before {results['loadavg_before']}, after {results['loadavg_after']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
