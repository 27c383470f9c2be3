"""What a rater's viewer talks to: one blinded trial at a time, answers committed on submit.

A :class:`RaterSession` hands out :class:`Presentation` objects that hold only what the
rater may see: the case number, the trial's place in the sequence, neutral panel names
("Case 17 · A") and the prepared voxels. Where a volume came from, its id and whether it is
real never leave the store through this class. The next trial's voxels are read in a
background thread while the rater works on the current one.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.turing.prepare import load_prepared
from napari_mrisynth.turing.store import RaterInfo, RatingStore, StudyError

PANEL_LABELS = ("A", "B")
CHOICES = {"pair": ("A", "B"), "single": ("real", "synthetic")}


@dataclass(frozen=True)
class Panel:
    """One volume as the rater sees it."""

    label: str  # "A" or "B"
    name: str  # "Case 17 · A"
    data: np.ndarray  # uint8, display order (z, y, x)


@dataclass(frozen=True)
class Presentation:
    """One trial, blinded."""

    position: int  # 0-based
    total: int
    case: int  # 1-based case number shown to the rater
    mode: str
    panels: tuple[Panel, ...]
    scale: tuple[float, float, float]


@dataclass
class Answer:
    """A rater's answer to one trial."""

    choice: str  # pair: the panel judged real ("A"/"B"); single: "real"/"synthetic"
    confidence: int  # 1-5
    realism: list[int | None] = field(default_factory=list)  # 1-5 per panel
    comment: str = ""


def experience_tier(years: float | None) -> str:
    """Experience tiers as reader studies report them (e.g. Park et al. 2021)."""
    if years is None or (isinstance(years, float) and math.isnan(years)):
        return "unknown"
    if years < 5:
        return "junior (<5 y)"
    if years < 10:
        return "intermediate (5-10 y)"
    return "senior (>=10 y)"


class RaterSession:
    """One rater working through their trials of one study.

    Parameters
    ----------
    db : path, URL or RatingStore
    rater_id : str
    secret : str
        The rater's secret (issued when they were added to the study): a wrong one is
        refused and the attempt recorded.
    study_id : str, optional
        Needed only when the database holds more than one study.
    prefetch : bool
        Read the next trial's voxels in a background thread.
    """

    def __init__(self, db: str | Path | RatingStore, rater_id: str, *, secret: str,
                 study_id: str | None = None, prefetch: bool = True):  # fmt: skip
        self.store = db if isinstance(db, RatingStore) else RatingStore(db)
        try:
            self.study_id = study_id or self.store.only_study()
            study = self.store.study(self.study_id)
            self.store.authenticate(self.study_id, rater_id, secret)
        except BaseException:
            if not isinstance(db, RatingStore):
                self.store.close()
            raise
        self.mode: str = study["mode"]
        self.rater_id = rater_id
        self.total = self.store.trial_count(self.study_id, rater_id)
        self._cache = Path(study["cache"])
        spacing = float(study["grid"]["spacing"])
        self.scale = (spacing, spacing, spacing)
        self._rated = self.store.rated_positions(self.study_id, rater_id)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="turing-prefetch") \
            if prefetch else None  # fmt: skip
        self._pending: dict[int, Future] = {}
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._seconds_before = 0.0  # time on the current trial before a resume or pause
        self._paused_at: float | None = None
        self._position = self._next_unrated()
        self._restore_draft()

    # -- who and where -----------------------------------------------------------------------
    @property
    def rater(self) -> RaterInfo:
        return self.store.rater(self.study_id, self.rater_id)

    def sign_in(self, name: str, role: str, years: float) -> RaterInfo:
        return self.store.sign_in(self.study_id, self.rater_id, name=name, role=role,
                                  years=years)  # fmt: skip

    @property
    def position(self) -> int | None:
        """The current trial (0-based), or None when every trial is rated."""
        return self._position

    @property
    def done(self) -> int:
        return len(self._rated)

    @property
    def finished(self) -> bool:
        return self._position is None

    def _next_unrated(self, start: int = 0) -> int | None:
        for position in range(start, self.total):
            if position not in self._rated:
                return position
        for position in range(0, min(start, self.total)):
            if position not in self._rated:
                return position
        return None

    # -- voxels ------------------------------------------------------------------------------
    def _load(self, position: int) -> Presentation:
        trial = self.store.trial(self.study_id, self.rater_id, position)
        case = position + 1
        panels = []
        for label, volume_id in zip(PANEL_LABELS, trial["shown"], strict=False):
            digest = self.store.prepared_digest(self.study_id, volume_id)
            data = load_prepared(self._cache, volume_id, digest)
            data.flags.writeable = False
            name = f"Case {case} · {label}" if self.mode == "pair" else f"Case {case}"
            panels.append(Panel(label, name, data))
        return Presentation(position, self.total, case, self.mode, tuple(panels), self.scale)

    def _prefetch(self, position: int | None) -> None:
        if self._pool is None or position is None:
            return
        with self._lock:
            if position not in self._pending:
                self._pending[position] = self._pool.submit(self._load, position)

    def presentation(self) -> Presentation | None:
        """The current trial (None when finished); starts reading the one after it."""
        position = self._position
        if position is None:
            return None
        with self._lock:
            future = self._pending.pop(position, None)
        shown = future.result() if future is not None else self._load(position)
        self._prefetch(self._next_unrated(position + 1))
        return shown

    # -- time --------------------------------------------------------------------------------
    def seconds_on_trial(self) -> float:
        """Time on the current trial, pauses excluded, earlier sessions included."""
        running = 0.0 if self._paused_at is not None else time.monotonic() - self._started
        return self._seconds_before + running

    def pause(self) -> None:
        if self._paused_at is None:
            self._seconds_before = self.seconds_on_trial()
            self._paused_at = time.monotonic()

    def resume(self) -> None:
        if self._paused_at is not None:
            self._paused_at = None
            self._started = time.monotonic()

    @property
    def paused(self) -> bool:
        return self._paused_at is not None

    def start_trial_clock(self) -> None:
        """Start timing the current trial now (call when it is on screen)."""
        if self._paused_at is None:
            self._started = time.monotonic()

    # -- drafts and answers ------------------------------------------------------------------
    def _restore_draft(self) -> None:
        self.draft_state: dict[str, Any] = {}
        draft = self.store.draft(self.study_id, self.rater_id)
        if draft and draft["position"] == self._position:
            self.draft_state = draft["state"]
            self._seconds_before = float(draft["seconds"])

    def save_draft(self, state: dict[str, Any]) -> None:
        """Keep the answers so far (and the viewer state) for a resume after a crash."""
        if self._position is None:
            return
        self.draft_state = dict(state)
        self.store.save_draft(self.study_id, self.rater_id, self._position, self.draft_state,
                              self.seconds_on_trial())  # fmt: skip

    def validate(self, answer: Answer) -> None:
        """Raise :class:`StudyError` for an incomplete or impossible answer."""
        choices = CHOICES[self.mode]
        if answer.choice not in choices:
            raise StudyError(f"choice {answer.choice!r}: answer {' or '.join(choices)}")
        if not isinstance(answer.confidence, int) or not 1 <= answer.confidence <= 5:
            raise StudyError(f"confidence {answer.confidence!r}: give 1-5")
        n_panels = 2 if self.mode == "pair" else 1
        if len(answer.realism) != n_panels:
            raise StudyError(f"realism: give one score per volume ({n_panels})")
        for score in answer.realism:
            if score is None or not 1 <= int(score) <= 5:
                raise StudyError(f"realism {score!r}: give 1-5 for every volume")

    def submit(self, answer: Answer, viewer_state: dict[str, Any] | None = None) -> str:
        """Commit the answer to the current trial and move to the next unrated one.

        Returns the commit time. Nothing is kept in memory only: when this returns, the
        rating is in the database.
        """
        position = self._position
        if position is None:
            raise StudyError(f"rater {self.rater_id!r}: every trial is already rated")
        if self.paused:
            raise StudyError("the study is paused; resume before answering")
        self.validate(answer)
        if self.mode == "pair":
            called = [label != answer.choice for label in PANEL_LABELS]
        else:
            called = [answer.choice == "synthetic"]
        stamp = self.store.add_rating(
            self.study_id, self.rater_id, position, choice=answer.choice,
            called_synthetic=called, confidence=answer.confidence,
            realism=list(answer.realism), comment=answer.comment.strip(),
            seconds=round(self.seconds_on_trial(), 3), viewer_state=viewer_state or {},
        )  # fmt: skip
        self._rated.add(position)
        self._position = self._next_unrated(position + 1)
        self._seconds_before = 0.0
        self._started = time.monotonic()
        self.draft_state = {}
        return stamp

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.store.close()
