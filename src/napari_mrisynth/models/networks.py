"""Networks rebuilt from a model card: a MONAI class name and its arguments, nothing else.

One addition to MONAI's classes: a SegResNet card may carry ``"head": {"channels": C}``,
which replaces the network's output layer (normalisation, ReLU, a 1×1×1 convolution from
its ``init_filters`` full-resolution features to the labels) by a wider one: the same
normalisation and ReLU, a 3×3×3 convolution to ``C`` features, ReLU, and the 1×1×1
convolution to the labels. With ``init_filters`` 8 and 19 labels, the plain output layer
must tell every label apart from 8 numbers per voxel; the eyes and the spinal cord, whose
features sit between those of air and soft tissue, then never win the arg-max (a linear
output layer refitted on ``seg-head-demo``'s own features reaches Dice 0.2 for them, the
trained one 0). See :func:`widen_from` for starting such a head from a trained output
layer without changing a single output.
"""

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
        network = getattr(nets, name)(**args)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"cannot build {name} with {args}: {exc}") from exc
    head = architecture.get("head")
    if head is not None:
        network.conv_final = output_head(network, name, head)
    return network


#: The state-dict keys of a plain SegResNet's output convolution, which a wider head replaces.
PLAIN_OUTPUT_KEYS = ("conv_final.2.conv.weight", "conv_final.2.conv.bias")


def head_keys(network: Any) -> list[str]:
    """The state-dict keys of ``network``'s wider output head (:func:`output_head`): its
    two convolutions; the normalisation before them is the plain network's own."""
    head = network.conv_final
    return [f"conv_final.{i}.{name}" for i in (2, 4) for name, _ in head[i].named_parameters()]


def head_channels(architecture: dict[str, Any]) -> int:
    """The width of the card's wider output head, 0 for the network's own output layer."""
    return int((architecture.get("head") or {}).get("channels", 0))


def output_head(network: Any, name: str, head: dict[str, Any]) -> Any:
    """The wider output layer that ``head`` (``{"channels": C}``) describes, for ``network``
    (a SegResNet): its own normalisation and ReLU, a 3×3×3 convolution to ``C`` features,
    ReLU, and a 1×1×1 convolution to the outputs (see the module doc)."""
    from torch import nn

    final = getattr(network, "conv_final", None)
    if name != "SegResNet" or final is None:
        raise ModelError(f"a wider output head is for SegResNet, not {name}")
    channels = int(head.get("channels", 0))
    if channels < 1 or set(head) - {"channels"}:
        raise ModelError(f"head {head}: give {{'channels': C}} with C >= 1")
    conv = final[2].conv
    return nn.Sequential(
        final[0],
        nn.ReLU(),
        nn.Conv3d(conv.in_channels, channels, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.Conv3d(channels, conv.out_channels, kernel_size=1),
    )


def widen_from(network: Any, source: dict[str, Any]) -> list[str]:
    """Start ``network``'s wider head (:func:`output_head`) from the plain output layer in
    ``source`` (a state dict of the same SegResNet without the head) so that the network
    computes exactly what the source computes: the 3×3×3 convolution passes the source's
    features through on its first channels (their centre tap is the identity; the features
    are ReLU outputs, so the second ReLU keeps them), the 1×1×1 convolution applies the
    source's output weights to those channels and 0 to the others, which training then
    opens. The other channels keep their random start, so they get gradients as soon as their
    output weights move.

    Returns
    -------
    list of str
        The source's keys this consumed (its output convolution).
    """
    import torch

    weight, bias = (source[key] for key in PLAIN_OUTPUT_KEYS)
    head = network.conv_final
    spread, final = head[2], head[4]
    features = int(weight.shape[1])
    if spread.in_channels != features or spread.out_channels < features:
        raise ModelError(f"a head of {spread.out_channels} channels on {spread.in_channels} "
                         f"features cannot start from an output layer on {features}")  # fmt: skip
    with torch.no_grad():
        centre = tuple(k // 2 for k in spread.kernel_size)
        spread.weight[:features].zero_()
        spread.bias[:features].zero_()
        for i in range(features):
            spread.weight[(i, i, *centre)] = 1.0
        final.weight.zero_()
        final.weight[:, :features] = weight.to(final.weight.dtype)
        final.bias.copy_(bias)
    return list(PLAIN_OUTPUT_KEYS)


def count_parameters(network: Any) -> int:
    return int(sum(p.numel() for p in network.parameters()))
