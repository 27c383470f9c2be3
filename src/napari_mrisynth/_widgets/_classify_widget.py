"""Classify dock widget: class probabilities for a scan and where the network looked.

Runs :func:`napari_mrisynth.models.inference.classify` in a napari thread worker (see
:mod:`._segment_widget` for the shared image/model/device choice, progress and errors),
shows one bar per class and the predicted class, and adds the saliency map (Grad-CAM, or
gradient x input) as an image layer over the scan, on its own geometry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QCheckBox, QGridLayout, QGroupBox, QLabel, QProgressBar

from napari_mrisynth.models.card import ModelCard
from napari_mrisynth.volume import Volume, napari_layer_kwargs

from ._segment_widget import ModelWidget

#: Saliency overlay: hot colours added on top of the grey scan.
SALIENCY_DISPLAY = {
    "colormap": "inferno",
    "blending": "additive",
    "opacity": 0.5,
    "contrast_limits": (0.0, 1.0),
}

#: Bars hold probabilities in steps of 0.1 %.
_BAR_STEPS = 1000


def saliency_layer_data(saliency: Volume, name: str) -> tuple[Any, dict[str, Any], str]:
    """LayerData of a 0..1 saliency map on its source geometry, drawn as a hot overlay."""
    data, kwargs = napari_layer_kwargs(saliency.with_data(saliency.data, name=name))
    kwargs.update(SALIENCY_DISPLAY)
    return data, kwargs, "image"


class ClassifyWidget(ModelWidget):
    """Dock widget: classify a 3D head scan (bvFTD or control) with a registry model.

    Shows the probability of every class of the model card and the predicted class; with
    *Saliency* ticked, adds the class-evidence map as an ``inferno`` overlay named
    ``"<image> · <model title> saliency (<class>)"`` on the scan's geometry.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose image layers are offered and where the saliency map is added.
    """

    task = "classification"
    run_label = "Classify"

    def build_controls(self) -> None:
        self.saliency = QCheckBox("Saliency map (Grad-CAM) as an overlay")
        self.saliency.setChecked(True)
        self.want_saliency = True
        self.layout_.addWidget(self.saliency)

    def build_results(self) -> None:
        box = QGroupBox("Class probabilities")
        self.bars_layout = QGridLayout(box)
        self.predicted = QLabel()
        self.predicted.setWordWrap(True)
        self.predicted.setTextFormat(Qt.TextFormat.RichText)
        self.bars: dict[str, QProgressBar] = {}
        self.layout_.addWidget(box)
        self.layout_.addWidget(self.predicted)

    def job(self, volume: Volume, card: ModelCard, device: str, progress: Callable) -> Any:
        from napari_mrisynth.models.inference import classify

        return classify(volume, card, device=device, saliency=self.want_saliency, progress=progress)

    def run(self) -> Any:
        # read on the GUI thread: the worker must not touch Qt objects
        self.want_saliency = self.saliency.isChecked()
        return super().run()

    def show_result(self, result: Any, layer: Any) -> None:
        self.show_probabilities(result.probabilities, result.predicted, result.card)
        if result.saliency is not None:
            target = result.saliency.metadata.get("saliency_class", result.predicted)
            name = f"{layer.name} · {result.card.title} saliency ({target})"
            data, kwargs, layer_type = saliency_layer_data(result.saliency, name)
            self.add_or_replace(data, kwargs, layer_type)

    def show_probabilities(
        self, probabilities: dict[str, float], predicted: str, card: ModelCard
    ) -> None:
        """One bar per class, in the card's order, and the predicted class in words."""
        while self.bars_layout.count():
            item = self.bars_layout.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self.bars = {}
        for row, name in enumerate(probabilities):
            bar = QProgressBar()
            bar.setRange(0, _BAR_STEPS)
            bar.setValue(round(probabilities[name] * _BAR_STEPS))
            bar.setFormat(f"{probabilities[name]:.1%}")
            bar.setTextVisible(True)
            label = QLabel(f"<b>{name}</b>" if name == predicted else name)
            self.bars_layout.addWidget(label, row, 0)
            self.bars_layout.addWidget(bar, row, 1)
            self.bars[name] = bar
        caveat = (
            "<br><i>Model trained on simulated data: not a diagnosis.</i>"
            if card.training.get("simulated", False)
            else ""
        )
        self.predicted.setText(
            f"Predicted: <b>{predicted}</b> ({probabilities[predicted]:.1%}){caveat}"
        )
