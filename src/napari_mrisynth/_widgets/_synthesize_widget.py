"""Synthesize dock widget: synthetic T1 volumes from a registry generator, beside a real scan.

The widget gathers the request on the GUI thread (generator card, condition, n, seed,
device, sampler settings, and the voxels and geometry of the real scan to compare with),
runs :func:`napari_mrisynth.synthesis.synthesize.synthesize` (the real scan brought onto
the SAME model grid with the same intensity scale, then generation) in a napari thread
worker, and adds the results
as image layers on the GUI thread: real first, then one layer per synthetic volume, in
napari's grid mode with contrast, gamma and colormap linked. The worker never touches a
layer or a Qt object; its progress reaches the progress bar through a queued Qt signal.
``MRISYNTH_NO_THREADS=1`` runs the same code synchronously (deterministic tests).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QSpinBox

from napari_mrisynth.errors import ModelError, MrisynthError
from napari_mrisynth.models.card import ModelCard
from napari_mrisynth.synthesis.synthesize import SynthesisRequest, SynthesisRun, synthesize
from napari_mrisynth.volume import Volume

from ._layer_data import LayerData, image_layer_data
from ._segment_widget import ModelWidget, layer_source_volume, named_labels_layer_data

if TYPE_CHECKING:
    import napari

#: Model-grid intensities of generators and prepared scans: 0 background, 1 = the head's
#: 99.5th percentile, at most 1.5 (see :func:`napari_mrisynth.preprocess.prepare`).
INTENSITY_RANGE = (0.0, 1.5)

#: One look for every layer of a comparison; these attributes stay linked.
DISPLAY = {"contrast_limits": (0.0, 1.2), "gamma": 1.0, "colormap": "gray"}
LINKED = ("contrast_limits", "gamma", "colormap")

#: Opacity of a label map over its volume: the anatomy stays readable underneath.
LABEL_OPACITY = 0.4

#: Condition choices: what the user reads -> what generate() takes.
CONDITIONS = {"bvFTD": "bvftd", "control": "control"}

#: Age spin box value meaning "not given" (shown as its special text).
NO_AGE = 17
NO_SEX = "not given"
MAX_N = 16

NO_GENERATOR = (
    "No generator found: train one (mrisynth train ldm|gan|vae) or point "
    "MRISYNTH_MODEL_PATH at a folder of models, then press ↻."
)

_FAMILY_NAMES = {"vae": "VAE", "gan": "GAN", "ldm": "LDM"}


def generator_label(card: ModelCard) -> str:
    """Combo box text: family, id@version and test FID when the card has it."""
    family = str(card.inference.get("family", "?"))
    text = f"{_FAMILY_NAMES.get(family, family.upper())} · {card.ref}"
    fid = card.metric("fid")
    return text if fid is None else f"{text} · FID {fid:.3g}"


def generator_summary(card: ModelCard) -> str:
    """What a user should know before showing a generator's volumes to anyone."""
    lines = [card.description] if card.description else []
    spacing = " × ".join(f"{s:g}" for s in card.input.spacing)
    shape = " × ".join(str(s) for s in card.input.shape)
    conditions = ", ".join(card.inference.get("conditions", ["diagnosis"]))
    lines.append(f"{card.ref} · grid {shape} voxels at {spacing} mm · conditions: {conditions}")
    quality = []
    for name, label in (("fid", "FID"), ("kid", "KID"), ("ms_ssim", "MS-SSIM")):
        value = card.metric(name)
        if value is not None:
            quality.append(f"test {label} {value:.3g}")
    if quality:
        lines.append(", ".join(quality))
    if card.training.get("trained") is False:
        lines.append("Untrained weights: noise-like output, for testing only.")
    if card.training.get("simulated", False):
        lines.append("Trained on simulated data: research only, not for clinical use.")
    return "\n".join(lines)


def condition_text(condition: dict[str, Any]) -> str:
    """``bvFTD``, ``control, F, 70 y`` from a provenance condition."""
    parts = [str(condition["diagnosis"])]
    if condition.get("sex"):
        parts.append(str(condition["sex"]))
    if condition.get("age") is not None:
        parts.append(f"{condition['age']:g} y")
    return ", ".join(parts)


def synthetic_name(provenance: dict[str, Any]) -> str:
    """``synthetic bvFTD · seed 7 · #0``."""
    condition = condition_text(provenance["condition"])
    return f"synthetic {condition} · seed {provenance['seed']} · #{provenance['index']}"


def real_name(layer_name: str) -> str:
    """Name of a real scan brought onto a generator's grid."""
    return f"real · {layer_name} (model grid)"


def grid_shape(panels: int) -> tuple[int, int]:
    """Rows and columns for ``panels`` viewboxes: one row up to three, else near square."""
    columns = panels if panels <= 3 else math.ceil(math.sqrt(panels))
    return math.ceil(panels / columns), columns


def _comparison_layer_data(volume: Volume, name: str, metadata: dict[str, Any]) -> LayerData:
    data, kwargs, layer_type = image_layer_data(volume, name=name)
    kwargs.update(DISPLAY)
    kwargs["metadata"].update(metadata)
    return data, kwargs, layer_type


def labels_name(image_name: str) -> str:
    """Name of the label map shown over the image layer ``image_name``."""
    return f"labels · {image_name}"


def _labels_layer_data(
    labels: Volume | None, like: Volume, name: str, metadata: dict[str, Any]
) -> LayerData:
    """A label map over its volume; an empty one (to paint, and to keep every grid viewbox
    to one image and its labels) when there is none."""
    if labels is None:
        labels = like.with_data(np.zeros(like.shape, np.uint8), name=name)
    data, kwargs, layer_type = named_labels_layer_data(labels, name, LABEL_OPACITY)
    kwargs["metadata"].update(metadata)
    return data, kwargs, layer_type


def comparison_layers(run: SynthesisRun) -> list[LayerData]:
    """Layer data of a run: the real scan first (if any), then every synthetic volume, each
    named for a reader and carrying its provenance in its metadata. With label maps asked
    for, each image is followed by its labels: a synthetic volume's own map, the real scan's
    segmentation (empty when it could not be segmented)."""
    layers = []
    with_labels = run.request.labels
    if run.real is not None:
        origin = {"source_layer": run.request.compare_name, "model_grid_of": run.request.card.ref}
        name = real_name(run.request.compare_name)
        layers.append(_comparison_layer_data(run.real, name, {"prepared": origin}))
        if with_labels:
            segmenter = None if run.real_labels is None else run.real_labels.metadata.get("model")
            meta = {"prepared": origin, "segmented_by": segmenter}
            layers.append(_labels_layer_data(run.real_labels, run.real, labels_name(name), meta))
    for s in run.synthetic:
        name = synthetic_name(s.provenance)
        layers.append(_comparison_layer_data(s.volume, name, {"provenance": s.provenance}))
        if with_labels:
            meta = {"provenance": s.provenance}
            layers.append(_labels_layer_data(s.labels, s.volume, labels_name(name), meta))
    return layers


def _synthesize_layers(
    request: SynthesisRequest, progress: Callable[[int, int, str], None] | None = None
) -> tuple[SynthesisRun, list[LayerData]]:
    """The worker's job: the run, and its layer data (no Qt object is touched)."""
    run = synthesize(request, progress)
    return run, comparison_layers(run)


class SynthesizeWidget(ModelWidget):
    """Dock widget: generate synthetic T1 volumes and show them beside a real scan.

    Each synthetic volume becomes an image layer named ``"synthetic <condition> · seed <s> ·
    #<i>"`` on its generator's model grid, with its provenance in ``layer.metadata``. The
    scan chosen under *Compare with* is brought onto the same grid (alignment, resampling,
    the generators' intensity scale) as ``"real · <layer> (model grid)"``. The viewer goes
    into grid mode (real first), with contrast, gamma and colormap linked; other layers are
    hidden, never removed. A new run replaces the previous run's layers.

    With *Label maps* on (generators that make them), each synthetic volume's label map is
    a Labels layer ``"labels · <volume layer>"`` over it, and the real scan's segmentation
    by the default segmentation model over the real scan: one viewbox per image and its
    labels. The layer list reads real first from the top (a negative grid stride counts the
    viewboxes from there, so the user's layers below never split a pair).

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer whose image layers are offered for comparison and where results go.
    """

    task = "generation"
    run_label = "Generate"

    def __init__(self, napari_viewer: napari.Viewer):
        self._run_layers: list[Any] = []
        self._card_ref: str | None = None  # whose sampler defaults the form holds
        super().__init__(napari_viewer)
        self.image.setToolTip(
            "A real 3D T1 scan to show beside the synthetic volumes, on the same model grid"
        )

    # -- the form ----------------------------------------------------------------------------
    def build_controls(self) -> None:
        # the inherited "Image" row becomes "Compare with", below the generation options
        label = self.form.takeRow(0).labelItem.widget()
        label.hide()  # out of the layout but still a child until deleted
        label.deleteLater()
        self.condition = QComboBox()
        self.condition.addItems(list(CONDITIONS))
        self.age = QSpinBox()
        self.age.setRange(NO_AGE, 100)
        self.age.setSpecialValueText("not given")
        self.age.setSuffix(" y")
        self.age.setValue(NO_AGE)
        self.sex = QComboBox()
        self.sex.addItems([NO_SEX, "F", "M"])
        self.n = QSpinBox()
        self.n.setRange(1, MAX_N)
        self.n.setValue(3)
        self.seed = QSpinBox()
        self.seed.setRange(0, 2**31 - 1)
        self.seed.setToolTip("Volume i uses noise seeded by (seed, i): same seed, same volumes")
        self.steps = QSpinBox()
        self.steps.setRange(1, 1000)
        self.steps.setToolTip("DDIM sampling steps (latent diffusion)")
        self.guidance = QDoubleSpinBox()
        self.guidance.setRange(0.0, 20.0)
        self.guidance.setSingleStep(0.5)
        self.guidance.setDecimals(2)
        self.guidance.setToolTip("Classifier-free guidance scale (latent diffusion; 1 = none)")
        self.label_maps = QCheckBox("each volume's label map, and the real scan's segmentation")
        self.label_maps.setChecked(True)
        rows = [
            ("Condition", self.condition),
            ("Age", self.age),
            ("Sex", self.sex),
            ("Volumes (n)", self.n),
            ("Seed", self.seed),
        ]
        for offset, (label, widget) in enumerate(rows):
            self.form.insertRow(2 + offset, label, widget)
        self.form.addRow("DDIM steps", self.steps)
        self.form.addRow("Guidance", self.guidance)
        self.form.addRow("Compare with", self.image)
        self.form.addRow("Label maps", self.label_maps)

    # -- choices -----------------------------------------------------------------------------
    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        self.refresh_models()

    def refresh_layers(self, event: Any = None) -> None:
        """Offer "none" and every image layer that is not this widget's output."""
        current = self.image.currentData()
        ours = {id(layer) for layer in self._run_layers}
        images = [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, Image) and id(layer) not in ours
        ]
        self.image.blockSignals(True)
        self.image.clear()
        self.image.addItem("none", None)
        for layer in images:
            self.image.addItem(layer.name, layer)
        if current is not None and any(current is layer for layer in images):
            self.image.setCurrentIndex(1 + next(i for i, x in enumerate(images) if x is current))
        self.image.blockSignals(False)
        self._update_run_button()

    def refresh_models(self) -> None:
        """List the generators, best test FID first; keep the current choice, else take the
        registry's default generator (flagged default, else the lowest test FID)."""
        from napari_mrisynth.models.registry import default_model
        from napari_mrisynth.synthesis.generate import rank_generators

        current = self.model.currentData()
        self.model.blockSignals(True)
        self.model.clear()
        try:
            cards = [card for card, _ in rank_generators("fid")]
            if current is not None:
                chosen = current.ref
            else:
                chosen = default_model(self.task).ref if cards else None
        except MrisynthError as exc:
            cards, chosen = [], None
            self.report_error(exc)
        for card in cards:
            self.model.addItem(generator_label(card), card)
        refs = [card.ref for card in cards]
        if chosen in refs:
            self.model.setCurrentIndex(refs.index(chosen))
        self.model.blockSignals(False)
        self._show_card()
        if not cards and self.worker is None:
            self.status.setText(NO_GENERATOR)
        elif cards and self.status.text() == NO_GENERATOR:
            self.status.setText("")
        self._update_run_button()

    def _show_card(self, index: int = -1) -> None:
        card = self.model.currentData()
        self.card_info.setText(generator_summary(card) if card is not None else "")
        self.card_info.setToolTip(card.intended_use if card is not None else "")
        conditions = card.inference.get("conditions", ["diagnosis"]) if card else []
        for name, widget in (("age", self.age), ("sex", self.sex)):
            enabled = name in conditions
            widget.setEnabled(enabled)
            tip = "" if enabled else f"This generator was not trained with {name}"
            widget.setToolTip(tip)
            if not enabled:  # a disabled input gives nothing
                if widget is self.age:
                    self.age.setValue(NO_AGE)
                else:
                    self.sex.setCurrentText(NO_SEX)
        makes_labels = card is not None and bool(card.inference.get("labels", False))
        self.label_maps.setEnabled(makes_labels)
        self.label_maps.setToolTip(
            "Show each synthetic volume's exact label map over it, and the real scan "
            "segmented by the default segmentation model"
            if makes_labels
            else "This generator makes images only, no label maps"
        )
        ldm = card is not None and card.inference.get("family") == "ldm"
        for widget in (self.steps, self.guidance):  # latent diffusion only
            widget.setEnabled(ldm)
            self.form.setRowVisible(widget, ldm)
        if ldm and card.ref != self._card_ref:  # a new model: its own defaults
            self.steps.setValue(int(card.inference.get("steps", 50)))
            self.guidance.setValue(float(card.inference.get("guidance", 1.0)))
        self._card_ref = None if card is None else card.ref

    def _update_run_button(self) -> None:
        self.run_button.setEnabled(self.worker is None and self.model.currentData() is not None)

    # -- running -----------------------------------------------------------------------------
    def request(self) -> SynthesisRequest:
        """The run the form describes (GUI thread: reads the compare layer, copies nothing).

        Raises
        ------
        ModelError
            No generator is chosen (none found).
        InputError
            The compare layer is not one 3D grey-level image.
        """
        card = self.model.currentData()
        if card is None:
            raise ModelError(NO_GENERATOR)
        layer = self.image.currentData()
        compare = None if layer is None else layer_source_volume(layer, "comparison")
        ldm = card.inference.get("family") == "ldm"
        return SynthesisRequest(
            card=card,
            n=self.n.value(),
            condition=CONDITIONS[self.condition.currentText()],
            age=None if self.age.value() == NO_AGE else float(self.age.value()),
            sex=None if self.sex.currentText() == NO_SEX else self.sex.currentText(),
            seed=self.seed.value(),
            device=self.device.currentText() or "auto",
            steps=self.steps.value() if ldm else None,
            guidance=self.guidance.value() if ldm else None,
            compare=compare,
            compare_name="" if layer is None else layer.name,
            labels=self.label_maps.isEnabled() and self.label_maps.isChecked(),
        )

    def run(self) -> Any:
        """Generate: in a worker thread, or here when not threaded.

        Returns
        -------
        worker or None
            The started napari worker when threaded; ``None`` otherwise (the result, or the
            error, is then already shown).
        """
        self.last_error = None
        self.status.setStyleSheet("")
        try:
            request = self.request()
        except MrisynthError as exc:
            self._show_failed()
            self.report_error(exc)
            return None
        self._requested_device = request.device
        self._started = time.perf_counter()
        self.progress.setRange(0, 0)  # busy until the first report
        self.progress.setFormat("loading …")
        what = f"{request.n} × {self.condition.currentText()} from {request.card.ref}"
        self.status.setText(f"Generating {what} …")
        self.run_button.setEnabled(False)
        return self._start((_synthesize_layers, request, self._relay), f"synthesis: {what}")

    def _on_progress(self, done: int, total: int, stage: str) -> None:
        if stage == "prepare":
            self.progress.setRange(0, 0)
            self.progress.setFormat("real scan on the model grid; sampling …")
            return
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.setFormat(f"sampling %p% ({done}/{total} volume-steps)")

    def _done(self, outcome: Any) -> None:
        if isinstance(outcome, MrisynthError):
            self._show_failed()
            self.report_error(outcome)
            return
        outcome, layers = outcome
        self.last_result = outcome
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat(f"done in {outcome.seconds:.1f} s")
        hidden = self.show_result(layers)
        count = len(outcome.synthetic)
        # sampling time per volume, as recorded in each volume's provenance
        per_volume = sum(s.provenance["seconds"] for s in outcome.synthetic) / max(count, 1)
        parts = [
            f"{count} synthetic volume(s) from {outcome.request.card.ref} in "
            f"{outcome.seconds:.1f} s ({per_volume:.2f} s per volume) "
            f"{self.device_note(outcome.device)}."
        ]
        if outcome.real is not None:
            parts.append(
                f"{outcome.request.compare_name} is shown on the same model grid (aligned, "
                f"resampled and normalised in {outcome.stages.get('prepare', 0.0):.1f} s)."
            )
        parts.extend(outcome.notes)
        if hidden:
            parts.append(f"{hidden} other layer(s) hidden for the side-by-side view.")
        self.status.setText(" ".join(parts))

    def show_result(self, layers: list[LayerData]) -> int:
        """Replace the previous run's layers with ``layers`` (real first), linked, in grid
        mode.

        Returns the number of other layers hidden so that the grid shows the comparison.
        """
        from napari.experimental import link_layers

        self.clear_run_layers()
        cells: list[list[LayerData]] = []  # one viewbox each: an image, then its labels
        for item in layers:
            if item[2] == "labels":
                cells[-1].append(item)
            else:
                cells.append([item])
        # the last cell is added first: napari counts a negative stride from the top of the
        # list, so the user's (hidden) layers below never shift a pair across two viewboxes,
        # and the layer list reads real first, from the top
        added, images = [], []
        for cell in reversed(cells):
            for data, kwargs, layer_type in cell:
                if layer_type == "labels":  # over its image, in the same viewbox
                    added.append(self.viewer.add_labels(data, **kwargs))
                    continue
                added.append(self.viewer.add_image(data, **kwargs))
                added[-1].contrast_limits_range = INTENSITY_RANGE
                added[-1].contrast_limits = DISPLAY["contrast_limits"]
                images.append(added[-1])
        images.reverse()  # reading order: real first
        self._run_layers = added
        if len(images) > 1:
            link_layers(images, LINKED)
        hidden = 0
        for other in self.viewer.layers:
            if other not in added and other.visible:
                other.visible = False
                hidden += 1
        grid = self.viewer.canvas.grid
        grid.shape = grid_shape(len(cells))
        grid.stride = -len(cells[0])  # 1, or 2: an image and its labels
        grid.enabled = True
        self.viewer.dims.ndisplay = 2
        first = images[0]
        for axis, (start, step, size) in enumerate(
            zip(first.translate, first.scale, first.data.shape, strict=True)
        ):
            self.viewer.dims.set_point(axis, start + step * (size - 1) / 2)
        self.viewer.layers.selection.active = first
        self.viewer.reset_view()
        self.refresh_layers()
        return hidden

    def clear_run_layers(self) -> None:
        """Unlink and remove the previous run's layers (only those this widget added)."""
        from napari.experimental import unlink_layers

        present = [layer for layer in self._run_layers if layer in self.viewer.layers]
        self._run_layers = []
        images = [layer for layer in present if isinstance(layer, Image)]
        if len(images) > 1:
            unlink_layers(images)
        for layer in present:
            self.viewer.layers.remove(layer)
