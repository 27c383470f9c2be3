"""One synthesis request, start to finish, as the Synthesize widget and scripts make it: the
real scan to compare with brought onto the generator's model grid (alignment, resampling,
the generators' intensity scale) and the synthetic volumes generated. No Qt, no layers: the
widget runs this in a worker and turns the result into layers on the GUI thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from napari_mrisynth.errors import ModelError
from napari_mrisynth.models.card import ModelCard
from napari_mrisynth.synthesis.generate import Synthetic
from napari_mrisynth.volume import Volume


@dataclass
class SynthesisRequest:
    """Everything a synthesis run needs, read on the GUI thread."""

    card: ModelCard
    n: int
    condition: str
    age: float | None = None
    sex: str | None = None
    seed: int = 0
    device: str = "auto"
    steps: int | None = None
    guidance: float | None = None
    compare: Volume | None = None
    compare_name: str = ""
    #: Label maps too: every synthetic volume's own (generators that make one) and, for the
    #: real scan, the default segmentation model's labels on the same grid.
    labels: bool = False

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`~napari_mrisynth.synthesis.generate.generate`."""
        return {
            "condition": self.condition,
            "age": self.age,
            "sex": self.sex,
            "seed": self.seed,
            "device": self.device,
            "steps": self.steps,
            "guidance": self.guidance,
        }


@dataclass
class SynthesisRun:
    """What a request made: the real scan on the model grid (if any) and its segmentation
    (when label maps were asked for), every synthetic volume with its provenance and label
    map, the device, the seconds each stage took, and notes for the user."""

    request: SynthesisRequest
    synthetic: list[Synthetic]
    real: Volume | None = None
    seconds: float = 0.0
    device: str = "cpu"
    stages: dict[str, float] = field(default_factory=dict)
    real_labels: Volume | None = None
    notes: list[str] = field(default_factory=list)


def synthesize(
    request: SynthesisRequest, progress: Callable[[int, int, str], None] | None = None
) -> SynthesisRun:
    """Prepare the real scan (if any) and generate the synthetic volumes.

    The real scan goes first, so a scan the generator's grid cannot take fails before
    minutes of sampling. ``progress(done, total, stage)`` reports ``prepare`` and ``sample``.

    Raises
    ------
    ModelError
        The generator cannot be loaded or fails on the device (the message names it).
    """
    from napari_mrisynth.synthesis.generate import generate

    began = time.perf_counter()
    stages: dict[str, float] = {}
    real = None
    if request.compare is not None:
        from napari_mrisynth.preprocess import prepare

        prepared = prepare(request.compare, request.card.input, source=request.compare_name)
        real = prepared.grid.volume(prepared.image, modality="MR")
        stages["prepare"] = time.perf_counter() - began
        if progress is not None:
            progress(0, 1, "prepare")

    def sampled(done: int, total: int) -> None:
        if progress is not None:
            progress(done, total, "sample")

    clock = time.perf_counter()
    ref = request.card.ref
    try:
        synthetics = generate(
            request.card, request.n, progress=sampled, **request.generate_kwargs()
        )
    except ModelError as exc:
        if request.card.id in str(exc):
            raise
        raise ModelError(f"{ref}: {exc}") from exc
    except RuntimeError as exc:  # torch's own: out of memory, a device gone away
        raise ModelError(f"{ref}: generation failed on {request.device}: {exc}") from exc
    stages["generate"] = time.perf_counter() - clock
    run = SynthesisRun(
        request,
        synthetics,
        real,
        device=str(synthetics[0].provenance.get("device", "cpu")),
        stages=stages,
    )
    if request.labels:
        if any(s.labels is None for s in synthetics):
            run.notes.append(f"{ref} makes no label maps.")
        if real is not None:
            clock = time.perf_counter()
            run.real_labels = _segment_real(run)
            stages["segment"] = time.perf_counter() - clock
    run.seconds = time.perf_counter() - began
    return run


def _segment_real(run: SynthesisRun) -> Volume | None:
    """The real scan's labels on the model grid from the default segmentation model, or
    ``None`` with a note saying why (no segmenter, or it failed: generation still stands)."""
    from napari_mrisynth.models.inference import segment

    try:
        result = segment(run.real, device=run.request.device)
    except ModelError as exc:
        run.notes.append(f"The real scan is not segmented: {exc}")
        return None
    except RuntimeError as exc:  # torch's own: out of memory, a device gone away
        run.notes.append(f"The real scan is not segmented: segmentation failed: {exc}")
        return None
    run.notes.append(
        f"The real scan's labels are {result.card.ref}'s segmentation; the synthetic "
        "volumes' are the maps they were generated from."
    )
    return result.labels
