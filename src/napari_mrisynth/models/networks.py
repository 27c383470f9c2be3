"""Networks rebuilt from a model card: a MONAI class name and its arguments, nothing else."""

from __future__ import annotations

from typing import Any

from napari_mrisynth.errors import ModelError

#: MONAI networks a card may name. Each builds from keyword arguments alone.
ARCHITECTURES = (
    "SegResNet",
    "UNet",
    "BasicUNet",
    "DynUNet",
    "ResNet",
    "DenseNet121",
    "DenseNet",
    "EfficientNetBN",
)


def build_network(architecture: dict[str, Any]) -> Any:
    """Instantiate ``monai.networks.nets.<name>(**args)`` from a card's ``architecture``,
    or one of the generator families of :mod:`napari_mrisynth.models.generators` (each
    assembled from MONAI's generative networks).

    Raises
    ------
    ModelError
        The name is not an allowed MONAI network, or MONAI rejects the arguments.
    """
    import monai.networks.nets as nets

    from napari_mrisynth.models.generators import GENERATORS

    name = architecture.get("name")
    if name not in ARCHITECTURES and name not in GENERATORS:
        known = ", ".join((*ARCHITECTURES, *GENERATORS))
        raise ModelError(f"architecture {name!r} is not one of {known}")
    args = dict(architecture.get("args", {}))
    try:
        if name in GENERATORS:
            return GENERATORS[name](**args)
        return getattr(nets, name)(**args)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build {name} with {args}: {exc}") from exc


def count_parameters(network: Any) -> int:
    return int(sum(p.numel() for p in network.parameters()))
