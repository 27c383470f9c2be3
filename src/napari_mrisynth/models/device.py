"""The one place a compute device is chosen: CUDA, then Apple MPS, then the CPU."""

from __future__ import annotations

import warnings
from typing import Any

from napari_mrisynth.errors import MrisynthError

#: Choices offered in the CLI and the widgets.
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


class CpuFallbackWarning(UserWarning):
    """Work that would be fast on a GPU is running on the CPU."""


def available_devices() -> list[str]:
    """Devices usable here, best first (``cuda:0``..., ``mps``, ``cpu``)."""
    import torch

    found = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return [*found, "cpu"]


def choose_device(requested: str | Any | None = None, *, announce: bool = True) -> Any:
    """Return the :class:`torch.device` to run on.

    Parameters
    ----------
    requested : str or torch.device, optional
        ``None``/``"auto"`` picks cuda -> mps -> cpu; ``"cuda"``, ``"cuda:1"``, ``"mps"``,
        ``"cpu"`` ask for one and fail clearly when it is not there.
    announce : bool
        Warn (:class:`CpuFallbackWarning`) when ``auto`` ends up on the CPU, so that a slow
        run is never a silent surprise.
    """
    import torch

    if requested is not None and not isinstance(requested, str):
        return torch.device(requested)
    name = (requested or "auto").strip().lower()
    if name == "auto":
        best = available_devices()[0]
        if best == "cpu" and announce:
            warnings.warn(
                "no CUDA or MPS device found: running on the CPU (slower)",
                CpuFallbackWarning,
                stacklevel=2,
            )
        return torch.device(best)
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MrisynthError(f"device {requested!r} asked for, but CUDA is not available here")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise MrisynthError(
                f"device {requested!r} asked for, but only {torch.cuda.device_count()} CUDA "
                "device(s) are present"
            )
        return device
    if name == "mps":
        if "mps" not in available_devices():
            raise MrisynthError("device 'mps' asked for, but Apple MPS is not available here")
        return torch.device("mps")
    if name == "cpu":
        return torch.device("cpu")
    raise MrisynthError(f"unknown device {requested!r}: use one of {', '.join(DEVICE_CHOICES)}")
