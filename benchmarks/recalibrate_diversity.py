"""An anatomy-first model fitted before 1.5.0, its diversity calibrated again with today's
code, as a new version beside it: how the 1 mm fit was checked without an 86-minute refit.

Usage::

    python benchmarks/recalibrate_diversity.py --model anatomy-bvftd-demo-1mm@1.0.0 \\
        --version 1.0.90 --out models [--data cohort-1mm] [--cache /tmp/recalibrate]

The model's training scans are read from the cohort its card names (``training.data``, or
``--data``) and brought onto its grid as its training run did (its split, seed and
spacing). The fine folding is set back to what its fit measured and
:func:`napari_mrisynth.synthesis.anatomy.calibrate_sampling` (the diversity calibration,
then, for a Gaussian shape model, the component caps) runs on its buffers, the call a fit
makes last; the chosen folding, spread and caps are written into a copy of the
weights (``scalars`` and ``velocity_basis``) with a card whose version, weights hash,
``training.fit.diversity_calibration`` and ``component_caps`` are updated, and without the
original's held-out ``metrics`` (measure the copy with ``mrisynth evaluate``). A refit with
today's code makes the same choice: checked at 2 mm, ``anatomy-bvftd-demo@1.4.0`` recalibrated
this way (2.8 min) and the 1.6.0 fit have the same fine folding (1.046 mm), spread (1.4) and
caps (4 of 29 components, 0.169 / 0.380 / 0.796 / 0.883 against 0.169 / 0.380 / 0.795 /
0.884), and their ``velocity_basis`` differs by float16 rounding (at most 0.0024).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from safetensors.numpy import save_file

    from napari_mrisynth.models.anatomy_generator import SCALARS
    from napari_mrisynth.models.registry import find_model
    from napari_mrisynth.models.weights import load_weights, weights_path
    from napari_mrisynth.synthesis.anatomy import calibrate_sampling
    from napari_mrisynth.synthesis.train import (
        GenerativeOptions,
        anatomy_spec,
        cached_arrays,
        participant_conditions,
    )
    from napari_mrisynth.training.recipe import TrainingRun

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="anatomy-first generator id@version")
    parser.add_argument("--version", required=True, help="version of the recalibrated copy")
    parser.add_argument("--out", type=Path, required=True, help="models folder to write to")
    parser.add_argument("--data", type=Path, default=None, help="the model's training cohort")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/recalibrate"))
    args = parser.parse_args(argv)

    card = find_model(args.model, task="generation")
    if card.inference.get("family") != "anatomy":
        parser.error(f"{card.ref} is not an anatomy-first generator")
    training = card.training
    spacing = float(card.input.spacing[0])
    opts = GenerativeOptions(
        spacing=spacing,
        seed=int(training["seed"]),
        fractions=tuple(training["split_fractions"]),
        progress=False,
    )
    data = args.data or Path(training["data"])
    run = TrainingRun("generation", data, args.cache, opts)
    train = list(training["splits"]["train"])
    cached = run.cache(train, anatomy_spec(spacing), labels=True)  # as the training run did
    images = cached_arrays([cached[s] for s in train], "image")
    labels = cached_arrays([cached[s] for s in train], "label")
    condition_of = participant_conditions(run, training["conditions"])
    conditions = [condition_of[s] for s in train]
    state = {k: v.numpy().copy() for k, v in load_weights(card).items()}
    fit = training["fit"]
    state["scalars"][SCALARS.index("fine_rms")] = fit["fine_folding"]["rms_mm"]  # as measured
    sampling = calibrate_sampling(
        card.architecture["args"],
        state,
        state["velocity_basis"],
        images,
        labels,
        conditions,
        fine_sigma_mm=fit["fine_folding"]["sigma_mm"],
    )
    report = sampling["diversity_calibration"]
    fine, spread = sampling["fine_rms"], sampling["spread"]
    print(json.dumps(report, indent=1))

    source = weights_path(card)
    target = args.out / f"{card.id}-{args.version}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    save_file(state, target / source.name)
    old = hashlib.sha256(source.read_bytes()).hexdigest()
    new = hashlib.sha256((target / source.name).read_bytes()).hexdigest()
    text = (Path(card.path) / "card.json").read_text(encoding="utf-8")
    copy = json.loads(text.replace(old, new))
    copy["version"] = args.version
    copy["training"]["fit"]["diversity_calibration"] = report
    copy["training"]["fit"]["fine_folding"]["rms_mm_sampled"] = fine
    copy["training"]["fit"]["shape_spread"] = spread
    if "component_caps" in sampling:
        copy["training"]["fit"]["component_caps"] = sampling["component_caps"]
    copy["training"]["recalibrated_from"] = card.ref
    # the held-out figures were the original's: the copy has none until it is assessed, so
    # the registry never prefers it as a default on figures it did not earn
    copy["metrics"] = {}
    (target / "card.json").write_text(json.dumps(copy, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {target}: fine folding {fine} mm, spread {spread}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
