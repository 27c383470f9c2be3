"""Feature vectors for FID and KID, and class probabilities for the Inception Score.

The default extractor is the encoder of the project's bundled segmentation model
(``seg-head-demo``, a MONAI SegResNet trained on simulated T1 heads): each volume is brought
onto the model's grid exactly as for segmentation, ``network.encode`` gives the output of
every encoder level, and each level is global-average-pooled and concatenated into one
vector. This is Med3D's idea (Chen et al. 2019; the MedicalNet weights): an encoder
trained to segment 3D medical images describes them better than an ImageNet network.

``FeatureExtractor.medicalnet(path, depth)`` loads a local MedicalNet/Med3D checkpoint into
MONAI's ResNet for comparability with published numbers.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_mrisynth.errors import ModelError
from napari_mrisynth.evaluation.common_grid import prepare_for, volume_digest
from napari_mrisynth.volume import Volume

#: The bundled models used when none is named, pinned to a version: every published FID,
#: KID and IS figure was computed with these networks, and a newer model of the same id
#: (trained for another purpose) would move every one of them.
DEFAULT_FEATURE_MODEL = "seg-head-demo@1.1.0"
DEFAULT_IS_CLASSIFIER = "cls-bvftd-demo@1.0.0"

#: MONAI ResNet builders of the MedicalNet depths.
MEDICALNET_DEPTHS = (10, 18, 34, 50)

Progress = Callable[[int, int], None]


class FeatureExtractor:
    """Turns volumes into one feature vector each, with the facts a report needs.

    Use :meth:`segmentation_encoder` (the default) or :meth:`medicalnet`; call the object
    on a list of volumes. Vectors are cached per volume content, so a volume shared by two
    sets (or two calls) is encoded once.
    """

    def __init__(
        self,
        network: Any,
        spec: Any,
        encode: Callable[[Any, Any], Any],
        info: dict[str, Any],
        device: Any,
        standardise: bool = False,
    ):
        self.network = network
        self.spec = spec
        self.device = device
        self._encode = encode
        self._standardise = standardise
        self.info = dict(info)
        self._cache: dict[str, np.ndarray] = {}

    @classmethod
    def segmentation_encoder(
        cls, model: str = DEFAULT_FEATURE_MODEL, *, device: Any = None
    ) -> FeatureExtractor:
        """The encoder of a registry segmentation model with ``encode`` (MONAI SegResNet).

        Features: global average of every encoder level's output, concatenated (for
        ``seg-head-demo``: 8 + 16 + 32 + 64 = 120 values).
        """
        from napari_mrisynth.models.inference import get_model

        loaded = get_model(model, "segmentation", device)
        network = loaded.network
        if not hasattr(network, "encode"):
            raise ModelError(
                f"model {loaded.card.ref}: its {loaded.card.architecture.get('name')} network "
                "has no encoder to take features from (use a SegResNet model)"
            )

        def encode(net: Any, x: Any) -> Any:
            _, levels = net.encode(x)
            return [level.mean(dim=(2, 3, 4)) for level in levels]

        card = loaded.card
        info = {
            "kind": "segmentation encoder (Med3D-style)",
            "model": card.ref,
            "architecture": card.architecture.get("name"),
            "weights_sha256": card.weights.get("sha256"),
            "trained_on": "simulated T1 heads (napari-mrisynth cohort), not patients"
            if card.training.get("simulated")
            else str(card.training.get("data", "")),
            "layers": "every encoder level, global average pooled, concatenated",
            "grid": {"spacing_mm": list(card.input.spacing), "shape": list(card.input.shape)},
        }
        return cls(network, card.input, encode, info, loaded.device)

    @classmethod
    def medicalnet(
        cls, path: str | Path, depth: int = 10, *, device: Any = None, spec: Any = None
    ) -> FeatureExtractor:
        """A local MedicalNet (Med3D) checkpoint in MONAI's ``resnet{depth}``.

        Parameters
        ----------
        path : file
            MedicalNet's ``resnet_{depth}*.pth``: ``{"state_dict": {"module.conv1.weight":
            ...}}`` (a bare state dict is accepted too). Read with
            ``torch.load(weights_only=True)``: tensors only, nothing is unpickled.
        depth : {10, 18, 34, 50}
        spec : InputSpec, optional
            Grid to bring volumes onto; default the 2 mm model grid.

        The network is MONAI's ResNet with MedicalNet's settings (one input channel, no
        classifier, ``shortcut_type`` A for 18/34 and B otherwise, bias in the downsampling
        only for 18/34, a stride-2 first convolution). MONAI's layers 3 and 4 stride where
        MedicalNet's dilate; the weights are the same, the receptive field is not: features
        follow MedicalNet's weights but are not bit-identical to its own code's.
        Intensities are z-scored over the head, as MedicalNet's training did.
        """
        import torch
        from monai.networks.nets import resnet
        from monai.networks.nets.resnet import get_medicalnet_pretrained_resnet_args

        from napari_mrisynth.evaluation.common_grid import model_input_spec
        from napari_mrisynth.models.device import choose_device

        path = Path(path)
        if int(depth) not in MEDICALNET_DEPTHS:
            raise ModelError(f"MedicalNet depth {depth}: use one of {MEDICALNET_DEPTHS}")
        if not path.is_file():
            raise ModelError(f"{path}: no such MedicalNet weights file")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged or unsafe file
            raise ModelError(
                f"{path}: not a MedicalNet checkpoint readable as tensors ({exc})"
            ) from exc
        state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict) or not state:
            raise ModelError(f"{path}: holds no state_dict of tensors")
        state = {key.removeprefix("module."): value for key, value in state.items()}
        # MedicalNet's segmentation head (conv_seg) is not part of the encoder.
        state = {k: v for k, v in state.items() if not k.startswith(("conv_seg.", "fc."))}
        bias_downsample, shortcut = get_medicalnet_pretrained_resnet_args(int(depth))
        network = getattr(resnet, f"resnet{int(depth)}")(
            spatial_dims=3,
            n_input_channels=1,
            feed_forward=False,
            shortcut_type=shortcut,
            bias_downsample=bias_downsample,
            conv1_t_stride=2,
        )
        try:
            network.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[:3]
            raise ModelError(
                f"{path}: does not fit MONAI resnet{depth}: {' '.join(first)}"
            ) from exc
        chosen = choose_device(device)
        network.to(chosen).eval()
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        spec = spec or model_input_spec()
        info = {
            "kind": "MedicalNet (Med3D) encoder",
            "model": f"medicalnet-resnet{int(depth)}",
            "weights_file": str(path),
            "weights_sha256": sha,
            "layers": "last residual stage, global average pooled",
            "grid": {"spacing_mm": list(spec.spacing), "shape": list(spec.shape)},
        }
        return cls(network, spec, lambda net, x: [net(x)], info, chosen, standardise=True)

    @property
    def dim(self) -> int | None:
        """Length of a feature vector (known after the first volume)."""
        return self.info.get("feature_dim")

    def __call__(
        self,
        volumes: Sequence[Volume],
        *,
        alignments: Sequence[Any] | None = None,
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Feature vectors (n, d), float64, one row per volume.

        ``alignments`` (one per volume, or None) reuse registrations already computed for
        the same volumes on another model-space grid.
        """
        import torch

        rows = []
        for index, volume in enumerate(volumes):
            key = volume_digest(volume)
            if key not in self._cache:
                alignment = alignments[index] if alignments is not None else None
                image = prepare_for(volume, self.spec, device=self.device,
                                    alignment=alignment).image  # fmt: skip
                if self._standardise:
                    head = image > 0
                    image = (image - image[head].mean()) / max(float(image[head].std()), 1e-6)
                x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
                with torch.inference_mode():
                    levels = self._encode(self.network, x.to(self.device))
                vector = torch.cat([level.float().reshape(-1) for level in levels])
                self._cache[key] = vector.cpu().numpy().astype(np.float64)
            rows.append(self._cache[key])
            if progress is not None:
                progress(index + 1, len(volumes))
        features = np.stack(rows)
        self.info["feature_dim"] = int(features.shape[1])
        return features


def class_probabilities(
    volumes: Sequence[Volume],
    model: str = DEFAULT_IS_CLASSIFIER,
    *,
    device: Any = None,
    alignments: Sequence[Any] | None = None,
    progress: Progress | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Softmax outputs (n, classes) of a registry classifier, and what it is.

    Volumes are prepared exactly as ``mrisynth classify`` prepares them.
    """
    import torch

    from napari_mrisynth.models.inference import get_model

    loaded = get_model(model, "classification", device)
    card = loaded.card
    rows = []
    for index, volume in enumerate(volumes):
        alignment = alignments[index] if alignments is not None else None
        image = prepare_for(volume, card.input, device=loaded.device, alignment=alignment).image
        x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None]
        with torch.inference_mode():
            logits = loaded.network(x.to(loaded.device)).float()
        rows.append(torch.softmax(logits, dim=1)[0].cpu().numpy().astype(np.float64))
        if progress is not None:
            progress(index + 1, len(volumes))
    info = {
        "model": card.ref,
        "weights_sha256": card.weights.get("sha256"),
        "classes": [label.name for label in card.labels],
    }
    return np.stack(rows), info
