"""What every command shares: the ``--device`` option and its notice, comma-separated
names, and progress bars.

Core functions report progress as ``progress(done, total)`` and never print; a command turns
that into a tqdm bar on stderr (stdout stays clean for ``--json``), and announces a fallback
to the CPU in one line instead of a warning with a traceback location.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable
from typing import Any

DEVICE_HELP = "auto (cuda -> mps -> cpu, the default), cuda, cuda:N, mps or cpu"


def comma_names(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: an option's comma-separated names."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_device_option(parser: argparse.ArgumentParser, help: str = DEVICE_HELP) -> None:
    """``--device`` (default ``auto``)."""
    parser.add_argument("--device", default="auto", help=help)


def chosen_device(requested: str | None, command: str) -> Any:
    """The torch device for ``requested``; a CPU fallback is noted on stderr in one line."""
    from napari_mrisynth.models.device import CpuFallbackWarning, choose_device

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CpuFallbackWarning)
        device = choose_device(requested or "auto")
    for warning in caught:
        print(f"mrisynth {command}: note: {warning.message}", file=sys.stderr)
    return device


class ProgressBar:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr, made on first use.

    Use it as a context manager so the bar is closed however the work ends::

        with ProgressBar("evaluate") as progress:
            evaluate_sets(real, synthetic, progress=progress)
    """

    def __init__(self, desc: str, unit: str = "step", *, enabled: bool = True, leave: bool = True):
        self.desc, self.unit, self.enabled, self.leave = desc, unit, enabled, leave
        self.bar: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            from tqdm import tqdm

            # work already done before the bar (a resumed run) does not count in the rate
            self.bar = tqdm(total=total, initial=done, desc=self.desc, unit=self.unit,
                            file=sys.stderr, leave=self.leave)  # fmt: skip
        self.bar.total = total
        self.bar.n = done
        self.bar.refresh()

    def callback(self) -> Callable[[int, int], None] | None:
        """This bar as a callback, or None when disabled (the core then skips reporting)."""
        return self if self.enabled else None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
